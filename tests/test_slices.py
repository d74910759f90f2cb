"""Fairness slices and slice gates: every metric per value of a column equals the metric computed
on that column's rows alone (scikit-learn), the worst slice and the gap are right (also where lower
is better), `--fail-under` takes METRIC=VALUE, METRIC@COLUMN=VALUE and METRIC@COLUMN=SLICE=VALUE,
refuses what it cannot check before anything loads (exit 2), and fails a finished run (exit 1)
naming the metric, slice, value and threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_bad_input, invoke, read_jsonl, run_cli, write, write_jsonl

from llmtune.errors import BadInput, GateFailed
from llmtune.metrics import classification_metrics
from llmtune.slices import (
    check_gate,
    check_slice_columns,
    gate_failures,
    parse_gate,
    parse_gates,
    slice_metrics,
    slices_markdown,
)

LABELS = ["neg", "pos"]
ROWS = [
    {"id": f"r{i}", "lang": lang, "gold": gold, "pred": pred}
    for i, (lang, gold, pred) in enumerate(
        [
            ("de", "pos", "pos"),
            ("de", "neg", "pos"),
            ("de", "neg", "neg"),
            ("en", "pos", "pos"),
            ("en", "neg", "neg"),
            ("en", "pos", "pos"),
            ("en", "neg", "pos"),
            ("fr", "pos", "neg"),
            ("fr", "neg", "pos"),
        ]
    )
]


def metrics_of(indices: list[int]) -> dict:
    return classification_metrics(
        [ROWS[i]["gold"] for i in indices], [ROWS[i]["pred"] for i in indices], LABELS
    )


# ---- slice metrics


def test_each_slice_equals_scikit_learn_on_its_rows_with_gap_and_worst() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    report = slice_metrics(ROWS, ["lang"], metrics_of)["lang"]
    assert list(report["values"]) == ["de", "en", "fr"]
    for lang, stats in report["values"].items():
        rows = [r for r in ROWS if r["lang"] == lang]
        gold, pred = [r["gold"] for r in rows], [r["pred"] for r in rows]
        assert stats["n"] == len(rows)
        assert stats["accuracy"] == pytest.approx(accuracy_score(gold, pred))
        assert stats["f1"] == pytest.approx(
            f1_score(gold, pred, labels=LABELS, average="macro", zero_division=0)
        )
        assert "per_class" not in stats and "confusion_matrix" not in stats
    # de 2/3, en 3/4, fr 0/2
    assert report["worst"]["accuracy"] == "fr" and report["best"]["accuracy"] == "en"
    assert report["gap"]["accuracy"] == pytest.approx(0.75)


def test_lower_is_better_metrics_have_the_highest_value_as_worst_and_nan_is_null() -> None:
    errors = {"de": 0.5, "en": 0.1, "fr": 2.0}

    def compute(indices: list[int]) -> dict:
        lang = ROWS[indices[0]]["lang"]
        return {"mae": errors[lang], "r2": float("nan") if lang == "fr" else 1 - errors[lang]}

    report = slice_metrics(ROWS, ["lang"], compute)["lang"]
    assert report["worst"]["mae"] == "fr" and report["best"]["mae"] == "en"
    assert report["gap"]["mae"] == pytest.approx(1.9)
    assert report["values"]["fr"]["r2"] is None  # undefined there, and left out of the gap
    assert report["worst"]["r2"] == "de" and report["gap"]["r2"] == pytest.approx(0.4)
    json.dumps(report, allow_nan=False)  # eval.json stays valid JSON


def test_report_section_has_a_row_per_value_and_the_gap() -> None:
    text = slices_markdown(slice_metrics(ROWS, ["lang"], metrics_of))
    assert "## Slices by `lang`" in text
    assert "| fr | 2 | 0.0000 |" in text  # value, n, accuracy
    assert "accuracy 0.7500 (worst: fr, best: en)" in text


def test_a_row_without_the_column_is_named_by_file_and_line() -> None:
    rows = [{"lang": "de"}, {"lang": "en"}, {"text": "x"}, {"lang": None}]
    where = [f"test.jsonl:{i + 1}" for i in range(4)]
    with pytest.raises(BadInput) as exc:
        check_slice_columns(rows, where, ["lang"])
    assert str(exc.value).startswith("test.jsonl:3: evaluation.slices: the row has no 'lang' column")
    with pytest.raises(BadInput, match="test.jsonl:4: slices: the row has a null 'lang'"):
        check_slice_columns([rows[0], rows[3]], [where[0], where[3]], ["lang"], key="slices")
    check_slice_columns(rows[:2], where[:2], ["lang"])  # a column every row has is fine


# ---- gates


@pytest.mark.parametrize(
    ("text", "target", "threshold"),
    [
        ("f1=0.8", "f1", 0.8),
        (" accuracy = 0.5 ", "accuracy", 0.5),
        ("f1@language=0.7", "f1@language", 0.7),
        ("f1@language=de=0.8", "f1@language=de", 0.8),
        ("f1@region=eu=west=1", "f1@region=eu=west", 1.0),
    ],
)
def test_gate_forms_parse(text: str, target: str, threshold: float) -> None:
    gate = parse_gate(text)
    assert (gate.target, gate.threshold) == (target, threshold)


@pytest.mark.parametrize(
    "text", ["f1", "f1=", "=0.5", "f1=high", "f1@=0.5", "@de=0.5", "f1@lang==0.5", "f1=nan"]
)
def test_malformed_gates_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(BadInput) as exc:
        parse_gates([text], ["f1"], ["lang"])
    assert "--fail-under: expected METRIC=VALUE, METRIC@COLUMN=VALUE or METRIC@COLUMN=SLICE=VALUE" in str(
        exc.value
    )


def test_gates_refuse_unknown_metrics_lower_is_better_and_unknown_columns() -> None:
    metrics = ["mae", "rmse", "r2", "pearson"]
    with pytest.raises(ValueError, match="cannot gate on 'mae': lower is better.*r2, pearson"):
        check_gate(parse_gate("mae=0.3"), metrics, [])
    with pytest.raises(ValueError, match="cannot gate on 'f1'"):
        check_gate(parse_gate("f1=0.3"), metrics, [])
    with pytest.raises(ValueError, match="'lang' is not a slice column .the recipe has no slices"):
        check_gate(parse_gate("r2@lang=0.3"), metrics, [])
    check_gate(parse_gate("r2@lang=de=0.3"), metrics, ["lang"])
    # flags override the recipe's fail_under target by target
    gates = parse_gates(["f1=0.9", "f1@lang=0.4"], ["f1"], ["lang"], defaults={"f1": 0.5, "f1@lang=de": 0.6})
    assert {g.target: g.threshold for g in gates} == {"f1": 0.9, "f1@lang=de": 0.6, "f1@lang": 0.4}


def test_gate_on_the_worst_slice_one_slice_and_an_absent_slice() -> None:
    measured = {
        "the test split": (metrics_of(list(range(len(ROWS)))), slice_metrics(ROWS, ["lang"], metrics_of))
    }
    gates = [
        parse_gate(t)
        for t in ("accuracy=0.5", "accuracy@lang=de=0.6", "accuracy@lang=0.1", "accuracy@lang=xx=0")
    ]
    failures = gate_failures(gates, measured)
    assert failures == [
        "accuracy of slice lang=fr (the worst lang slice, 2 rows) of the test split is 0.0000, below 0.1",
        "accuracy of slice lang=xx (no scored row has lang=xx) of the test split was not measured; "
        "cannot check accuracy@lang=xx",
    ]
    assert gate_failures([parse_gate("accuracy@lang=de=0.7")], measured) == [
        "accuracy of slice lang=de (3 rows) of the test split is 0.6667, below 0.7"
    ]


def test_best_gate_passes_when_one_pair_meets_it_and_any_needs_all() -> None:
    good = (ROWS, {"lang": {"values": {"de": {"f1": 0.9, "n": 3}}, "worst": {"f1": "de"}, "gap": {}}})
    bad = (ROWS, {"lang": {"values": {"de": {"f1": 0.2, "n": 3}}, "worst": {"f1": "de"}, "gap": {}}})
    pairs = {"pair a x p": ({}, good[1]), "pair b x p": ({}, bad[1])}
    gate = [parse_gate("f1@lang=de=0.5")]
    assert gate_failures(gate, pairs, "best") == []
    assert gate_failures(gate, pairs, "any") == [
        "f1 of slice lang=de (3 rows) of pair b x p is 0.2000, below 0.5"
    ]


def test_finetune_gate_on_a_finished_summary_raises_gate_failed() -> None:
    from llmtune.jobs.finetune.job import apply_gates

    slices = slice_metrics(ROWS, ["lang"], metrics_of)
    summary = {"status": "completed", "test": {"accuracy": 0.5556, "f1": 0.55, "slices": slices}}
    apply_gates([parse_gate("accuracy=0.5"), parse_gate("f1@lang=en=0.6")], summary)
    assert summary["gate"]["passed"] is True
    with pytest.raises(GateFailed) as exc:
        apply_gates([parse_gate("f1@lang=0.2")], summary)
    assert str(exc.value) == (
        "fail-under: f1 of slice lang=fr (the worst lang slice, 2 rows) of the test split is 0.0000, below 0.2"
    )
    assert exc.value.summary["gate"]["passed"] is False


# ---- prompt-eval end to end

FRUITS = {
    "drupe": "peach plum cherry apricot mango olive nectarine date",
    "pome": "apple pear quince medlar loquat crabapple rowan hawthorn",
    "citrus": "orange lemon lime grapefruit mandarin tangerine pomelo yuzu",
}
LLAMA = "{scratch: {architecture: llama, hidden_size: 32, num_layers: 2, num_heads: 2}}"


def fruit_recipe(folder: Path, extra: str = "") -> Path:
    """test.jsonl of fruit -> family with a `lang` column (de, en, fr) and the row's own id."""
    rows = []
    for family, names in FRUITS.items():
        for i, fruit in enumerate(names.split()):
            rows.append(
                {"fruit_id": f"f-{fruit}", "fruit": fruit, "family": family, "lang": "def"[i % 3] + "x"}
            )
    write_jsonl(folder / "test.jsonl", rows)
    return write(
        folder / "eval.yaml",
        f"""kind: prompt-eval
models: {{tiny: {LLAMA}}}
data: {{test: test.jsonl, columns: {{id: fruit_id, text: fruit, label: family}}}}
prompts: {{plain: {{template: "{{{{ text }}}} is a"}}, named: {{template: "Fruit: {{{{ text }}}}. Family:"}}}}
slices: [lang]
output: {{dir: out}}
{extra}""",
    )


