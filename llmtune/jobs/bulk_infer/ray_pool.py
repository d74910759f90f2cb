"""`engine: ray`: bulk-infer's pending rows on a Ray Data actor pool, with engine hf's guarantees.

Who does what:
- this process (the driver) takes the lock, reads the input, drops the ids the journal already
  holds and checks the model, exactly as with engine hf; it never loads the weights (the checks
  run on the model built on the meta device);
- Ray Data gets only the pending rows and hands them, `ray.batch_rows` at a time, to a pool of
  `ray.replicas` actors. Each actor loads the model once (`model.setup_model`: engine hf
  through the engine registry)
  and runs the same chunk code (`chunks`), so rows, failures and fingerprints are the same;
- the driver is the only writer: it appends each result batch to the journal (flushed, fsynced)
  and its failures to the errors file as the batch arrives, in whatever order batches finish.
A kill -9 loses at most the batches in flight; the rerun's done-id filter runs only the rest,
so every id is written once. With `ray.address: null` a private local Ray starts for the job
(no dashboard, its own temp folder) and stops at the end, on SIGTERM/SIGINT/SIGHUP too; a folder a
kill -9 left is removed by the next run (`sweep_stale_ray_folders`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import re
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llmtune.jobs.bulk_infer.chunks as chunks
from llmtune.data.templates import Template
from llmtune.errors import STOP_SIGNALS, BadInput
from llmtune.inference.journal import signals_held
from llmtune.jobs.bulk_infer.inputs import InputRow
from llmtune.jobs.bulk_infer.paths import OutputPaths
from llmtune.jobs.bulk_infer.progress import Tally
from llmtune.models.info import ModelInfo
from llmtune.recipes.bulk_infer import BulkInferRecipe
from llmtune.recipes.engines import RaySettings

RAY_MISSING = "engine: ray needs Ray: pip install 'llmtune[ray]'"

# what a replica sends back for each row it was given
DONE, FAILED, SKIPPED = "done", "failed", "skipped"


def check_installed() -> None:
    """BadInput (exit 2) when Ray Data cannot be imported; called while planning, before any write."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise BadInput(RAY_MISSING, key="engine") from None


def infer(
    recipe: BulkInferRecipe,
    info: ModelInfo,
    todo: list[InputRow],
    paths: OutputPaths,
    fingerprints: dict[str, str],
    *,
    debug: bool = False,
) -> Tally:
    """Run `todo` on the actor pool; each result batch's rows and failures are appended and
    flushed as it arrives. Nothing to do starts no Ray."""
    tally = Tally()
    if not todo:
        return tally
    with ray_session(recipe.ray, debug=debug):
        batches = _results(recipe, info, todo, fingerprints)
        with chunks.writing(paths, len(todo), tally) as writer:
            for batch in _unwrapping_bad_input(batches):
                kinds, values = list(batch["kind"]), [pickle.loads(v) for v in batch["value"]]
                records = [v for k, v in zip(kinds, values) if k == DONE]
                failures = [v for k, v in zip(kinds, values) if k == FAILED]
                tally.too_long_skipped += kinds.count(SKIPPED)
                writer.add(records, failures, rows=len(kinds), new_tokens=int(sum(batch["new_tokens"])))
    return tally


def _results(
    recipe: BulkInferRecipe, info: ModelInfo, todo: list[InputRow], fingerprints: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """The pending rows through the actor pool, one result batch at a time as they finish."""
    import ray.data

    settings = recipe.ray
    rows = ray.data.from_items([{"row": pickle.dumps(item)} for item in todo])
    results = rows.map_batches(
        Replica,
        fn_constructor_kwargs={"recipe": recipe, "info": info, "fingerprints": fingerprints},
        compute=ray.data.ActorPoolStrategy(size=settings.replicas),
        batch_size=settings.batch_rows,
        batch_format="numpy",
        num_cpus=settings.cpus_per_replica,
        num_gpus=settings.gpus_per_replica or None,
    )
    # batch_size None: each block as it comes (one replica call each), no re-batching wait
    return results.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)


