"""The first hour, round 2 (issue 26): a starter that fits the data (`init`, `--full`, `--from`),
model selection that can be trusted on a small validation split, errors that help and do not
flood, and output a person can read (console, report.md, `env`, `--help`, `schema`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_bad_input, run_cli, write
from test_first_hour import tickets

from llmtune.errors import BadInput
from llmtune.recipes import load_recipe

LABELS = "[billing, bug, feature-request]"


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# -- item 3: a starter that fits the data ------------------------------------------------------


def test_init_writes_a_short_starter_named_after_its_file_with_a_schema_next_to_it(tmp_path: Path) -> None:
    path = tmp_path / "support" / "tickets.yaml"
    result = run_cli("init", "finetune", path)
    assert result.code == 0, result.stderr
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=llmtune-finetune.schema.json\n")
    schema = json.loads((path.parent / "llmtune-finetune.schema.json").read_text())
    assert list(schema)[0] != "$defs" and "training" in schema["properties"]
    keys = [line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert keys == ["kind", "task", "model", "labels", "method", "data", "training"]
    assert "distributed" not in text and "deepspeed" not in text and len(text.splitlines()) < 90
    assert load_recipe(path).name == "tickets"  # no name: the file's stem names the run
    full = run_cli("init", "finetune", "--full").stdout
    assert "\ndistributed:" in full and "\nname: null" in full and len(full.splitlines()) > 200


def test_init_from_a_csv_picks_columns_labels_task_and_a_split_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    tickets(tmp_path / "data" / "tickets.csv")
    path = tmp_path / "tickets.yaml"
    result = run_cli("init", "finetune", path, "--from", tmp_path / "data" / "tickets.csv")
    assert result.code == 0, result.stderr
    for said in ("label: 'category' (its name)", "text: 'body' (its name)", "id: 'ticket_id'"):
        assert said in result.stderr, said
    assert "labels: billing (20), bug (20), feature-request (20)" in result.stderr
    assert "no validation split" in result.stderr  # 10% of 60 rows is under 30
    recipe = load_recipe(path)
    assert recipe.data.train == "data/tickets.csv"  # as written: relative to the recipe
    assert recipe.data.columns == {"id": "ticket_id", "text": "body", "label": "category"}
    assert recipe.labels == ["billing", "bug", "feature-request"] and recipe.task == "classification"
    assert recipe.data.split.validation == 0 and recipe.data.split.test == 0.2


def test_from_suggests_regression_sft_and_warns_about_tiny_classes(tmp_path: Path) -> None:
    from llmtune.data.profile import profile_file

    scores = write_csv(
        tmp_path / "s.csv",
        ["review_id", "comment", "stars"],
        [[i, f"text {i}", i % 17 / 4] for i in range(40)],
    )
    profile = profile_file(scores)
    assert profile.task == "regression" and profile.mapping == {
        "id": "review_id",
        "label": "stars",
        "text": "comment",
    }
    sft = write_csv(tmp_path / "q.csv", ["question", "answer"], [["2+2?", "4"], ["3+3?", "6"]])
    assert profile_file(sft).task == "causal_lm" and profile_file(sft).mapping == {
        "prompt": "question",
        "completion": "answer",
    }
    rows = [[f"a long message number {i}", "spam" if i < 3 else "ham"] for i in range(40)]
    tiny = profile_file(write_csv(tmp_path / "t.csv", ["msg", "kind"], rows))
    assert tiny.labels == {"ham": 37, "spam": 3} and tiny.mapping["text"] == "msg"
    assert any("tiny classes: 'spam' (3 rows)" in w for w in tiny.warnings)


def test_from_fits_the_prompt_eval_and_bulk_infer_starters(tmp_path: Path) -> None:
    from llmtune.jobs.init.from_data import example_from_data
    from llmtune.recipes.starter import starter_for

    tickets(tmp_path / "tickets.csv")
    recipes = {}
    for kind in ("prompt-eval", "bulk-infer"):
        path = tmp_path / f"{kind}.yaml"
        example, said = example_from_data(kind, tmp_path / "tickets.csv", path)
        recipes[kind] = load_recipe(write(path, starter_for(kind, example=example)))
        assert any("label: 'category'" in line for line in said)
    evaluation, bulk = recipes["prompt-eval"], recipes["bulk-infer"]
    assert evaluation.data.test == "tickets.csv" and evaluation.labels == yaml.safe_load(LABELS)
    assert evaluation.data.columns == {"id": "ticket_id", "text": "body", "label": "category"}
    assert bulk.input.path == "tickets.csv" and bulk.input.id_column == "ticket_id"
    assert bulk.input.columns == {"text": "body"}
    with pytest.raises(BadInput, match="--from reads data for"):
        example_from_data("rlhf", tmp_path / "tickets.csv", None)


def test_prompt_eval_starter_runs_offline() -> None:
    text = run_cli("init", "prompt-eval").stdout
    models = yaml.safe_load(text)["models"]
    assert all("scratch" in m for m in models.values())  # no download needed
    assert "# or:" in text and "Qwen/Qwen2.5-0.5B-Instruct" in text  # the real model, commented


# -- item 5: errors that help and do not flood --------------------------------------------------


def recipe_for(tmp_path: Path, **data: object) -> Path:
    tickets(tmp_path / "tickets.csv")
    columns = data.pop("columns", {"text": "body", "label": "category"})
    labels = data.pop("labels", LABELS)
    body = {
        "kind": "finetune",
        "model": {"scratch": {"architecture": "bert", "hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "labels": yaml.safe_load(str(labels)),
        "data": {"train": "tickets.csv", "columns": columns, **data},
        "output": {"dir": "run"},
    }
    return write(tmp_path / "r.yaml", yaml.safe_dump(body))


def read(path: Path) -> str:
    from llmtune.jobs.finetune.classification import read_data

    recipe = load_recipe(path)
    with pytest.raises(BadInput) as caught:
        read_data(recipe, None)
    return str(caught.value)


def test_a_typo_in_labels_is_one_grouped_line_and_the_hint_is_to_fix_labels(tmp_path: Path) -> None:
    message = read(recipe_for(tmp_path, labels="[billing, bgu, feature-request]"))
    lines = message.splitlines()
    assert len(lines) == 2, message  # one grouped problem, one hint
    assert "label 'bug' is not in labels" in lines[0] and "(20 rows: line 3, line 6, line 9, ...)" in lines[0]
    assert "change 'bgu' to 'bug' in labels" in lines[1]
    assert "skip_bad_rows: true" not in message and "would drop the whole class" in lines[1]


def test_a_few_bad_label_rows_still_suggest_skipping_them(tmp_path: Path) -> None:
    recipe = recipe_for(tmp_path)
    text = (tmp_path / "tickets.csv").read_text().replace(",billing\n", ",biling\n", 4)
    (tmp_path / "tickets.csv").write_text(text)
    message = read(recipe)  # a typo in 4 rows beside the 'billing' that other rows use
    assert "did you mean 'billing'?" in message and "(4 rows: line 2, line 5, line 8, ...)" in message
    assert "data.skip_bad_rows: true" in message


def test_every_misspelled_column_is_reported_at_once(tmp_path: Path) -> None:
    message = read(recipe_for(tmp_path, columns={"id": "ticketid", "text": "bdy", "label": "categry"}))
    for column, near in (("bdy", "body"), ("categry", "category"), ("ticketid", "ticket_id")):
        assert f"column {column!r}" in message and f"did you mean {near!r}?" in message, message


def test_dry_run_lists_the_run_directory_problem_with_the_rest(tmp_path: Path) -> None:
    path = recipe_for(tmp_path, columns={"text": "bdy", "label": "category"})
    manifest = {"llmtune": "0", "kind": "finetune", "status": "completed", "started": "2026-01-01"}
    write(tmp_path / "run" / "manifest.json", json.dumps(manifest))
    result = run_cli("finetune", path, "--dry-run")
    assert_bad_input(result, "holds a finished run", "column 'bdy'", "did you mean 'body'?")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["manifest.json"]  # nothing written


# -- item 6: output a person can read ------------------------------------------------------------


def test_help_env_and_schema_read_well(hf_home: Path) -> None:
    top = run_cli("--help").stdout
    verbs = top.split("Commands:")[1]
    assert "..." not in verbs and "…" not in verbs and "with a model card" in verbs
    usage = run_cli("finetune", "--help").stdout
    assert "finetune [OPTIONS] RECIPE" in usage and "{RECIPE}" not in usage
    env = json.loads(run_cli("env", "--json").stdout)
    assert env["hf_cache"] == str(hf_home / "hub") and env["hf_hub_offline"] == "1"
    assert "sentence-transformers/all-MiniLM-L6-v2" in env["cached_models"]
    assert "ray" in env["optional"] or "ray" in env["optional_not_installed"]
    plain = run_cli("env").stdout
    assert "cached_models:\n  - sentence-transformers/all-MiniLM-L6-v2" in plain and "{'" not in plain


def test_selection_rule_and_its_report_lines() -> None:
    from llmtune.recipes.common import EarlyStopping, Training
    from llmtune.runs.selection import early_stop_cause, selection_markdown
    from llmtune.runs.training import selects_checkpoint

    stopping = Training(early_stopping=EarlyStopping(metric="eval_f1"))
    assert not selects_checkpoint(stopping, True, 6) and selects_checkpoint(stopping, True, 30)
    lowered = Training(early_stopping=EarlyStopping(min_rows=5))
    assert selects_checkpoint(lowered, True, 6) and not selects_checkpoint(Training(), False, None)
    fired = {
        "validation_rows": 40,
        "metric": "eval_f1",
        "early_stopping": "fired",
        "stopped_at": 20,
        "planned_steps": 100,
        "kept": "checkpoint-8",
        "best": 1.0,
        "patience": 3,
    }
    assert "- early stopping: fired at step 20 of 100 (eval_f1 did not improve for 3 evaluations)" in (
        selection_markdown(fired)
    )
    assert "- model kept: checkpoint-8, the best eval_f1 (1)" in selection_markdown(fired)
    cause = early_stop_cause(fired)
    assert cause is not None and "raise training.early_stopping.patience" in cause


# -- item 4: the tiny-validation case that used to keep an undertrained checkpoint -----------------


@pytest.mark.slow
def test_six_validation_rows_do_not_choose_the_checkpoint(tmp_path: Path) -> None:
    """60 tickets with the starter's 10% validation carve: 6 rows. Early stopping on them stopped
    at step 20 of 100 and kept checkpoint-8 (test accuracy 0.80 on 30 fresh tickets); now the run
    says the split is too small, trains its full length and keeps the last step."""
    from test_first_hour import BILLING, BUG, FEATURE, THINGS

    tickets(tmp_path / "tickets.csv")
    import random

    rng = random.Random(99)
    kinds = [("billing", BILLING), ("bug", BUG), ("feature-request", FEATURE)]
    rows = [[rng.choice(kinds[i % 3][1]).format(x=rng.choice(THINGS)), kinds[i % 3][0]] for i in range(30)]
    write_csv(tmp_path / "test.csv", ["body", "category"], rows)
    recipe = {
        "kind": "finetune",
        "model": {"path": "sentence-transformers/all-MiniLM-L6-v2"},
        "labels": yaml.safe_load(LABELS),
        "data": {
            "train": "tickets.csv",
            "test": "test.csv",
            "split": {"validation": 0.1, "seed": 42},
            "columns": {"text": "body", "label": "category"},
        },
        "training": {"early_stopping": {"patience": 3, "metric": "eval_f1"}},
        "output": {"dir": "run"},
    }
    path = write(tmp_path / "tickets.yaml", yaml.safe_dump(recipe))
    result = run_cli("finetune", path, "--json")
    assert result.code == 0, result.stderr[-3000:]
    summary = result.json()
    selection = summary["selection"]
    assert selection["validation_rows"] == 6 and selection["early_stopping"].startswith(
        "off: 6 validation rows"
    )
    assert summary["steps"] == summary["planned_steps"] == 100 and selection["kept"] == "the last step (100)"
    assert summary["test"]["accuracy"] >= 0.9, summary["test"]  # 0.80 with the early-stopped checkpoint
    assert "fewer than 30: too few to choose a checkpoint" in result.stderr
    assert not any("too few to learn" in w for w in summary["warnings"])
    # a short console: progress lines, no throughput fields, the final validation once
    assert "samples_per_second" not in result.stderr and "train_runtime" not in result.stderr
    assert sum(" step " in line for line in result.stderr.splitlines()) <= 25
    assert result.stderr.count("validation (model kept: the last step (100))") == 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "- rows: 54 train, 6 validation, 30 test" in report and "{'" not in report
    assert "## Model selection" in report and "- validation rows: 6" in report
    assert "the validation split is too small to choose a checkpoint on" in report
    first = json.loads((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["id"] == "test.csv:2"  # the path as the recipe names it, not /tmp/...