@pytest.mark.slow
def test_prompt_eval_slices_equal_metrics_on_the_filtered_predictions_and_gate_names_the_slice(
    tmp_path: Path,
) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    path = fruit_recipe(tmp_path)
    result = run_cli(
        "prompt-eval", path, "--json", "--fail-under", "f1@lang=dx=1.01", "--fail-under", "accuracy@lang=0"
    )
    assert result.code == 1, result.stderr[-3000:]
    assert "f1 of slice lang=dx (9 rows) of best pair tiny x " in result.stderr
    assert "below 1.01" in result.stderr and "accuracy@lang" not in result.stderr
    data = {r["fruit_id"]: r for r in read_jsonl(tmp_path / "test.jsonl")}
    predictions = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert {p["id"] for p in predictions} == set(data)  # the data's own ids
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    labels = results["labels"]
    for pair in results["pairs"]:
        report = pair["slices"]["lang"]
        assert sorted(report["values"]) == ["dx", "ex", "fx"]
        for lang, stats in report["values"].items():
            rows = [
                p
                for p in predictions
                if (p["model"], p["prompt"]) == (pair["model"], pair["prompt"])
                and data[p["id"]]["lang"] == lang
            ]
            gold, pred = [r["gold"] for r in rows], [r["prediction"] for r in rows]
            assert stats["n"] == len(rows) == {"dx": 9, "ex": 9, "fx": 6}[lang]
            assert stats["accuracy"] == pytest.approx(accuracy_score(gold, pred))
            assert stats["f1"] == pytest.approx(
                f1_score(gold, pred, labels=labels, average="macro", zero_division=0)
            )
        accuracies = {v: s["accuracy"] for v, s in report["values"].items()}
        assert report["gap"]["accuracy"] == pytest.approx(max(accuracies.values()) - min(accuracies.values()))
        assert accuracies[report["worst"]["accuracy"]] == min(accuracies.values())
    summary = result.json()
    assert summary["gate"]["passed"] is False and len(summary["gate"]["failures"]) == 1
    assert summary["gate"]["thresholds"] == {"f1@lang=dx": 1.01, "accuracy@lang": 0.0}
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert "## Slices" in report_md and "#### Slices by `lang`" in report_md


