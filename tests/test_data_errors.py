"""Every bad data file is exit 2 naming the file (and line), with errors that teach: all bad rows
at once, the file's columns and the nearest one for a wrong `columns` mapping, "did you mean" for
a label, and a skip hint only where skipping would help. `data.skip_bad_rows` skips and counts
unreadable rows and rows with an unknown label; it never hides a bad file.

Runs go through the CLI in this process (typer's runner: same verbs and exit codes); one runs
`python -m llmtune` to show that no traceback reaches the user.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import Result, assert_bad_input, run_cli, write, write_jsonl
from typer.testing import CliRunner

from llmtune.cli import app

SCRATCH = {"scratch": {"architecture": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2}}
SKIP_HINT = "data.skip_bad_rows: true"


def llmtune(*args: str | Path) -> Result:
    """The CLI in this process."""
    out = CliRunner().invoke(app, [str(a) for a in args])
    return Result(out.exit_code, out.stdout, out.stderr)


def rows(n: int, label: str | None = None) -> list[dict]:
    return [{"review": f"review {i}", "sentiment": label or ("pos" if i % 2 else "neg")} for i in range(n)]


def finetune(tmp_path: Path, train: str, top: dict | None = None, **data: object) -> Result:
    """`llmtune finetune --dry-run --json` of a tiny classifier reading `train` (review ->
    sentiment), with `top` recipe keys and `data` keys added; checks that nothing was written."""
    recipe = {
        "kind": "finetune",
        "task": "classification",
        "model": SCRATCH,
        "method": {"type": "full"},
        "data": {"train": train, "columns": {"text": "review", "label": "sentiment"}, **data},
        "training": {"max_steps": 2, "batch_size": 4},
        "output": {"dir": "out"},
        **(top or {}),
    }
    result = llmtune("finetune", write(tmp_path / "r.yaml", yaml.safe_dump(recipe)), "--dry-run", "--json")
    assert not (tmp_path / "out").exists()
    return result


def jsonl_bytes(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


GOOD = json.dumps(rows(1)[0]).encode()
DEEP = b"[" * 100_000 + b"]" * 100_000


def parquet_bytes() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows(6)), buffer)
    return buffer.getvalue()


# file name, its bytes, the line named (None: the file alone), what the message says
BAD_FILES = {
    "non-UTF-8 byte in a CSV": (
        "t.csv",
        b"review,sentiment\ngood,pos\ncaf\xe9 au lait,neg\n",
        3,
        "not UTF-8 text: byte 0xe9 at column 4",
    ),
    "non-UTF-8 byte in a JSON list": (
        "t.json",
        b'[\n  {"review": "ok", "sentiment": "pos"},\n  {"review": "caf\xe9", "sentiment": "neg"}\n]',
        3,
        "not UTF-8 text",
    ),
    "JSON nested 100k deep": ("t.json", DEEP, None, "nested too deeply"),
    "CSV field over the csv limit": (
        "t.csv",
        b'review,sentiment\ngood,pos\n"never closed,neg\n' + b"x" * 200_000 + b"\nbad,neg\n",
        3,
        "longer than the csv module's limit of 131072 characters",
    ),
    "corrupt parquet": ("t.parquet", parquet_bytes()[:-40], None, "not a readable parquet file"),
    "empty jsonl": ("t.jsonl", b"", None, "the file is empty"),
    "empty parquet": ("t.parquet", b"", None, "the file is empty"),
    ".json object, not a list": ("t.json", b'{"review": "x", "sentiment": "pos"}', 1, "expected a JSON list"),
    ".json list of numbers": ("t.json", b"[1, 2, 3]", 1, "expected a JSON object per row, got a number"),
    "invalid .json": ("t.json", b'[\n  {"review": "x",\n   "sentiment": pos}\n]', 3, "invalid JSON"),
    "CSV header naming a column twice": ("t.csv", b"review,review,sentiment\na,b,pos\n", 1, "twice"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_exit_2_naming_file_and_line(tmp_path: Path, case: str) -> None:
    name, content, line, fragment = BAD_FILES[case]
    (tmp_path / name).write_bytes(content)
    where = f"{tmp_path / name}:{line}:" if line else f"{tmp_path / name}:"
    assert_bad_input(finetune(tmp_path, name), where, fragment)


@pytest.mark.parametrize("case", ["non-UTF-8 byte in a CSV", "JSON nested 100k deep", "corrupt parquet"])
def test_skip_bad_rows_never_hides_a_bad_file(tmp_path: Path, case: str) -> None:
    name, content, _, fragment = BAD_FILES[case]
    (tmp_path / name).write_bytes(content)
    assert_bad_input(finetune(tmp_path, name, skip_bad_rows=True), str(tmp_path / name), fragment)


BAD_ROWS = {
    "non-UTF-8 byte": b'{"review": "caf\xe9", "sentiment": "neg"}',
    "nested 100k deep": DEEP,
    "not an object": b"[1, 2]",
    "a string": b'"review"',
    "invalid JSON": b'{"review": "x", ',
    "label missing": b'{"review": "x"}',
}


def test_every_bad_row_is_reported_at_once_and_skip_bad_rows_counts_them(tmp_path: Path) -> None:
    lines = [json.dumps(row).encode() for row in rows(6)]
    for i, line in enumerate(BAD_ROWS.values()):
        lines.insert(2 * i + 1, line)
    (tmp_path / "t.jsonl").write_bytes(jsonl_bytes(*lines))
    result = finetune(tmp_path, "t.jsonl")
    bad_lines = [i + 1 for i, line in enumerate(lines) if line in BAD_ROWS.values()]
    assert bad_lines == [2, 4, 6, 8, 10, 12]
    assert_bad_input(
        result,
        *[f"{tmp_path / 't.jsonl'}:{n}:" for n in bad_lines],
        "byte 0xe9",
        "nested too deeply",
        "got a list",
        "got a string",
        "invalid JSON",
        "row has no 'sentiment' (mapped to label)",
        f"6 bad row(s): fix these rows, or set {SKIP_HINT}",
    )
    skipped = finetune(tmp_path, "t.jsonl", skip_bad_rows=True)
    assert skipped.code == 0, skipped.stderr
    plan = skipped.json()
    assert (plan["skipped_rows"], plan["rows"]["train"]) == (6, 6)


def test_many_identical_bad_rows_are_one_line_with_a_count(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_bytes(jsonl_bytes(GOOD, *[b"{oops"] * 45))
    result = finetune(tmp_path, "t.jsonl")
    assert_bad_input(
        result, f"{tmp_path / 't.jsonl'}:2: invalid JSON", "(45 rows: line 2, line 3, line 4, ...)"
    )
    assert result.stderr.count("\n") == 2 and "45 bad row(s)" in result.stderr


def test_many_different_bad_rows_show_twenty_then_a_count(tmp_path: Path) -> None:
    lines = [json.dumps({"review": f"r{i}", "sentiment": f"label{i}"}).encode() for i in range(45)]
    (tmp_path / "t.jsonl").write_bytes(jsonl_bytes(GOOD, *lines))
    result = finetune(tmp_path, "t.jsonl", {"labels": ["pos", "neg"]})
    assert_bad_input(result, f"{tmp_path / 't.jsonl'}:21:", "... and 25 more", "45 bad row(s)")
    assert f"{tmp_path / 't.jsonl'}:22:" not in result.stderr


def test_bad_rows_of_several_files_are_reported_together(tmp_path: Path) -> None:
    write(tmp_path / "parts" / "a.jsonl", json.dumps(rows(1)[0]) + "\nnot json\n")
    write(tmp_path / "parts" / "b.jsonl", "also not json\n" + json.dumps(rows(1)[0]) + "\n")
    result = finetune(tmp_path, "parts/*.jsonl")
    assert_bad_input(result, f"{tmp_path / 'parts' / 'a.jsonl'}:2:", f"{tmp_path / 'parts' / 'b.jsonl'}:1:")


@pytest.mark.parametrize(
    ("columns", "fragments"),
    [
        (
            {"review_text": "pos"},
            ["the file's columns are: review_text, sentiment", "did you mean 'review_text'?"],
        ),
        ({"Review": "pos"}, ["did you mean 'Review'?", "(data.columns: {text: Review})"]),
        ({"body": "pos"}, ["the file's columns are: body, sentiment", "data.columns: {text: COLUMN}"]),
    ],
)
def test_wrong_column_mapping_lists_the_columns_and_never_suggests_skipping(
    tmp_path: Path, columns: dict, fragments: list[str]
) -> None:
    ((name, _),) = columns.items()
    write_jsonl(
        tmp_path / "t.jsonl", [{name: f"text {i}", "sentiment": "pos" if i % 2 else "neg"} for i in range(8)]
    )
    for skip in (False, True):  # skipping would skip every row: the mapping is wrong, not the rows
        result = finetune(tmp_path, "t.jsonl", skip_bad_rows=skip)
        assert_bad_input(
            result, f"{tmp_path / 't.jsonl'}:1:", "no row has a column 'review' (mapped to text)", *fragments
        )
        assert "skip_bad_rows" not in result.stderr


def test_a_column_missing_from_some_rows_lists_them_with_the_skip_hint(tmp_path: Path) -> None:
    data = rows(6)
    del data[2]["review"], data[4]["review"]
    write_jsonl(tmp_path / "t.jsonl", data)
    result = finetune(tmp_path, "t.jsonl")
    assert_bad_input(result, "t.jsonl:3: row has no 'review'", "t.jsonl:5: row has no 'review'", SKIP_HINT)


def test_unknown_labels_are_bad_rows_with_did_you_mean(tmp_path: Path) -> None:
    data = rows(8, "billing") + rows(8, "shipping")
    data[3]["sentiment"], data[9]["sentiment"], data[12]["sentiment"] = "Billing", "shiping", "refund"
    write_jsonl(tmp_path / "t.jsonl", data)
    labels = {"labels": ["billing", "shipping"]}
    result = finetune(tmp_path, "t.jsonl", labels)
    assert_bad_input(
        result,
        "t.jsonl:4: label 'Billing' is not in labels ['billing', 'shipping']; did you mean 'billing'?",
        "t.jsonl:10: label 'shiping' is not in labels ['billing', 'shipping']; did you mean 'shipping'?",
        "t.jsonl:13: label 'refund' is not in labels ['billing', 'shipping']",
        f"3 bad row(s): fix these rows, or set {SKIP_HINT}",
    )
    assert "'refund' is not in labels ['billing', 'shipping']; did you mean" not in result.stderr
    skipped = finetune(tmp_path, "t.jsonl", labels, skip_bad_rows=True)
    assert skipped.code == 0, skipped.stderr
    assert (skipped.json()["skipped_rows"], skipped.json()["rows"]["train"]) == (3, 13)


def test_labels_that_fit_no_row_are_refused_even_when_skipping(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "t.jsonl", rows(8))
    result = finetune(tmp_path, "t.jsonl", {"labels": ["positive", "negative"]}, skip_bad_rows=True)
    assert_bad_input(result, "no train row has a label in labels ['positive', 'negative']")
    assert SKIP_HINT not in result.stderr


def test_inferred_labels_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    data = rows(8)
    data[5]["sentiment"] = "Pos"
    write_jsonl(tmp_path / "t.jsonl", data)
    result = finetune(tmp_path, "t.jsonl")
    assert_bad_input(
        result, "t.jsonl:6: label 'Pos' first appears here", "labels 'Pos' and 'pos' differ only in case"
    )


def test_bulk_infer_input_errors_name_the_file_and_suggest_no_recipe_key_it_lacks(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        jsonl_bytes(b'{"id": "a", "text": "x"}', b'{"id": "b", "text": "caf\xe9"}', b"[1]")
    )
    recipe = {
        "kind": "bulk-infer",
        "model": {"scratch": {"architecture": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2}},
        "input": {"path": "in.jsonl", "id_column": "id"},
        "template": "{{ text }}",
        "output": {"path": "out/res.jsonl"},
    }
    result = run_cli("bulk-infer", write(tmp_path / "b.yaml", yaml.safe_dump(recipe)))
    assert_bad_input(
        result,
        f"{tmp_path / 'in.jsonl'}:2: not UTF-8 text",
        f"{tmp_path / 'in.jsonl'}:3: expected a JSON object",
    )
    assert "skip_bad_rows" not in result.stderr  # bulk-infer has no such key
    assert not (tmp_path / "out").exists()


def test_input_files_are_never_written(tmp_path: Path) -> None:
    content = b"review,sentiment\ngood,pos\ncaf\xe9,neg\n"
    (tmp_path / "t.csv").write_bytes(content)
    finetune(tmp_path, "t.csv")
    assert (tmp_path / "t.csv").read_bytes() == content
