"""`llmtune rank`: a person ranks collected outputs, run as users run it (a real subprocess fed a
script on stdin, a pseudo-terminal, real signals). Each answer must be in the file as soon as it
is accepted, every other field and row must stay as it was, and a rerun continues at the first
unranked row.

Tests that talk to a running session wait for the prompt text before answering or signalling
(no time limit: a session that ends early fails the test at once, one that hangs hangs it)."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Result, assert_bad_input, write, write_jsonl

ASK = "? help: "


def candidates(path: Path) -> Path:
    """Three rows to rank: extra fields, non-ASCII text (U+2028 inside a text too), one row
    without an id."""
    return write_jsonl(
        path,
        [
            {
                "id": "r1",
                "prompt": "Question: how do I reset my password?\nAnswer:",
                "responses": [
                    " Use 'forgot password'.",
                    " No.",
                    " Figure it out.",
                    " Ask support, they help.",
                ],
                "ranking": "",
                "meta": {"model": "tiny", "seed": 3},
            },
            {
                "id": "r2",
                "prompt": "Où est ma commande ?",
                "responses": [" Elle arrive\u2028demain.", " ?"],
                "ranking": "",
            },
            {"prompt": "Refund?", "responses": [" Yes, within 30 days.", " no", " maybe"], "ranking": ""},
        ],
    )


def rank(*args: str | Path, script: str = "") -> Result:
    """`llmtune rank ARGS` with `script` as its stdin (a pipe, as in a shell script)."""
    proc = subprocess.run(
        [sys.executable, "-m", "llmtune", "rank", *map(str, args)],
        input=script,
        capture_output=True,
        text=True,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def rows_of(path: Path) -> list[dict]:
    # split on \n only: the file may hold U+2028, which str.splitlines would also split on
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def rankings(path: Path) -> list[str]:
    return [row.get("ranking") for row in rows_of(path)]


def leftovers(folder: Path) -> list[str]:
    """Temp files an interrupted write could have left."""
    return [p.name for p in folder.iterdir() if "tmp" in p.name]


class Screen:
    """What a session wrote on its stdout (a pipe or a pty), read until a marker shows up."""

    def __init__(self, fd: int) -> None:
        self.fd, self.text = fd, ""

    def wait_for(self, marker: str, after: int = 0) -> int:
        """Read until `marker` appears at or after `after`; return where it ends."""
        while marker not in self.text[after:]:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # a pty whose other side has closed
                chunk = b""
            assert chunk, f"the session ended before {marker!r}:\n{self.text[-3000:]}"
            self.text += chunk.decode(errors="replace")
        return self.text.index(marker, after) + len(marker)


def start(tmp_path: Path, *args: str | Path) -> tuple[subprocess.Popen, Screen, Path]:
    """A session in the background, answers written to its stdin pipe; stderr goes to a file."""
    log = tmp_path / "stderr.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "rank", *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
    )
    return proc, Screen(proc.stdout.fileno()), log


def answer(proc: subprocess.Popen, line: str) -> None:
    proc.stdin.write(f"{line}\n".encode())
    proc.stdin.flush()


def test_a_script_ranks_every_row_and_keeps_every_other_field(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    path.chmod(0o640)
    before = rows_of(path)
    result = rank(path, script="c>b=d>a\nB > A\nA = C > B\n")
    assert result.code == 0, result.stderr
    assert "ranked 3 now; 3 of 3 rows ranked; 0 left" in result.stderr
    after = rows_of(path)
    assert [row["ranking"] for row in after] == ["C > B = D > A", "B > A", "A = C > B"]  # canonical form
    assert [{**row, "ranking": ""} for row in after] == before  # nothing else changed
    assert list(after[0]) == list(before[0])  # key order kept
    assert "id" not in after[2]  # a row without an id gets none
    assert "Elle arrive\u2028demain." in path.read_text(encoding="utf-8")  # written as text, not \\u escapes
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)  # the file keeps its permission bits
    assert not leftovers(tmp_path)
    screen = result.stdout
    assert "[0 of 3 ranked, 0 skipped] r1" in screen and "[2 of 3 ranked, 0 skipped] line 3" in screen
    assert "A) Use 'forgot password'." in screen and "D) Ask support, they help." in screen


def test_a_malformed_ranking_is_refused_with_its_reason_and_the_next_line_is_taken(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    result = rank(path, script="C > E > B > A\nC > B > A\nD > C > B > A\n")
    assert result.code == 0, result.stderr
    assert "not saved: no response E: the responses are A..D" in result.stderr
    assert "not saved: D not ranked" in result.stderr
    assert rankings(path) == ["D > C > B > A", "", ""]
    assert "ranked 1 now; 1 of 3 rows ranked; 2 left" in result.stderr


def test_skip_leaves_a_row_unranked_and_a_rerun_offers_it_first(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    result = rank(path, script="s\nA > B\n")
    assert result.code == 0, result.stderr
    assert rankings(path) == ["", "A > B", ""]
    again = rank(path, script="q\n")
    assert again.code == 0, again.stderr
    assert "[1 of 3 ranked, 0 skipped] r1" in again.stdout and "r2" not in again.stdout
    assert rankings(path) == ["", "A > B", ""]


def test_back_shows_the_previous_answer_and_a_new_one_replaces_it(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    result = rank(path, script="A > B > C > D\nb\nD > C > B > A\n\ns\nb\n\n")
    assert result.code == 0, result.stderr
    assert "current ranking: A > B > C > D" in result.stdout
    assert "type a ranking, or s to skip" in result.stderr  # Enter on an unranked row saves nothing
    assert rankings(path) == ["D > C > B > A", "", ""]
    assert "ranked 1 now" in result.stderr  # one row answered twice counts once
    kept = rank(path, "--all", script="\nq\n")  # Enter keeps a row's ranking
    assert "[1 of 3 ranked, 0 skipped] r1" in kept.stdout and "current ranking: D > C > B > A" in kept.stdout
    assert rankings(path) == ["D > C > B > A", "", ""]


def test_the_end_of_a_script_keeps_the_answers_and_a_rerun_continues(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    first = rank(path, script="A > B = C > D\n")
    assert first.code == 0, first.stderr
    assert "ranked 1 now; 1 of 3 rows ranked; 2 left" in first.stderr
    second = rank(path, script="B > A\nC > B > A\n")
    assert second.code == 0, second.stderr
    assert "[1 of 3 ranked, 0 skipped] r2" in second.stdout
    assert rankings(path) == ["A > B = C > D", "B > A", "C > B > A"]
    done = rank(path, script="")
    assert done.code == 0 and "every row is ranked already" in done.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_waiting_keeps_the_saved_answers(tmp_path: Path, sig: int, code: int) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    proc, screen, log = start(tmp_path, path)
    screen.wait_for(ASK)
    answer(proc, "B > A > C > D")
    screen.wait_for(ASK, screen.wait_for("[1 of 3 ranked, 0 skipped] r2"))
    proc.send_signal(sig)
    assert proc.wait() == code, log.read_text()
    if sig == signal.SIGINT:  # Ctrl-C is how people stop: a quit, not an error
        assert "quit: every answer given is saved" in log.read_text() and "error:" not in log.read_text()
    else:
        assert "error: interrupted by SIGTERM; every answer given is saved" in log.read_text()
    assert "Traceback" not in log.read_text()
    assert rankings(path) == ["B > A > C > D", "", ""]
    assert not leftovers(tmp_path)
    rerun = rank(path, script="q\n")
    assert "[1 of 3 ranked, 0 skipped] r2" in rerun.stdout


def test_output_leaves_the_input_byte_identical_and_a_rerun_reads_the_output(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    original = path.read_bytes()
    out = tmp_path / "ranked" / "out.jsonl"
    first = rank(path, "--output", out, script="A > B > C > D\n")
    assert first.code == 0, first.stderr
    assert path.read_bytes() == original
    assert rankings(out) == ["A > B > C > D", "", ""]
    second = rank(path, "--output", out, script="B > A\n")
    assert "[1 of 3 ranked, 0 skipped] r2" in second.stdout
    assert rankings(out) == ["A > B > C > D", "B > A", ""]
    assert path.read_bytes() == original
    assert [{**r, "ranking": ""} for r in rows_of(out)] == rows_of(path)


def test_output_is_not_created_when_nothing_is_answered(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    result = rank(path, "--output", tmp_path / "out.jsonl", script="s\nq\n")
    assert result.code == 0, result.stderr
    assert not (tmp_path / "out.jsonl").exists()


GOOD = {"id": "a", "prompt": "P", "responses": ["x", "y"], "ranking": ""}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object per row, got a list"),
        ('{"id": "b", "responses": ["x", "y"]}', "row has no 'prompt'"),
        (
            '{"id": "b", "prompt": "P", "responses": ["x"]}',
            "'responses' has 1 texts; a ranking needs 2 to 26",
        ),
        ('{"id": "b", "prompt": "P", "responses": "xy"}', "'responses' must be a list of texts"),
        (
            '{"id": "b", "prompt": "P", "responses": ["x", "y"], "ranking": "A > C"}',
            "ranking 'A > C': no response C",
        ),
        ('{"id": "b", "prompt": "P", "responses": ["x", "y"], "ranking": 2}', "'ranking' must be a text"),
        ('{"id": "a", "prompt": "P", "responses": ["x", "y"]}', "id 'a' is also the id of line 1"),
    ],
)
def test_a_bad_file_is_refused_with_file_and_line_and_left_untouched(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = write(tmp_path / "cands.jsonl", json.dumps(GOOD) + "\n" + line + "\n")
    original = path.read_bytes()
    result = rank(path, script="A > B\n")
    assert_bad_input(result, f"{path}:2: {reason}")
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cands.jsonl"]  # no lock file, no temp file


def test_an_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    assert_bad_input(rank(write(tmp_path / "empty.jsonl", "\n"), script=""), "no rows to rank")
    assert_bad_input(rank(tmp_path / "nothing.jsonl", script=""), "file not found")
    assert not (tmp_path / "nothing.jsonl").exists()


def test_a_second_session_on_the_same_file_exits_75(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    proc, screen, log = start(tmp_path, path)
    screen.wait_for(ASK)
    second = rank(path, script="A > B > C > D\n")
    assert second.code == 75, second.stderr
    assert "held by" in second.stderr
    answer(proc, "q")
    assert proc.wait() == 0, log.read_text()
    assert rankings(path) == ["", "", ""]


def test_a_file_changed_by_another_program_is_not_overwritten(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    proc, screen, log = start(tmp_path, path)
    screen.wait_for(ASK)
    changed = path.read_text(encoding="utf-8") + json.dumps({**GOOD, "id": "new"}) + "\n"
    write(path, changed)  # e.g. collect appending rows while someone ranks
    answer(proc, "A > B > C > D")
    assert proc.wait() == 75, log.read_text()
    assert "changed by another program" in log.read_text()
    assert path.read_text(encoding="utf-8") == changed


def test_a_terminal_session_edits_lines_recalls_answers_and_quits_on_ctrl_c(tmp_path: Path) -> None:
    path = candidates(tmp_path / "cands.jsonl")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "rank", str(path)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1"},  # the test's pty answers no cursor query
        start_new_session=True,
    )
    os.close(terminal)
    try:
        screen = Screen(controller)
        screen.wait_for("? help:", screen.wait_for("[0 of 3 ranked, 0 skipped] r1"))
        os.write(controller, b"d > a = b > c\r")
        at = screen.wait_for("? help:", screen.wait_for("[1 of 3 ranked, 0 skipped] r2"))
        os.write(controller, b"b > x\r")  # refused: there is no X
        at = screen.wait_for("? help:", screen.wait_for("not saved", at))
        os.write(controller, b"\x1b[A")  # Up: the refused answer comes back to be edited
        screen.wait_for("b > x", at)
        os.write(controller, b"\x7fa\r")  # Backspace, a, Enter
        screen.wait_for("? help:", screen.wait_for("[2 of 3 ranked, 0 skipped] line 3"))
        os.write(controller, b"\x03")  # Ctrl-C
        assert proc.wait() == 130, screen.text
        screen.wait_for("quit: every answer given is saved")
    finally:
        os.close(controller)
    assert "saved: D > A = B > C" in screen.text and "^[[A" not in screen.text
    assert "error:" not in screen.text and "Traceback" not in screen.text
    assert rankings(path) == ["D > A = B > C", "B > A", ""]


def test_rank_does_not_import_torch() -> None:
    code = "import sys, llmtune.cli, llmtune.jobs.rank.session; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