def test_prompt_eval_refuses_a_missing_slice_column_and_impossible_gates(tmp_path: Path) -> None:
    path = fruit_recipe(tmp_path)
    lines = (tmp_path / "test.jsonl").read_text().splitlines()
    row = json.loads(lines[4])
    del row["lang"]
    lines[4] = json.dumps(row)
    write(tmp_path / "test.jsonl", "\n".join(lines) + "\n")
    assert_bad_input(invoke("prompt-eval", path), "test.jsonl:5: slices: the row has no 'lang' column")
    fruit_recipe(tmp_path)  # every row has lang again
    assert_bad_input(
        invoke("prompt-eval", path, "--fail-under", "f1@lang=de=0.5"),
        "--fail-under: f1@lang=de: no scored row has lang=de; the values are dx, ex, fx",
    )
    assert_bad_input(
        invoke("prompt-eval", path, "--fail-under", "f1@region=0.5"), "'region' is not a slice column"
    )
    assert_bad_input(invoke("prompt-eval", path, "--fail-under", "invalid_rate=0.1"), "lower is better")
    bad_recipe = fruit_recipe(tmp_path, "fail_under: {f1@region: 0.5}\n")
    assert_bad_input(invoke("prompt-eval", bad_recipe), "eval.yaml", "'region' is not a slice column")
    assert not (tmp_path / "out").exists()


