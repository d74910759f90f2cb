"""What the dpo and kto stages measure on held-out rows, and what their report says.

A completion's log-probability is the sum, over its tokens and the end-of-text token after it,
of log p(token | prompt, tokens before): tokenized as TRL's DPOTrainer and KTOTrainer tokenize
(the prompt alone, then prompt + completion + eos; the completion starts where the two diverge;
at most data.max_length tokens), so that the numbers are about what the trainer optimised.

On held-out pairs (chosen better than rejected, same prompt):
- `chosen_preferred`: share of pairs where the policy gives the chosen answer the higher
  log-probability. Meaningful before and after training.
- `preference_accuracy`: share of pairs where DPO's implicit reward, beta * (log pi(chosen) -
  log ref(chosen) - (log pi(rejected) - log ref(rejected))), is higher for the chosen answer; a
  margin of exactly 0 counts half, so before training (policy = reference) it is 0.5.
- `reward_margin` (mean implicit reward margin), `logp_margin` (mean log-prob margin under the
  policy), `logp_chosen` / `logp_rejected` (mean log-probs).
KTO's unpaired held-out rows add `logp_good` / `logp_bad` / `logp_good_minus_bad`; its pairs are
every good and bad completion of the same prompt (there may be none).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from llmtune.console import markdown_table, table
from llmtune.runs.job import Metrics, Outcome, warnings_markdown
from llmtune.runs.rundir import RunDir

TIE = 1e-6  # implicit reward margins closer to 0 than this are ties (policy = reference)
SHOWN_SAMPLES = 3  # held-out prompts shown before/after in report.md


@dataclass
class HeldOut:
    """Held-out pairs (chosen better than rejected), and for kto its unpaired rows."""

    prompts: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    graded: list[tuple[str, str, bool]] = field(default_factory=list)
    """kto: (prompt, completion, good)."""

    def add(self, prompt: str, chosen: str, rejected: str) -> None:
        self.prompts.append(prompt)
        self.chosen.append(chosen)
        self.rejected.append(rejected)

    def distinct_prompts(self) -> list[str]:
        """Every held-out prompt once, in order (the prompts the policy answers for the reward)."""
        every = self.prompts + [p for p, _, _ in self.graded]
        return list(dict.fromkeys(every))


def completion_logps(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    completions: list[str],
    max_length: int,
    batch_size: int = 8,
) -> list[float]:
    """Summed log-probability of each completion (and the eos after it) given its prompt."""
    import torch

    eos = tokenizer.eos_token or ""
    sequences, starts = [], []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(text=prompt)["input_ids"]
        text = prompt + (completion if completion.endswith(eos) else completion + eos)
        full = tokenizer(text=text)["input_ids"][:max_length]
        sequences.append(full)
        starts.append(max(1, _common_prefix(prompt_ids, full)))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(sequences), batch_size):
                batch, begins = sequences[i : i + batch_size], starts[i : i + batch_size]
                width = max(len(s) for s in batch)
                ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch], device=device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
                # prompt tuning prepends virtual tokens to the outputs: keep the real positions
                logits = model(input_ids=ids, attention_mask=mask).logits[:, -width:].float()
                logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
                for row, (seq, start) in enumerate(zip(batch, begins)):
                    out.append(float(logps[row, start - 1 : len(seq) - 1].sum()))
    finally:
        model.train(was_training)
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


Scorer = Callable[[list[str], list[str]], list[float]]
"""(prompts, completions) -> summed log-probabilities under one model."""


def held_out_metrics(
    held: HeldOut, policy: Scorer, reference: Callable[[], AbstractContextManager[Scorer]], beta: float
) -> Metrics:
    """The metrics of the module docstring, for the policy against its reference."""
    out: Metrics = {}
    if held.prompts:
        chosen, rejected = policy(held.prompts, held.chosen), policy(held.prompts, held.rejected)
        with reference() as ref:
            ref_chosen, ref_rejected = ref(held.prompts, held.chosen), ref(held.prompts, held.rejected)
        margins = [c - r for c, r in zip(chosen, rejected)]
        rewards = [
            beta * ((c - rc) - (r - rr)) for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)
        ]
        out.update(
            pairs=len(margins),
            chosen_preferred=fmean(_win(m, 0.0) for m in margins),
            preference_accuracy=fmean(_win(m, TIE) for m in rewards),
            reward_margin=fmean(rewards),
            logp_margin=fmean(margins),
            logp_chosen=fmean(chosen),
            logp_rejected=fmean(rejected),
        )
    if held.graded:
        logps = policy([p for p, _, _ in held.graded], [c for _, c, _ in held.graded])
        good = [lp for lp, (_, _, g) in zip(logps, held.graded) if g]
        bad = [lp for lp, (_, _, g) in zip(logps, held.graded) if not g]
        out.update(
            good=len(good),
            bad=len(bad),
            logp_good=fmean(good),
            logp_bad=fmean(bad),
            logp_good_minus_bad=fmean(good) - fmean(bad),
        )
    return out


def _win(margin: float, tie: float) -> float:
    return 1.0 if margin > tie else 0.0 if margin < -tie else 0.5


@contextmanager
def scorer_of(model: Any, tokenizer: Any, max_length: int) -> Iterator[Scorer]:
    """`model` as a Scorer (for `held_out_metrics`' reference)."""
    yield lambda prompts, completions: completion_logps(model, tokenizer, prompts, completions, max_length)


# ------------------------------------------------------------------------------------ samples
def sample_rows(phase: str, sampled: Any) -> list[dict[str, Any]]:
    """samples.jsonl lines: one per sampled response, with its reward."""
    return [
        {"phase": phase, "prompt": prompt, "sample": i, "response": response, "reward": reward}
        for prompt, responses, rewards in zip(sampled.prompts, sampled.responses, sampled.rewards)
        for i, (response, reward) in enumerate(zip(responses, rewards))
    ]


def write_samples(run_dir: RunDir, rows: list[dict[str, Any]]) -> None:
    run_dir.write_text("samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ------------------------------------------------------------------------------------- report
SHOWN = (
    "chosen_preferred",
    "preference_accuracy",
    "reward_margin",
    "logp_margin",
    "logp_chosen",
    "logp_rejected",
    "logp_good",
    "logp_bad",
    "logp_good_minus_bad",
    "mean_reward",
)
TOP_LEVEL = ("chosen_preferred", "preference_accuracy", "mean_reward")
"""eval.json's top-level `<name>_before` and `<name>_after` (the reward stage's and SPEC's shape)."""


def comparison(outcome: Outcome) -> list[list[Any]]:
    before, after = outcome.test_before or {}, outcome.test or {}
    return [[k, before.get(k), after.get(k)] for k in SHOWN if k in after or k in before]


def top_level(outcome: Outcome) -> dict[str, Any]:
    """`mean_reward_before`, `mean_reward_after` and the like, for eval.json's top level."""
    out = {}
    for name in TOP_LEVEL:
        for phase, metrics in (("before", outcome.test_before), ("after", outcome.test)):
            if metrics and metrics.get(name) is not None:
                out[f"{name}_{phase}"] = metrics[name]
    return out


def data_lines(stage: str, d: dict[str, Any]) -> list[str]:
    """report.md's data section: what was trained on, and what was left out and why."""
    if stage == "dpo":
        return [
            f"- {d['pairs']} training pairs: {d['pair_rows']} pair rows and {d['rankings']} rankings "
            "expanded to every strictly ordered pair",
            f"- {d['tied_pairs']} tied pairs (responses ranked equal): never a preference, not trained on",
            f"- {d['unranked_rows']} rows not ranked yet (empty ranking): skipped",
            f"- {d['all_tied_rankings']} rankings tie every response: they say nothing, no pair from them",
            f"- several annotators per row combined by data.aggregate: {d['aggregate']}",
            f"- held out: {d['test_pairs']} pairs ({d['test_tied_pairs']} tied pairs left out)",
        ]
    balanced = (d["desirable_weight"], d["undesirable_weight"]) == (1.0, 1.0)
    return [
        f"- {d['good']} good and {d['bad']} bad training rows (a ranking gives its best tier as good, "
        "its worst as bad; middle tiers are not used)",
        f"- desirable_weight {d['desirable_weight']}, undesirable_weight {d['undesirable_weight']}"
        + (" (TRL's defaults)" if balanced else " (unbalanced data, weighted as TRL recommends)"),
        f"- {d['all_tied_rankings']} rankings tie every response: neither good nor bad, not used",
        f"- several annotators per row combined by data.aggregate: {d['aggregate']}",
        f"- held out: {d['test_rows']} rows, {d['test_pairs']} good/bad pairs of the same prompt",
    ]


def write_report(
    run_dir: RunDir,
    outcome: Outcome,
    *,
    title: str,
    about: list[str],
    data_lines: list[str],
    samples: list[dict[str, Any]],
) -> None:
    """report.md: what was trained on what, the held-out table, a few sampled answers."""
    from llmtune.runs.plots import training_curves

    rows = comparison(outcome)
    table("held-out preferences", ["metric", "before training", "after training"], rows)
    lines = [f"# {title}", "", *about, "", "## Data", "", *data_lines, ""]
    lines += ["## Held-out results", "", HOW_MEASURED, ""]
    lines.append(markdown_table(["metric", "before training", "after training"], rows))
    if samples:
        lines += ["## Sampled answers to held-out prompts", "", SAMPLES_NOTE, ""]
        lines.append(markdown_table(["prompt", "before", "reward", "after", "reward"], _shown(samples)))
    lines += warnings_markdown(outcome)
    run_dir.write_text("report.md", "\n".join(lines) + training_curves(run_dir.path))


def _shown(samples: list[dict[str, Any]]) -> list[list[Any]]:
    first = {(s["phase"], s["prompt"]): s for s in samples if s["sample"] == 0}
    prompts = list(dict.fromkeys(s["prompt"] for s in samples))[:SHOWN_SAMPLES]
    out = []
    for p in prompts:
        b, a = first.get(("before", p), {}), first.get(("after", p), {})
        out.append(
            [_cell(p), _cell(b.get("response")), b.get("reward"), _cell(a.get("response")), a.get("reward")]
        )
    return out


def _cell(text: Any) -> str:
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")[:200]


HOW_MEASURED = (
    "Log-probabilities are summed over each completion's tokens (its end-of-text token included), "
    "tokenized as the trainer does. *chosen_preferred*: share of held-out pairs whose chosen answer the "
    "policy finds more likely. *preference_accuracy*: share whose implicit reward beta * (log pi/ref of "
    "chosen - log pi/ref of rejected) is positive, ties counted half (before training the policy is its "
    "reference, so it is 0.5). *mean_reward*: the reward model's mean score of the policy's sampled "
    "answers (same prompts, same seed before and after)."
)
SAMPLES_NOTE = "The first sampled answer per prompt; every sample and its reward is in samples.jsonl."
