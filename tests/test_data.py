"""Data loading: every file format, column mapping, splits, limits and bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write, write_jsonl

from llmtune.data.splits import load_splits
from llmtune.errors import BadInput
from llmtune.recipes import load_recipe

ROWS = [{"review": f"review number {i}", "sentiment": "pos" if i % 3 else "neg"} for i in range(60)]


def recipe_for(tmp_path: Path, data_yaml: str):
    text = "kind: finetune\nmodel: {path: m}\ndata:\n" + data_yaml
    return load_recipe(write(tmp_path / "r.yaml", text))


def splits(tmp_path: Path, data_yaml: str, **kw):
    recipe = recipe_for(tmp_path, data_yaml)
    return load_splits(recipe, recipe.data, required=("text", "label"), label_field="label", **kw)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"train{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, ROWS)
    elif suffix == ".json":
        write(path, json.dumps(ROWS))
    elif suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        write(
            path, f"review{sep}sentiment\n" + "".join(f"{r['review']}{sep}{r['sentiment']}\n" for r in ROWS)
        )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    out = splits(tmp_path, f"  train: train{suffix}\n  columns: {{text: review, label: sentiment}}\n")
    assert [r["text"] for r in out.train.rows] == [r["review"] for r in ROWS]
    assert [r["label"] for r in out.train.rows] == [r["sentiment"] for r in ROWS]


def test_txt_glob_list_and_save_to_disk(tmp_path: Path) -> None:
    import datasets

    write(tmp_path / "a.txt", "first line\n\nsecond line\n")
    write(tmp_path / "parts" / "b1.jsonl", '{"text": "x", "label": "a"}\n')
    write(tmp_path / "parts" / "b2.jsonl", '{"text": "y", "label": "b"}\n')
    datasets.Dataset.from_list([{"text": "z", "label": "a"}]).save_to_disk(str(tmp_path / "saved"))
    recipe = recipe_for(tmp_path, "  train: [parts/*.jsonl, saved]\n  test: a.txt\n")
    out = load_splits(recipe, recipe.data, required=("text",))
    assert [r["text"] for r in out.train.rows] == ["x", "y", "z"]
    assert [r["text"] for r in out.test.rows] == ["first line", "second line"]


def test_split_is_stratified_seeded_and_limit_applies(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "t.jsonl", ROWS)
    yaml = "  train: t.jsonl\n  columns: {text: review, label: sentiment}\n  split: {validation: 0.2, test: 0.3, seed: 7}\n"
    a = splits(tmp_path, yaml)
    b = splits(tmp_path, yaml)
    assert a.counts() == {"train": 30, "validation": 12, "test": 18}
    assert [r["text"] for r in a.test.rows] == [r["text"] for r in b.test.rows]
    all_texts = [r["text"] for s in (a.train, a.validation, a.test) for r in s.rows]
    assert sorted(all_texts) == sorted(r["review"] for r in ROWS)  # nothing lost or duplicated
    share = sum(r["label"] == "neg" for r in a.test.rows) / len(a.test)
    assert abs(share - 20 / 60) < 0.06  # stratified
    limited = splits(tmp_path, yaml + "  limit: 5\n")
    assert limited.counts() == {"train": 5, "validation": 5, "test": 5}


def test_corrupt_jsonl_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", '{"review": "ok", "sentiment": "pos"}\n{"review": "broken\n')
    with pytest.raises(BadInput, match=rf"{path}:2: invalid JSON"):
        splits(tmp_path, "  train: t.jsonl\n  columns: {text: review, label: sentiment}\n")


def test_missing_field_reported_and_skip_bad_rows_counts(tmp_path: Path) -> None:
    write(
        tmp_path / "t.jsonl",
        '{"review": "a", "sentiment": "pos"}\n{"review": "b"}\nnot json\n'
        '{"review": "c", "sentiment": "neg"}\n',
    )
    cols = "  train: t.jsonl\n  columns: {text: review, label: sentiment}\n"
    with pytest.raises(BadInput, match=r"t.jsonl:2: row has no 'sentiment' \(mapped to label\)"):
        splits(tmp_path, cols)
    out = splits(tmp_path, cols + "  skip_bad_rows: true\n")
    assert [r["text"] for r in out.train.rows] == ["a", "c"]
    assert out.train.skipped == 2


def test_missing_file_and_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="data file not found"):
        splits(tmp_path, "  train: nope.jsonl\n")
    with pytest.raises(BadInput, match="no file matches"):
        splits(tmp_path, "  train: 'nope/*.jsonl'\n")
    write(tmp_path / "empty.jsonl", "\n")
    with pytest.raises(BadInput, match="no usable rows"):
        splits(tmp_path, "  train: empty.jsonl\n")
