"""`llmtune rank` with several people (--annotator, --stats), data that tries to take over the
screen, and the environments that break saving (read-only folder, closed stdin, a full disk).
Each runs the real CLI on real files."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Result, assert_bad_input, write_jsonl

ROWS = [
    {"id": "p1", "prompt": "P1", "responses": ["x", "y", "z"], "ranking": ""},
    {"id": "p2", "prompt": "P2", "responses": ["u", "v"], "ranking": "", "rankings": {"bob": "B > A"}},
]


def rank(*args: str | Path, script: str = "", **popen: object) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "llmtune", "rank", *map(str, args)],
        input=script,
        capture_output=True,
        text=True,
        **popen,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_each_annotator_keeps_their_own_ranking_and_all_shows_only_theirs(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    alice = rank(path, "--annotator", "alice", script="a>b>c\nt\n")
    assert alice.code == 0, alice.stderr
    assert "[0 of 2 ranked, 0 skipped] p1" in alice.stdout  # bob's p2 is not alice's
    rows = rows_of(path)
    assert [r["rankings"] for r in rows] == [{"alice": "A > B > C"}, {"bob": "B > A", "alice": "A = B"}]
    assert [r["ranking"] for r in rows] == ["", ""]  # the single field is not touched
    bob = rank(path, "--annotator", "bob", "--all", script="s\n\n")
    assert "current ranking" not in bob.stdout.split("p2")[0]  # p1: bob has none, alice's is not shown
    assert "current ranking: B > A" in bob.stdout
    assert rank(path, "--annotator", "bad\x1bname", script="").code == 2


def test_stats_prints_counts_agreement_and_the_most_disagreed_prompts(tmp_path: Path) -> None:
    rows = [
        {
            "id": "same",
            "prompt": "P",
            "responses": ["a", "b", "c"],
            "rankings": {"al": "A > B > C", "bo": "A > B > C"},
        },
        {
            "id": "split",
            "prompt": "P",
            "responses": ["a", "b", "c"],
            "rankings": {"al": "A > B > C", "bo": "C > B > A"},
        },
        {"id": "solo", "prompt": "P", "responses": ["a", "b"], "ranking": "A > B"},
    ]
    result = rank(write_jsonl(tmp_path / "c.jsonl", rows), "--stats")
    assert result.code == 0, result.stderr
    out = result.stdout
    assert "3 rows; 3 ranked by someone, 2 by two or more" in out
    assert "al" in out and "(ranking)" in out
    assert "(6 comparisons)" in out and "pairwise agreement    0.500" in out  # 3 of 3 + 0 of 3
    assert "Krippendorff's alpha" in out
    assert out.split("disagree on most")[1].split() == [
        "(pairwise",
        "agreement,",
        "annotators):",
        "split",
        "0.00",
        "(2)",
    ]


def test_escape_sequences_in_the_data_are_shown_not_obeyed(tmp_path: Path) -> None:
    hostile = "\x1b[2K\rA) trust me\x1b]0;title\x07\x1b]52;c;ZXZpbA==\x07 [bold]kept[/bold]"
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"id": "i\x1b[31m", "prompt": "P\x1b[2J", "responses": [hostile, "ok"], "ranking": ""}],
    )
    result = rank(path, script="b>a\n")
    assert result.code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\r" not in result.stdout
    assert "A) \\x1b[2K\\x0dA) trust me\\x1b]0;title\\x07" in result.stdout
    assert "[bold]kept[/bold]" in result.stdout  # the user's own brackets, not rich markup
    assert "i\\x1b[31m" in result.stdout and "P\\x1b[2J" in result.stdout


def test_a_lone_surrogate_is_shown_and_saved_losslessly(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"id": "s", "prompt": "P", "responses": ["half \\ud83d emoji", "ok"], "ranking": "", "x": "\\udc00"}\n'
        + json.dumps(ROWS[0], ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    result = rank(path, script="b>a\nc>b>a\n")
    assert result.code == 0, result.stderr
    assert "half \\ud83d emoji" in result.stdout
    rows = rows_of(path)
    assert rows[0]["responses"][0] == "half \ud83d emoji" and rows[0]["x"] == "\udc00"
    assert [r["ranking"] for r in rows] == ["B > A", "C > B > A"]


def test_identical_texts_ranked_apart_are_refused_and_a_tie_is_taken(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "P", "responses": ["same", "same", "other"]}])
    result = rank(path, script="a>b>c\nt\n")
    assert "not saved: A and B are the same text but ranked apart: rank them equal (A = B)" in result.stderr
    assert rows_of(path)[0]["ranking"] == "A = B = C"


def test_a_closed_stdin_is_one_error_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    before = path.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "llmtune", "rank", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0  # an empty stdin is the end of input: a normal quit
    closed = subprocess.run(
        f"{sys.executable} -m llmtune rank {path} <&-", shell=True, capture_output=True, text=True
    )
    assert closed.returncode == 2 and closed.stderr.count("error:") == 1, closed.stderr
    assert "stdin is closed" in closed.stderr and "Traceback" not in closed.stderr
    assert path.read_bytes() == before


def test_a_full_disk_is_one_error_line_and_the_file_is_untouched(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    before = path.read_bytes()
    size = len(before) + 2  # the rewrite needs more than that: it fails like a full disk (EFBIG)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    result = rank(path, script="a>b>c\n", preexec_fn=small_files)
    assert_bad_input(
        result, f"{path}: cannot save the answer: File too large (the answers saved before are in it)"
    )
    assert result.stderr.count("error:") == 1
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


@pytest.mark.skipif(
    shutil.which("unshare") is None, reason="needs unshare (util-linux) for a read-only mount"
)
def test_a_read_only_folder_is_refused_before_anything_is_shown(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    path = write_jsonl(folder / "c.jsonl", ROWS)
    inner = f"mount --bind -o ro {folder} {folder} && exec {sys.executable} -m llmtune rank {path}"
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", inner], input="a>b>c\n", capture_output=True, text=True
    )
    if "mount" in proc.stderr and proc.returncode != 2:
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and "--output" in proc.stderr and "read-only" in proc.stderr
    assert proc.stdout == ""  # nothing was shown to rank
    out = tmp_path / "out.jsonl"
    inner = (
        f"mount --bind -o ro {folder} {folder} && exec {sys.executable} -m llmtune rank {path} --output {out}"
    )
    saved = subprocess.run(
        ["unshare", "-rm", "sh", "-c", inner], input="a>b>c\n", capture_output=True, text=True
    )
    assert saved.returncode == 0, saved.stderr
    assert rows_of(out)[0]["ranking"] == "A > B > C"