def _unwrapping_bad_input(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The batches; a BadInput raised in a replica (Ray wraps it) comes out as itself (exit 2)."""
    try:
        yield from batches
    except Exception as exc:
        cause = _bad_input_in(exc)
        if cause is None:
            raise
        raise cause from None


def _bad_input_in(exc: BaseException | None) -> BadInput | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError: the replica's exception
        if isinstance(inner, BaseException):
            exc = inner
        elif isinstance(exc, BadInput):
            return exc
        else:
            exc = exc.__cause__ or exc.__context__
    return None


class Replica:
    """One model replica of the actor pool: loads the model once, then runs each batch of rows
    through engine hf's chunk code and sends back one (kind, pickled record or failure) per row."""

    def __init__(self, recipe: BulkInferRecipe, info: ModelInfo, fingerprints: dict[str, str]) -> None:
        from llmtune.jobs.bulk_infer.model import setup_model

        self.recipe = recipe
        self.fingerprints = fingerprints
        self.engine = setup_model(replica_recipe(recipe), info)
        self.template = Template(recipe.template, where="template")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """Results for one batch of pickled InputRows."""
        rows = [pickle.loads(raw) for raw in batch["row"]]
        tally = Tally()
        ready, prompts, failures = chunks.render_prompts(self.recipe, self.engine, self.template, rows, tally)
        results, run_failures = chunks.run_chunk(self.recipe, self.engine, ready, prompts)
        out: dict[str, list[Any]] = {"kind": [], "value": [], "new_tokens": []}
        for item, result in results:
            record = chunks.record(self.recipe, item, result, self.fingerprints)
            _add(out, DONE, record, result.get("_new_tokens", 0))
        for failure in failures + run_failures:
            _add(out, FAILED, failure, 0)
        for _ in range(tally.too_long_skipped):
            _add(out, SKIPPED, None, 0)
        return out


def _add(out: dict[str, list[Any]], kind: str, value: Any, new_tokens: int) -> None:
    out["kind"].append(kind)
    out["value"].append(pickle.dumps(value))
    out["new_tokens"].append(new_tokens)


def replica_recipe(recipe: BulkInferRecipe) -> BulkInferRecipe:
    """The recipe a replica loads with: `model.threads: auto` becomes the CPUs Ray reserved for
    the replica (whole ones, at least 1), so that replicas do not fight over the same cores;
    an explicit number of threads stays."""
    if recipe.model.threads != "auto":
        return recipe
    threads = max(1, math.floor(recipe.ray.cpus_per_replica))
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"threads": threads})})


@contextmanager
def ray_session(settings: RaySettings, *, debug: bool = False) -> Iterator[None]:
    """Ray for this job: a Ray already started in this process is used as it is; else join
    `settings.address`, or start a private local Ray sized for the replicas and stop it at the end."""
    import ray

    if ray.is_initialized():
        yield
        return
    temp_dir = None
    if settings.address is None:
        sweep_stale_ray_folders()
        temp_dir = tempfile.mkdtemp(prefix=f"{RAY_PREFIX}{os.getpid()}-")
    try:
        _start(settings, temp_dir, debug)
        yield
    finally:
        with signals_held():  # a second signal must not cut the clean-up short
            ray.shutdown()
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)


RAY_PREFIX = "llmtune-ray-"  # + the driver's pid: a private Ray's temp folder, in the system's temp dir
_RAY_FOLDER = re.compile(rf"^{RAY_PREFIX}(\d+)-[A-Za-z0-9_]+$")


def sweep_stale_ray_folders(root: Path | None = None) -> list[Path]:
    """Remove the temp folders of private Rays whose driver is gone (a kill -9 leaves them, and
    Ray's own processes for about a minute): only folders named as llmtune names them, owned by
    this user, not links, whose pid no longer runs. Ray processes still using such a folder (its
    path in their command line, this user's) get SIGTERM first."""
    from llmtune.outputs import process_alive

    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        match = _RAY_FOLDER.match(entry.name)
        if not match or process_alive(int(match[1])):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        for pid in _processes_using(entry.path):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _processes_using(folder: str) -> list[int]:
    """This user's processes whose command line names `folder` (Ray's raylet, GCS, workers)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(folder.encode() in arg for arg in args) and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def _start(settings: RaySettings, temp_dir: str | None, debug: bool) -> None:
    import ray
    import ray.data

    level = logging.INFO if debug else logging.WARNING
    # ray.init installs its own SIGTERM handler (sys.exit); the job's handler must stay, so
    # that SIGTERM/SIGINT end the run with 143/130 after the journal is closed
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        if settings.address is None:
            ray.init(
                address="local",  # a new Ray of our own, never a `ray start` cluster found on the machine
                num_cpus=math.ceil(settings.replicas * settings.cpus_per_replica),
                include_dashboard=False,
                log_to_driver=debug,
                logging_level=level,
                _temp_dir=temp_dir,
            )
        else:
            ray.init(address=settings.address, log_to_driver=debug, logging_level=level)
    except ConnectionError as exc:
        raise BadInput(
            f"cannot reach the Ray cluster at {settings.address}: {exc}", key="ray.address"
        ) from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    logging.getLogger("ray.data").setLevel(level)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job's own progress line counts the rows
    context.raise_original_map_exception = True  # a replica's BadInput comes back as itself
    # Ray Data warns that it shows no bars; the job's own progress line counts the rows
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
