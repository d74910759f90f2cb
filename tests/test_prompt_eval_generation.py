"""prompt-eval on generated text, end to end with engines whose replies the test controls: reference
metrics against sacrebleu and rouge-score run on the predictions file, assertions and their gate,
the judge's strict parsing and its agreement with people, the paired tests, the one-class warning,
and bad assertion specs refused with exit 2 naming the recipe's file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_bad_input, invoke, run_cli, write, write_jsonl

from llmtune.inference.engine import Generation

SCRATCH = "{scratch: {architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}}"
SOURCES = [
    ("the red door is open", "die rote Tür ist offen"),
    ("we eat bread at noon", "wir essen mittags Brot"),
    ("the dog sleeps in the sun", "der Hund schläft in der Sonne"),
    ("my brother reads a map", "mein Bruder liest eine Karte"),
    ("the lamp is broken", "die Lampe ist kaputt"),
    ("she walks to the station", "sie geht zum Bahnhof"),
    ("the soup is cold", "die Suppe ist kalt"),
    ("we need two tickets", "wir brauchen zwei Karten"),
    ("the garden is green", "der Garten ist grün"),
    ("the car stops at the bridge", "das Auto hält an der Brücke"),
    ("he sings in the kitchen", "er singt in der Küche"),
    ("the window is dirty", "das Fenster ist schmutzig"),
]
# texts people scored 1-5, and what the judge replies about each (one out of its scale)
CALIBRATION = [("cand1", 1, "1"), ("cand2", 2, "Score: 3"), ("cand3", 3, " 3\n"), ("cand4", 4, "Score: 4")]
CALIBRATION += [("cand5", 5, "9"), ("cand6", 5, "Score: 5")]


def good_output(i: int) -> str:
    """The reference for the first nine rows, a near miss for the rest."""
    ref = SOURCES[i][1]
    return ref if i < 9 else ref + " heute"


def bad_output(i: int) -> str:
    return '{"answer": "keine"}' if i % 2 == 0 else "keine Ahnung"


def judge_reply(output: str) -> str:
    """The stub judge: 5 for a reference, malformed or conflicting replies for the rest."""
    calibration = {text: reply for text, _, reply in CALIBRATION}
    if output in calibration:
        return calibration[output]
    if output in [ref for _, ref in SOURCES]:
        return "Score: 5"
    if output.startswith("{"):
        return "Score: 2 (or maybe Score: 4)"  # two different scores: unparseable
    if output.endswith(" heute"):
        return "4"
    return "four"  # no number: unparseable


class StubEngine:
    """An engine whose generations the test decides (registered only in this test)."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def generate(self, prompts: list[str], **kwargs: Any) -> list[Generation]:
        assert kwargs.get("temperature") == 0.0
        return [Generation([self.reply(p)], 1) for p in prompts]


def stub_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmtune.jobs.prompt_eval import job

    index = {f"translate: {src}": i for i, (src, _) in enumerate(SOURCES)}
    replies = {
        "models.good": lambda p: good_output(index[p]),
        "models.bad": lambda p: bad_output(index[p]),
        "judge.model": judge_reply,
    }
    monkeypatch.setattr(job, "_engine", lambda recipe, ref, key, *a: StubEngine(replies[key]))


RECIPE = f"""\
kind: prompt-eval
models:
  good: {SCRATCH}
  bad: {SCRATCH}
data:
  test: rows.jsonl
  columns: {{text: source, label: reference, completion: candidate}}
task: free_text
scoring: generate
prompts:
  plain: {{template: "translate: {{{{ text }}}}"}}
slices: [language]
assertions:
  - {{type: is_json}}
  - {{type: not_contains, value: Ahnung, name: no_shrug}}
judge:
  model: {SCRATCH}
  rubric: Is it a faithful German translation?
  template: "{{{{ output }}}}"
fail_under: {{chrf@language: 0.4}}
output: {{dir: out}}
"""


