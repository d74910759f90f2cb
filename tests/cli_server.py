"""The tests' `llmtune` processes, forked from a server that imported torch, transformers, peft and
llmtune once. Each `llmtune ARGS` still runs in a process of its own, with its own pid, exit
code (or signal), stdout and stderr, cwd, umask and environment, and signals reach it as they
reach `python -m llmtune`; what it no longer pays is the 6-10 s of CPU that a fresh interpreter
spends importing those libraries before it reads its recipe (`python -X importtime -c "from
transformers import Trainer"`). The suite starts ~200 such processes.

What a fork cannot give, a fresh interpreter still does (`run_cli` and `start_cli` fall back to
one by themselves):
- an environment that differs from the server's in a variable read at import (HF_HOME,
  HF_HUB_OFFLINE...) gets another server: only variables read at run time (LLMTUNE_*, TMPDIR,
  the torchrun ranks) may differ between a server and its forks;
- start-up itself: what `python -m llmtune` imports and how a real interpreter exits are tested
  with `subprocess` directly (test_cli, test_rank, test_engine_onnx, test_distributed).

A pytest worker starts a server on first use, one per environment (the session's, see
tests/conftest.py's session_env; a test that changes a variable read at import gets a server of
its own, or a fresh interpreter when that is rarer). Run as a script it is the server: one JSON
request a line on stdin, one JSON reply a line on stdout. `LLMTUNE_TEST_FORK=0` turns it off;
`LLMTUNE_TEST_FORK_LOG=FILE` names the tests that needed another server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve()
# read when a run needs them, not at import, by llmtune, tempfile, tokenizers, or torch.distributed
# when a rank joins its process group; OMP_NUM_THREADS, which torch reads at start-up, is applied
# by the forked process as torch would (_child): a fork may differ in these
_RUNTIME = (
    "LLMTUNE_",
    "TMPDIR",
    "PYTEST_CURRENT_TEST",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "MASTER_",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
    # set by llmtune itself for the libraries it is about to import (an in-process run in the
    # worker leaves them in its environment)
    "TRL_",
    "MLFLOW_",
    "VLLM_",
    "TORCHINDUCTOR_",
    "FSDP_",
    "ACCELERATE_",
    "KMP_",  # Intel OpenMP's; torch's CPU wheel runs on GNU OpenMP
    "RAY_",  # Ray is not imported by the server: its forks read these when they import it
    "PYTHONBREAKPOINT",
    "COLUMNS",
    "LINES",
)
# servers kept alive at once, one per environment (each holds torch and the libraries: ~0.5 GB)
MAX_SERVERS = 2

# CPU seconds of the forked runs (the server's children, not this process's): tests/cputime.py
# adds them to a test's cpu_children
forked_cpu = 0.0


def signature(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """What of an environment a fork inherits from its server: the variables read at import."""
    return tuple(sorted((k, v) for k, v in env.items() if not k.startswith(_RUNTIME)))


class CliServer:
    def __init__(self, env: dict[str, str]) -> None:
        # torch's own thread count at start-up, without OMP_NUM_THREADS: what _child starts from
        self.env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=HERE.parent,
        )
        self.ask(None)  # returns once the imports are done

    def ask(self, request: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if request is not None:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the CLI fork server exited ({self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


class Forked:
    """The part of `subprocess.Popen` the tests use, for a process the server forked."""

    def __init__(self, server: CliServer, request: dict[str, Any], scratch: Path, text: bool) -> None:
        self.server, self.scratch, self.text = server, scratch, text
        self.args = request["args"]
        self.pid: int = server.ask(request)["pid"]
        self.returncode: int | None = None
        self.output: tuple[Any, Any] = (None, None)
        # what a test reads while the process runs (`for line in proc.stderr`), as from a pipe
        self.stdout, self.stderr = (
            Follow(self, Path(request[name])) if request[name].startswith(str(scratch)) else None
            for name in ("stdout", "stderr")
        )

    def poll(self) -> int | None:
        if self.returncode is None:
            self._ended(self.server.ask({"op": "poll", "pid": self.pid}))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._ended(self.server.ask({"op": "wait", "pid": self.pid}))
        assert self.returncode is not None
        return self.returncode

    def _ended(self, reply: dict[str, Any]) -> None:
        """Once the process has ended: its code, CPU seconds and captured output (read, and its
        scratch folder removed)."""
        global forked_cpu
        if reply.get("code") is None:
            return
        self.returncode = reply["code"]
        forked_cpu += reply["cpu"]
        self.output = tuple(self._read(name) for name in ("stdout", "stderr"))
        shutil.rmtree(self.scratch, ignore_errors=True)

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        self.wait()
        return self.output

    def _read(self, name: str) -> str | bytes | None:
        path = self.scratch / name
        if not path.exists():
            return None
        return path.read_text(errors="replace") if self.text else path.read_bytes()


class Follow:
    """The lines of a forked process's captured output as it writes them, ending when the
    process has ended and every line is read: what iterating over a pipe gives."""

    def __init__(self, proc: Forked, path: Path) -> None:
        self.proc, self.path, self.offset = proc, path, 0

    def __iter__(self) -> Iterator[str]:
        pending = ""
        while True:
            ended = self.proc.returncode is not None or self.proc.poll() is not None
            chunk = self._more() if not ended else self._rest()
            pending += chunk
            *lines, pending = pending.split("\n")
            yield from (line + "\n" for line in lines)
            if ended:
                if pending:
                    yield pending
                return
            if not chunk:
                time.sleep(0.02)

    def _more(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode(errors="replace")

    def _rest(self) -> str:
        """What is left once the process has ended (its files read and removed by then)."""
        text = self.proc.output[1 if self is self.proc.stderr else 0] or ""
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        rest = text.encode()[self.offset :].decode(errors="replace")
        self.offset += len(rest.encode())
        return rest


_servers: dict[tuple[tuple[str, str], ...], CliServer] = {}
_broken: set[tuple[tuple[str, str], ...]] = set()  # environments whose server could not start


def server(env: dict[str, str]) -> CliServer | None:
    """A server whose forks behave as a fresh interpreter started with `env` (one started on first
    use; the least recently used one closed beyond MAX_SERVERS), or None when turned off."""
    if os.environ.get("LLMTUNE_TEST_FORK", "1") == "0":
        return None
    key = signature(env)
    if key in _broken:
        return None
    forks = _servers.pop(key, None)
    if forks is not None and forks.proc.poll() is not None:
        forks = None
    if forks is None:
        if os.environ.get("LLMTUNE_TEST_FORK_LOG") and _servers:
            known = set(next(reversed(_servers.values())).env.items())
            differ = sorted({k for k, v in set(signature(env)) ^ known if not k.startswith(_RUNTIME)})
            with open(os.environ["LLMTUNE_TEST_FORK_LOG"], "a") as log:
                log.write(f"{os.environ.get('PYTEST_CURRENT_TEST')}: another server for {differ}\n")
        while len(_servers) >= MAX_SERVERS:
            _servers.pop(next(iter(_servers))).close()
        try:
            forks = CliServer(env)
        except RuntimeError:  # it could not start here: fresh interpreters for this environment
            _broken.add(key)
            return None
    _servers[key] = forks  # last: the most recently used
    return forks


def _target(stream: Any, scratch: Path, name: str) -> str:
    """Where the child's stdout or stderr goes: a file the caller gave, /dev/null, or a file in
    scratch that `communicate` reads (PIPE, or None: the tests never let a child write to the
    worker's own stdout)."""
    if stream == subprocess.DEVNULL:
        return os.devnull
    if isinstance(stream, int) and stream >= 0 and os.isatty(stream):
        return os.ttyname(stream)  # a pseudo-terminal's end: the child opens it by name
    if hasattr(stream, "name") and isinstance(stream.name, str):
        return stream.name
    return str(scratch / name)


def start(
    args: list[str],
    *,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    text: bool = True,
) -> Forked | subprocess.Popen:
    """`llmtune ARGS` in the background: forked when the server can run it, else `python -m
    llmtune` through `subprocess.Popen` with the same arguments."""
    full_env = dict(os.environ if env is None else env)
    plain = all(
        s in (subprocess.PIPE, subprocess.DEVNULL, None)
        or hasattr(s, "name")
        or (isinstance(s, int) and s >= 0 and os.isatty(s))
        for s in (stdout, stderr)
    )
    forks = server(full_env) if plain else None  # another raw descriptor: a real Popen
    if forks is None:
        return subprocess.Popen(
            [sys.executable, "-m", "llmtune", *args],
            cwd=cwd,
            env=full_env,
            stdout=stdout,
            stderr=stderr,
            text=text,
        )
    scratch = Path(tempfile.mkdtemp(prefix="llmtune-cli-"))
    umask = os.umask(0)
    os.umask(umask)
    request = {
        "op": "start",
        "args": args,
        "cwd": str(cwd or Path.cwd()),
        "env": full_env,
        "umask": umask,
        "stdout": _target(stdout, scratch, "stdout"),
        "stderr": _target(stderr, scratch, "stderr"),
    }
    return Forked(forks, request, scratch, text)


def _child(request: dict[str, Any]) -> None:
    """In the forked process: become `llmtune ARGS` started with the request's cwd, umask,
    environment and streams."""
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # TMPDIR as this run's environment says
    if (omp := os.environ.get("OMP_NUM_THREADS", "").strip()).isdigit() and int(omp) > 0:
        import torch

        torch.set_num_threads(int(omp))  # what torch reads from it at start-up
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.write(request["opened"], b"1")
    os.close(request["opened"])
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["llmtune", *request["args"]]
    from llmtune.cli import main

    main()  # typer exits with the command's code: SystemExit ends this process as `python -m` does


def _preload() -> None:
    """What runs import, paid once here instead of in every process: torch, transformers' Trainer
    and the scratch models' classes, peft, and every llmtune module with what it imports at the
    top (scikit-learn, scipy, matplotlib, datasets...). The optional engines' libraries (Ray, vLLM,
    ONNX Runtime, llama.cpp) are imported by llmtune only when a run picks them: not here."""
    import importlib
    import pkgutil

    for name in (
        "torch",
        "transformers.models.bert.modeling_bert",
        "transformers.models.llama.modeling_llama",
        "transformers.trainer",
        "peft",
        "trl",
        "trl.trainer.sft_trainer",
        "trl.trainer.dpo_trainer",
        "trl.trainer.reward_trainer",
        "accelerate",
        "datasets",
        "optuna",
        "safetensors.torch",
        "scipy.stats",
        "sklearn.metrics",
        "sklearn.model_selection",
        "matplotlib.pyplot",
        "rich.progress",
        "rich.table",
    ):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not installed, or broken in this venv: its runs import it
            pass

    import llmtune

    for module in pkgutil.walk_packages(llmtune.__path__, "llmtune."):
        if module.name != "llmtune.__main__":
            try:
                importlib.import_module(module.name)
            except Exception:  # noqa: BLE001 - an optional extra that is not installed (or broken here)
                pass


def _run_child(request: dict[str, Any]) -> int:
    """The forked process's exit code, as `python -m llmtune` would end with it."""
    try:
        _child(request)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _exit(code: int) -> None:
    """End the forked process as the interpreter would (wait for its threads, run atexit, flush
    the streams) but without tearing down every module it inherited: that touches each page of
    the server's heap (copy-on-write) and cost ~2 s of CPU per process."""
    import atexit
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter does at exit
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    finally:
        os._exit(code)


def _serve() -> None:
    import gc

    _preload()
    gc.freeze()  # the inherited objects are never scanned by a fork's collector (CPython's advice)

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def ended(pid: int, flags: int) -> dict[str, Any]:
        done, status, usage = os.wait4(pid, flags)
        if done == 0:
            return {"code": None}
        return {"code": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime}

    reply({"ready": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "poll":
            reply(ended(request["pid"], os.WNOHANG))
        elif request["op"] == "wait":
            reply(ended(request["pid"], 0))
        else:
            sys.stderr.flush()
            ready, opened = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(ready)
                request["opened"] = opened
                _exit(_run_child(request))
            os.close(opened)
            os.read(ready, 1)  # its streams are open (or it has died): as Popen returns after exec
            os.close(ready)
            reply({"pid": pid})


if __name__ == "__main__":
    _serve()