# ---- finetune --fail-under


def classification_recipe(folder: Path, extra: str = "") -> Path:
    words = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird"]
    rows = [
        {
            "id": f"t{i}",
            "text": f"the {w} is {'good' if i % 2 else 'bad'}",
            "label": "pos" if i % 2 else "neg",
            "lang": "de" if i % 3 else "en",
        }
        for i, w in enumerate(words * 3)
    ]
    write_jsonl(folder / "train.jsonl", rows[:16])
    write_jsonl(folder / "test.jsonl", rows[16:])
    return write(
        folder / "ft.yaml",
        f"""kind: finetune
model: {{scratch: {{architecture: bert, hidden_size: 32, num_layers: 2, num_heads: 2}}}}
method: {{type: full}}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
training: {{max_steps: 2, batch_size: 8, learning_rate: 1.0e-3, logging_steps: 1}}
output: {{dir: run}}
{extra}""",
    )


@pytest.mark.slow
def test_finetune_fail_under_exits_1_after_a_completed_run(tmp_path: Path) -> None:
    path = classification_recipe(tmp_path)
    result = run_cli("finetune", path, "--json", "--fail-under", "accuracy=1.01", "--fail-under", "f1=0")
    assert result.code == 1, result.stderr[-3000:]
    summary = result.json()
    accuracy = json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]["accuracy"]
    assert f"fail-under: accuracy of the test split is {accuracy:.4f}, below 1.01" in result.stderr
    assert "f1 of" not in result.stderr  # the gate that passed is not reported as failing
    assert summary["gate"] == {
        "thresholds": {"accuracy": 1.01, "f1": 0.0},
        "passed": False,
        "failures": [f"accuracy of the test split is {accuracy:.4f}, below 1.01"],
    }
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "completed"  # the run itself finished; only the gate failed