@pytest.fixture(scope="module")
def generation_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One eval of two stub models on 12 rows (exit 1: the is_json gate is not met)."""
    folder = tmp_path_factory.mktemp("gen")
    rows = []
    for i, (src, ref) in enumerate(SOURCES):
        row = {"id": f"r{i}", "source": src, "reference": ref, "language": "ab"[i % 2]}
        if i < len(CALIBRATION):
            row.update(candidate=CALIBRATION[i][0], human_score=CALIBRATION[i][1])
        rows.append(row)
    write_jsonl(folder / "rows.jsonl", rows)
    path = write(folder / "eval.yaml", RECIPE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        stub_engines(mp)
        result = invoke("prompt-eval", path, "--json", "--fail-under", "pass_rate:is_json=0.95")
    out = folder / "out"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {
        "result": result,
        "results": json.loads((out / "results.json").read_text()),
        "predictions": predictions,
        "report": (out / "report.md").read_text(),
        "out": out,
    }


def pair_of(run: dict[str, Any], model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pair = next(p for p in run["results"]["pairs"] if p["model"] == model)
    return pair, [p for p in run["predictions"] if p["model"] == model]


def test_reference_metrics_equal_sacrebleu_and_rouge_score_on_the_predictions(generation_run) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for model in ("good", "bad"):
        pair, rows = pair_of(generation_run, model)
        hyps, refs = [r["hypothesis"] for r in rows], [r["gold"] for r in rows]
        assert hyps == [good_output(i) if model == "good" else bad_output(i) for i in range(12)]
        metrics = pair["metrics"]
        assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score / 100, abs=1e-12)
        assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score / 100, abs=1e-12)
        rouge = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
        assert metrics["rouge_l"] == pytest.approx(np.mean(rouge))
        assert metrics["exact_match"] == pytest.approx(sum(h == r for h, r in zip(hyps, refs)) / 12)
        for row, h, r, rl in zip(rows, hyps, refs, rouge):
            assert row["metrics"]["bleu"] == pytest.approx(sacrebleu.sentence_bleu(h, [r]).score / 100)
            assert row["metrics"]["chrf"] == pytest.approx(sacrebleu.sentence_chrf(h, [r]).score / 100)
            assert row["metrics"]["rouge_l"] == pytest.approx(rl)
        # a slice is scored as sacrebleu scores its rows alone
        a = [i for i in range(12) if i % 2 == 0]
        chrf_a = sacrebleu.corpus_chrf([hyps[i] for i in a], [[refs[i] for i in a]]).score / 100
        assert pair["slices"]["language"]["values"]["a"]["chrf"] == pytest.approx(chrf_a)
    good = pair_of(generation_run, "good")[0]["metrics"]
    assert 0.9 < good["chrf"] < 1.0 and good["exact_match"] == pytest.approx(0.75)
    assert generation_run["results"]["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_assertion_pass_rates_and_the_gate_on_one_of_them(generation_run) -> None:
    result = generation_run["result"]
    assert result.code == 1, result.stderr[-2000:]
    assert "pass_rate:is_json" in result.stderr and "below 0.95" in result.stderr
    gate = result.json()["gate"]
    assert set(gate["thresholds"]) == {"chrf@language", "pass_rate:is_json"}
    assert gate["failures"] == [f for f in gate["failures"] if "is_json" in f]  # chrf@language passes
    bad, rows = pair_of(generation_run, "bad")
    assert bad["metrics"]["pass_rate:is_json"] == 0.5 and bad["metrics"]["pass_rate:no_shrug"] == 0.5
    assert bad["metrics"]["pass_rate"] == 0.5  # JSON rows pass both, the others fail both
    assert [r["assertions"]["is_json"] for r in rows] == [i % 2 == 0 for i in range(12)]
    good, _ = pair_of(generation_run, "good")
    assert good["metrics"]["pass_rate:is_json"] == 0.0 and good["metrics"]["pass_rate:no_shrug"] == 1.0


def test_judge_scores_strictly_and_reports_agreement_with_people(generation_run) -> None:
    from scipy.stats import rankdata

    good, good_rows = pair_of(generation_run, "good")
    bad, bad_rows = pair_of(generation_run, "bad")
    assert [r["judge"]["score"] for r in good_rows] == [5.0] * 9 + [4.0] * 3
    assert good["metrics"]["judge_score"] == pytest.approx((9 * 5 + 3 * 4) / 12)
    assert all(r["judge"]["score"] is None for r in bad_rows)  # conflicting or wordy: never guessed
    assert bad["metrics"]["judge_score"] is None
    judge = generation_run["results"]["judge"]
    assert judge["unparseable"] == 12 and judge["replies"] == 24
    agreement = judge["agreement"]
    assert agreement["compared"] == 5 and agreement["unparseable"] == 1  # cand5's reply 9 is off the scale
    judged = [1, 3, 3, 4, 5]
    human = [1, 2, 3, 4, 5]
    # Spearman by hand: Pearson's r of the (average) ranks
    rj, rh = rankdata(judged), rankdata(human)
    assert agreement["spearman"] == pytest.approx(np.corrcoef(rj, rh)[0, 1])
    # Cohen's kappa by hand over the categories 1..5
    observed = np.mean(np.array(judged) == np.array(human))
    expected = sum(judged.count(k) * human.count(k) for k in range(1, 6)) / 25
    assert agreement["cohen_kappa"] == pytest.approx((observed - expected) / (1 - expected))
    assert "Agreement with people" in generation_run["report"]


def test_every_table_has_intervals_and_marks_differences_larger_than_the_noise(generation_run) -> None:
    from scipy.stats import binomtest

    results = generation_run["results"]
    good, _ = pair_of(generation_run, "good")
    low, high = good["intervals"]["exact_match"]
    ci = binomtest(9, 12).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert good["intervals"]["chrf"][0] <= good["metrics"]["chrf"] <= good["intervals"]["chrf"][1]
    exact = next(c for c in results["comparisons"] if c["metric"] == "exact_match")
    # good is right on 9 rows where bad is wrong, never the other way: McNemar's exact p = 2 / 2**9
    assert (exact["only_a"], exact["only_b"]) == (9, 0)
    assert exact["p_value"] == pytest.approx(2 / 2**9) and exact["significant"] is True
    assert "| good x plain | bad x plain | exact_match |" in generation_run["report"]
    assert "**yes**" in generation_run["report"]
    assert (generation_run["out"] / "chart.png").stat().st_size > 0


ONE_CLASS = """\
kind: prompt-eval
models:
  tiny: {scratch: {architecture: llama, hidden_size: 32, num_layers: 1, num_heads: 2}}
