"""`llmtune chat`: on a real pseudo-terminal (prompt_toolkit's line editor: the up arrow brings
back the last line; Ctrl-C stops a reply mid-generation and the session goes on; Ctrl-D ends
it) and from a pipe (one turn per line, slash commands, /save that never overwrites a file it
did not write). The model is a tiny random llama with a chat template and no end-of-sequence
token, so a reply runs until it is stopped."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import Result, assert_bad_input, write

LONG = "100000"  # max new tokens: only Ctrl-C ends such a reply
PATIENCE = 300.0  # seconds: a safety net against a hang, not a timing assumption


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch llama saved with a chat template; it never emits an end-of-sequence token."""
    import torch

    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    folder = tmp_path_factory.mktemp("chat") / "model"
    spec = ScratchModel(architecture="llama", hidden_size=32, num_layers=1, num_heads=2)
    tokenizer = build_tokenizer(spec, [])
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    torch.manual_seed(0)
    model = build_scratch_model(spec, tokenizer, head="causal_lm", labels=None)
    model.config.eos_token_id = None
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def invoke(*args: str | Path, stdin: str | None = None) -> Result:
    """`llmtune ARGS` in this process, stdin a pipe holding `stdin`."""
    from typer.testing import CliRunner

    from llmtune.cli import app

    out = CliRunner().invoke(app, [str(a) for a in args], input=stdin)
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise out.exception
    return Result(out.exit_code, out.stdout, out.stderr)


class Terminal:
    """`llmtune ARGS` on a pseudo-terminal that is its controlling terminal (so Ctrl-C is a
    SIGINT from the line discipline, as for a person at a keyboard)."""

    def __init__(self, *args: str | Path, cwd: Path) -> None:
        env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1", "COLUMNS": "200"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become llmtune
            # a test run started in the background (`pytest &` in a script) ignores SIGINT, and an
            # ignored signal stays ignored across exec: give llmtune the default a terminal has
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "llmtune", *map(str, args)], env)
        self.seen = b""
        self.mark = 0  # where the next expect() starts looking

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def read_until(self, condition: object, what: str) -> None:
        """Read until condition(seen) holds; fail (with what was seen) only after PATIENCE."""
        deadline = time.monotonic() + PATIENCE
        while not condition(self.seen):  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}; saw {self.seen[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    raise AssertionError(f"llmtune ended before {what}; saw {self.seen[-2000:]!r}") from None

    def expect(self, text: str) -> None:
        """Wait for `text` after the previous match (it may have come in the same read)."""
        mark, needle = self.mark, text.encode()
        self.read_until(lambda seen: needle in seen[mark:], repr(text))
        self.mark = self.seen.index(needle, mark) + len(needle)

    def streamed(self, after: bytes, count: int) -> None:
        """Wait until `count` bytes of reply follow the last `after` and the editor's last escape
        sequence: model text is printed with control characters escaped, so bytes after the
        last ESC are the reply, and the editor has let go of the terminal (a Ctrl-C sent now is
        a SIGINT, not a keystroke)."""

        def replying(seen: bytes) -> bool:
            return after in seen and len(seen) - max(seen.rindex(after), seen.rfind(b"\x1b")) > count

        self.read_until(replying, "a streamed reply")
        self.mark = len(self.seen)

    def wait(self) -> int:
        """The exit code, once llmtune ends; fail (with what was seen) only after PATIENCE."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.2)[0]:  # drain, so the child never blocks writing
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal: it is about to end
                    time.sleep(0.05)
        raise AssertionError(f"llmtune did not end within {PATIENCE:.0f}s; saw {self.seen[-2000:]!r}")

    def close(self) -> None:
        """Kill llmtune if it still runs (a failed test must not leave it behind)."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = 0
        os.close(self.fd)


@pytest.mark.slow
def test_terminal_history_and_ctrl_c_mid_reply(chat_model: Path, tmp_path: Path) -> None:
    # keys are sent only once the prompt is drawn: prompt_toolkit puts the terminal in raw mode
    # before it draws "you>", and a key sent earlier meets the cooked terminal of the reply,
    # where a Ctrl-D at the start of a line is an end-of-file that nobody reads: it is lost
    term = Terminal("chat", chat_model, "--max-new-tokens", LONG, cwd=tmp_path)
    try:
        term.expect("you>")
        term.send("hello\r")
        term.streamed(b"hello", 200)  # the reply is streaming: stop it
        term.send("\x03")
        term.expect("[stopped]")
        term.expect("you>")  # the session goes on
        term.send("\x1b[A")  # up arrow: the last line comes back from the history
        term.expect("hello")
        term.send("\r")
        term.streamed(b"hello", 200)
        term.send("\x03")
        term.expect("[stopped]")
        term.expect("you>")
        term.send("/save chat.jsonl\r")
        term.expect("saved 4 message(s)")
        term.expect("you>")
        term.send("\x04")  # Ctrl-D ends the session
        assert term.wait() == 0
    finally:
        term.close()
    saved = json.loads((tmp_path / "chat.jsonl").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert [saved[0]["content"], saved[2]["content"]] == ["hello", "hello"]  # the second came from history
    assert all(len(m["content"]) >= 20 for m in saved[1::2])  # what was streamed before Ctrl-C is kept


def test_piped_turns_commands_and_a_safe_save(
    chat_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "notes.txt", "mine\n")
    turns = "hello\n/system Answer briefly.\nhi there\n/save chat.jsonl\n/save chat.jsonl\n/save notes.txt\n"
    result = invoke("chat", chat_model, "--max-new-tokens", "8", stdin=turns)
    assert result.code == 0, result.stderr[-2000:]
    replies = result.stdout.splitlines()
    assert len(replies) == 2 and all(replies)  # one line per turn
    saved = json.loads((tmp_path / "chat.jsonl").read_text())["messages"]
    # /system started the conversation over: the system message and the second turn only
    assert saved[:2] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "hi there"},
    ]
    assert saved[2]["role"] == "assistant" and saved[2]["content"] == replies[1]
    assert result.stderr.count("saved 2 message(s)") == 2  # this session's own file may be updated
    assert "notes.txt exists and this session did not write it" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_chat_refuses_a_classifier_and_a_model_without_chat_template(tmp_path: Path) -> None:
    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    spec = ScratchModel(architecture="llama", hidden_size=32, num_layers=1, num_heads=2)
    tokenizer = build_tokenizer(spec, [])
    build_scratch_model(spec, tokenizer, head="causal_lm", labels=None).save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    assert_bad_input(invoke("chat", tmp_path / "plain"), "no chat template")
    assert_bad_input(invoke("chat", tmp_path / "nowhere"), "nowhere")