def test_finetune_refuses_gates_it_cannot_check_before_anything_loads(tmp_path: Path) -> None:
    path = classification_recipe(tmp_path)
    assert_bad_input(
        invoke("finetune", path, "--fail-under", "accuracy@lang=0.5"),
        "--fail-under: accuracy@lang: 'lang' is not a slice column (the recipe has no slices)",
    )
    assert_bad_input(invoke("finetune", path, "--fail-under", "accuracy>0.5"), "expected METRIC=VALUE")
    assert_bad_input(invoke("finetune", path, "--fail-under", "rmse=0.5"), "cannot gate on 'rmse'")
    assert_bad_input(
        invoke("finetune", path, "--set", "data.test=null", "--fail-under", "f1=0.5"),
        "ft.yaml: --fail-under: the gate is measured on the test split",
    )
    sweep = write(tmp_path / "sweep.yaml", "params: {training.learning_rate: [1.0e-3, 2.0e-3]}\n")
    result = invoke("finetune", path, "--sweep", sweep, "--fail-under", "f1=0.5")
    assert_bad_input(result, "a sweep ranks its trials")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_finetune_slices_equal_metrics_on_the_filtered_predictions_and_gate_on_a_slice(
    tmp_path: Path,
) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    path = classification_recipe(tmp_path, "evaluation: {slices: [lang]}\n")
    result = run_cli(
        "finetune", path, "--json", "--fail-under", "f1@lang=de=1.01", "--fail-under", "f1@lang=xx=0.5"
    )
    assert result.code == 1, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())["metrics"]
    report = metrics["slices"]["lang"]
    data = {r["id"]: r for r in read_jsonl(tmp_path / "test.jsonl")}
    predictions = read_jsonl(tmp_path / "run" / "predictions.jsonl")
    assert sorted(p["id"] for p in predictions) == sorted(data)  # the data's own ids
    for lang in ("de", "en"):
        rows = [p for p in predictions if data[p["id"]]["lang"] == lang]
        gold, pred = [r["gold"] for r in rows], [r["prediction"] for r in rows]
        stats = report["values"][lang]
        assert stats["n"] == len(rows) > 0
        assert stats["accuracy"] == pytest.approx(accuracy_score(gold, pred))
        assert stats["f1"] == pytest.approx(
            f1_score(gold, pred, labels=["neg", "pos"], average="macro", zero_division=0)
        )
    f1 = {v: s["f1"] for v, s in report["values"].items()}
    assert report["gap"]["f1"] == pytest.approx(abs(f1["de"] - f1["en"]))
    n_de = report["values"]["de"]["n"]
    assert (
        f"fail-under: f1 of slice lang=de ({n_de} rows) of the test split is {f1['de']:.4f}, below 1.01"
        in result.stderr
    )
    assert (
        "f1 of slice lang=xx (no scored row has lang=xx) of the test split was not measured" in result.stderr
    )
    assert result.json()["gate"]["passed"] is False
    assert "Slices by `lang`" in (tmp_path / "run" / "report.md").read_text()


def test_slices_on_a_causal_lm_recipe_are_refused(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "completion": "b", "lang": "en"}])
    path = write(
        tmp_path / "sft.yaml",
        """kind: finetune
task: causal_lm
model: {scratch: {architecture: llama}}
data: {train: train.jsonl}
evaluation: {slices: [lang]}
""",
    )
    assert_bad_input(invoke("validate", str(path)), "evaluation.slices", "causal_lm")