data: {test: rows.jsonl}
labels: [pos, neg]
scoring: generate
prompts:
  p1: {template: "{{ text }}?"}
  p2: {template: "Q: {{ text }}?"}
output: {dir: out}
"""


def test_a_model_that_gives_one_answer_for_every_row_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmtune.jobs.prompt_eval import job

    write_jsonl(
        tmp_path / "rows.jsonl", [{"text": f"t{i}", "label": "pos" if i < 7 else "neg"} for i in range(10)]
    )
    path = write(tmp_path / "eval.yaml", ONE_CLASS)
    monkeypatch.setattr(
        job, "_engine", lambda *a: StubEngine(lambda p: "pos" if p.startswith("Q") else "neg")
    )
    result = invoke("prompt-eval", path, "--json")
    assert result.code == 0, result.stderr[-2000:]
    pairs = json.loads((tmp_path / "out" / "results.json").read_text())["pairs"]
    assert "predicts 'neg' for every row" in pairs[0]["warnings"][0] and "(0.3000)" in pairs[0]["warnings"][0]
    assert "predicts 'pos' for every row" in pairs[1]["warnings"][0]
    assert "warning:" in result.stderr
    assert "## Warnings" in (tmp_path / "out" / "report.md").read_text()


BAD_SPECS = [
    ('{type: regex, value: "a(?=b)"}', "RE2"),
    ("{type: json_schema, value: {type: 12}}", "not a valid JSON Schema"),
    ("{type: max_length, value: many}", "max_length needs value"),
    ("{type: is_json, value: yes}", "is_json takes no value"),
    ("{type: one_of, value: []}", "one_of needs value"),
    ("{type: contains}", "contains needs value"),
    ("{type: looks_fine}", "assertions"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS)
def test_bad_assertion_specs_are_refused_with_the_file_and_line(
    tmp_path: Path, spec: str, message: str
) -> None:
    text = RECIPE.replace("  - {type: is_json}\n", f"  - {spec}\n")
    path = write(tmp_path / "eval.yaml", text)
    line = text.splitlines().index(f"  - {spec}") + 1
    result = invoke("prompt-eval", path)
    assert_bad_input(result, f"eval.yaml:{line}", message)
    assert not (tmp_path / "out").exists()


def test_a_gate_on_an_assertion_the_recipe_lacks_is_refused_by_the_cli(tmp_path: Path) -> None:
    path = write(tmp_path / "eval.yaml", RECIPE.replace("  - {type: is_json}\n", ""))
    result = run_cli("prompt-eval", path, "--fail-under", "pass_rate:is_json=0.9")
    assert_bad_input(result, "--fail-under", "cannot gate on 'pass_rate:is_json'", "pass_rate:no_shrug")
    assert not (tmp_path / "out").exists()


def test_people_s_scores_need_the_text_they_scored(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "rows.jsonl", [{"source": "a b", "reference": "c d", "language": "x", "human_score": 3}]
    )
    path = write(tmp_path / "eval.yaml", RECIPE.replace(", completion: candidate", ""))
    result = invoke("prompt-eval", path)
    assert_bad_input(result, "rows.jsonl:1", "human_score but no completion")
    assert not (tmp_path / "out").exists()
