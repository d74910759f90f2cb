"""The one batched inference engine every job shares (bulk-infer, prompt-eval, distill, rlhf).

What it does for speed, and why each is safe:
- identical prompts are computed once and the result is handed to every copy;
- prompts are sorted by length and grouped under a token budget (`max_batch_tokens`, padding
  included), so a batch holds rows of similar length and padding stays small;
- decoder batches are left-padded with an attention mask, so greedy results do not depend on
  the batch a row lands in (tests compare them with row-by-row `model.generate`);
- `batch_size="auto"` starts from the token budget and halves the batch on out-of-memory
  instead of crashing, remembering the size that fits;
- generation (`hf_generate.py`) runs a continuous-batching loop over the KV cache: a row that
  ends (end-of-sequence, stop string, max_new_tokens) leaves the batch and a waiting prompt
  joins, so no step is spent on finished rows (`continuous.py`); models that loop cannot drive
  go through HF `generate` on padded batches;
- `classify` runs each prompt once and scores every label's tokens from that prompt's KV cache;
- `score` runs a regression head (one output) and returns its number in the label's units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from llmtune.errors import BadInput
from llmtune.inference.batching import TokenBudgetBatcher, left_padded
from llmtune.inference.interface import (
    ChoiceScores,
    EngineRequest,
    Generation,
    Supports,
    chat_prompt,
    dedupe,
    encode_prompt,
    separated_scores,
    split_continuations,
)
from llmtune.models.loading import LoadedModel, merged_for_inference

__all__ = ["ChoiceScores", "Engine", "Generation", "chat_prompt", "open_engine"]


def is_sequence_classifier(model: Any) -> bool:
    """A model with a sequence-classification head (PEFT wrappers looked through)."""
    from llmtune.models.info import model_head

    return model_head(model) == "classification"


def open_engine(request: EngineRequest) -> Engine:
    """`engine: hf` (the registry's factory): the request's loaded model, or the model loaded
    here with the request's head and labels (an adapter folded in when `merge_adapters`)."""
    from llmtune.models.loading import load_model

    loaded = request.loaded
    if loaded is None:
        loaded = load_model(request.ref, request.recipe, head=request.head, labels=request.labels)
        if request.merge_adapters:
            loaded.model = merged_for_inference(loaded.model)
    return Engine(
        loaded,
        batch_size=request.batch_size,
        max_batch_tokens=request.max_batch_tokens,
        max_length=request.max_length,
        label_range=request.label_range,
    )


class Engine:
    """Batched generation and scoring over one loaded model (`engine: hf`)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        batch_size: int | Literal["auto"] = "auto",
        max_batch_tokens: int = 16384,
        max_length: int = 2048,
        label_range: tuple[float, float] | None = None,
    ) -> None:
        """`max_length`: longest prompt in tokens; longer prompts keep their last tokens.
        `label_range`: a regression head trained on labels scaled to 0..1 of this range (its
        config.json says so; `models.info.inspect_model` reads it): `score` scales back."""
        from llmtune.models.regression_head import is_regression

        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.max_length = max_length
        self.classifier = is_sequence_classifier(self.model)
        self.regression = self.classifier and is_regression(self.model.config.to_dict())
        self.label_range = label_range
        self.batcher = TokenBudgetBatcher(max_batch_tokens, batch_size)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    @property
    def supports(self) -> Supports:
        """Causal LMs generate and score choices; a head classifies or scores."""
        causal = not self.classifier
        return Supports(generate=causal, choices=causal, heads=self.classifier, description="transformers")

    def close(self) -> None:
        """Nothing to free beyond the model, which the garbage collector takes."""

    # ------------------------------------------------------------------ tokens
    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt, special tokens as the model expects them (untruncated).

        A prompt that already starts with the BOS text (a rendered chat template) gets no
        second BOS.
        """
        return encode_prompt(self.tokenizer, prompt)

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Prompt lengths in tokens, before truncation (to apply `on_too_long`)."""
        return [len(self.encode(p)) for p in prompts]

    def apply_chat_template(self, prompt: str, system: str | None = None) -> str:
        """The prompt as the user turn of the tokenizer's chat template, ready for the reply."""
        return chat_prompt(self.tokenizer, prompt, system, self.model.name_or_path)

    # ------------------------------------------------------------- generate
    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        stop: Sequence[str] = (),
        num_return_sequences: int = 1,
        seed: int = 0,
    ) -> list[Generation]:
        """Generate for every prompt; one Generation per prompt, in input order.

        temperature 0 is greedy (then results do not depend on batching); above 0 samples with
        top_p / top_k, each row from its own generator seeded from `seed`, its prompt and its
        copy number (so a row's samples do not depend on its batch either). Texts are cut before the first `stop` string. These settings
        are the whole decoding config: a model's own generation_config defaults (e.g. a
        repetition penalty) are not applied, except its end-of-sequence tokens.
        """
        from llmtune.inference.decoding import Decoding, text_of
        from llmtune.inference.hf_generate import generate_tokens

        if self.classifier:
            raise ValueError("generate needs a causal LM; this model has a classification head")
        unique, where = dedupe(prompts)
        encoded = [self.encode(p)[-self.max_length :] for p in unique]
        decoding = Decoding(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            stop=tuple(s for s in stop if s),
            num_return_sequences=num_return_sequences,
            seed=seed,
            pad_id=self.pad_id,
            eos_ids=frozenset(self.eos_ids),
        )
        results = []
        for rows in generate_tokens(self.model, self.tokenizer, encoded, decoding, self.batcher):
            decoded = [text_of(self.tokenizer, tokens, decoding) for tokens in rows]
            results.append(Generation([text for text, _ in decoded], sum(used for _, used in decoded)))
        return [_copy_generation(results[j]) for j in where]

    # ---------------------------------------------------------------- score
    def score_choices(self, prompts: list[str], choices: list[str]) -> list[ChoiceScores]:
        """Log-likelihood of each choice as the continuation of each prompt (causal LMs).

        Tokenized as lm-evaluation-harness does: trailing whitespace of the prompt moves to the
        choice, `prompt + choice` is tokenized whole and the choice's tokens are the ones after
        the prompt's. Each prompt runs once; every choice is scored from its KV cache.
        """
        import torch

        if self.classifier:
            raise ValueError("score_choices needs a causal LM; this model has a classification head")
        unique, where = dedupe(prompts)
        contexts, continuations = [], []
        for prompt in unique:
            ctx, conts = self._split_continuations(prompt, choices)
            contexts.append(ctx)
            continuations.append(conts)
        results: list[ChoiceScores | None] = [None] * len(unique)
        longest_choice = max((len(c) for conts in continuations for c in conts), default=0)

        def run(batch: list[int]) -> None:
            with torch.inference_mode():
                scored = self._score_batch([contexts[i] for i in batch], [continuations[i] for i in batch])
            for i, scores in zip(batch, scored):
                results[i] = scores

        self.batcher.run([len(c) for c in contexts], longest_choice, len(choices), run)
        return [results[j] for j in where]  # type: ignore[misc]

    def _split_continuations(self, prompt: str, choices: list[str]) -> tuple[list[int], list[list[int]]]:
        return split_continuations(self.encode, prompt, choices, self.max_length)

    def _score_batch(self, contexts: list[list[int]], conts: list[list[list[int]]]) -> list[ChoiceScores]:
        """One forward pass over the left-padded prompts, then one over every (prompt, choice)
        continuation reusing the prompts' KV cache."""
        import torch

        n_choices = len(conts[0])
        ids, mask = left_padded(contexts, self.pad_id, self.device)
        # positions from the mask, as generate does, so that left padding changes nothing
        prompt_positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=prompt_positions, use_cache=True)
        last_logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(n_choices)
        flat = [c for row in conts for c in row]
        width = max(len(c) for c in flat)
        cont_ids = torch.full((len(flat), width), self.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(flat), width), dtype=torch.long)
        for r, c in enumerate(flat):
            cont_ids[r, : len(c)] = torch.tensor(c)
            cont_mask[r, : len(c)] = 1
        cont_ids, cont_mask = cont_ids.to(self.device), cont_mask.to(self.device)
        prompt_mask = mask.repeat_interleave(n_choices, dim=0)
        positions = prompt_mask.sum(dim=1, keepdim=True) + torch.arange(width, device=self.device)
        follow = None
        if width > 1:  # logits after each continuation token predict the next one
            follow = self.model(
                input_ids=cont_ids[:, :-1],
                attention_mask=torch.cat([prompt_mask, cont_mask[:, :-1]], dim=1),
                position_ids=positions[:, :-1],
                past_key_values=cache,
                use_cache=False,
            ).logits.float()
        first = last_logprobs.repeat_interleave(n_choices, dim=0)
        results = []
        for p in range(len(contexts)):
            sums, means, counts = [], [], []
            for j in range(n_choices):
                r = p * n_choices + j
                c = flat[r]
                total = float(first[r, c[0]])
                if len(c) > 1:
                    logprobs = torch.log_softmax(follow[r, : len(c) - 1], dim=-1)
                    total += float(logprobs.gather(1, cont_ids[r, 1 : len(c)].unsqueeze(1)).sum())
                sums.append(total)
                means.append(total / len(c))
                counts.append(len(c))
            results.append(ChoiceScores(sums, means, counts))
        return results

    # -------------------------------------------------------------- classify
    def classify(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """A probability per label for each prompt, in input order.

        Causal LMs: softmax over the labels' log-likelihood sums (each label scored as
        `" " + label` unless the prompt ends with whitespace). Sequence-classification models:
        softmax of the head, its `id2label` names mapped to `labels` (generic LABEL_i names map
        by position).
        """
        import torch

        if not self.classifier:
            out = []
            for scores in separated_scores(self.score_choices, prompts, labels):
                probs = torch.softmax(torch.tensor(scores.logprob_sum), dim=0).tolist()
                out.append(dict(zip(labels, probs)))
            return out
        return self._classify_with_head(prompts, labels)

    def head_labels(self) -> list[str]:
        """The classification head's label names, in output order."""
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]

    def _classify_with_head(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        import torch

        from llmtune.models.info import head_columns

        names = self.head_labels()
        columns = head_columns(names, labels)
        if columns is None:
            raise BadInput(
                f"labels {labels} do not match the model's classification head {names}", key="labels"
            )
        out = []
        for logits in self._head_outputs(prompts):
            probs = torch.softmax(torch.tensor(logits)[columns], dim=-1).tolist()
            out.append(dict(zip(labels, probs)))
        return out

    # ----------------------------------------------------------------- score
    def score(self, prompts: list[str]) -> list[float]:
        """The number a regression head (one output) predicts for each prompt, in input order,
        in the label's own units (scaled back from 0..1 when the model has a label_range)."""
        from llmtune.models.regression_head import from_unit

        if not self.regression:
            raise ValueError("score needs a regression head (one output); this model has none")
        return [from_unit(outputs[0], self.label_range) for outputs in self._head_outputs(prompts)]

    def _head_outputs(self, prompts: list[str]) -> list[list[float]]:
        """The sequence-classification head's raw outputs (float32) for each prompt, in input
        order; prompts longer than max_length keep their start, as in training."""
        import torch

        unique, where = dedupe(prompts)
        encoded = [
            self.tokenizer(p, truncation=True, max_length=self.max_length)["input_ids"] for p in unique
        ]
        results: list[list[float] | None] = [None] * len(unique)

        def run(batch: list[int]) -> None:
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in padded.items()}).logits
            for i, row in zip(batch, logits.float().tolist()):
                results[i] = row

        self.batcher.run([len(e) for e in encoded], 0, 1, run)
        return [list(results[j]) for j in where]  # type: ignore[arg-type]


def _copy_generation(g: Generation) -> Generation:
    return Generation(list(g.texts), g.new_tokens)
