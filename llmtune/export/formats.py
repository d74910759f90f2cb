"""`llmtune export RUN --output DIR --format hf|onnx|gguf`: in the order it happens.

Check the model folder and the target (landing); load the model, an adapter merged into its
base in full precision; read the rows the gate will use (before anything is written, so a
missing file is exit 2 at once); write the format into a temp folder; load it back with its
own runtime and compare (parity); write export.json and the model card; rename into place. A
failed gate is exit 1 with the figures, and nothing lands (--no-verify writes without the gate).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtune import __version__
from llmtune.console import say
from llmtune.errors import BadInput, Incomplete
from llmtune.export import card, landing, parity
from llmtune.export.verify_data import verify_rows

FORMATS = ("hf", "onnx", "gguf")
QUANTIZE = {"hf": (None,), "onnx": (None, "int8", "int8-per-tensor"), "gguf": ("f16", "q8_0")}
MAX_NEW_TOKENS = 16


class ParityFailed(Incomplete):
    """The export does not behave like the trained model (exit 1); nothing was written."""


def export_run(
    run: Path,
    output: Path,
    fmt: str = "hf",
    quantize: str | None = None,
    merge: bool | None = None,
    verify: bool = True,
    verify_data: Path | None = None,
    thresholds: list[str] | None = None,
) -> dict[str, Any]:
    """Export a run (or a model/adapter folder) to `output`; returns export.json's record."""
    from llmtune.export.hf_format import model_folder

    if fmt not in FORMATS:
        raise BadInput(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", key="--format")
    quantize = quantize or QUANTIZE[fmt][0]
    if quantize not in QUANTIZE[fmt]:
        allowed = ", ".join(q for q in QUANTIZE[fmt] if q) or "none"
        raise BadInput(f"--format {fmt} takes --quantize {allowed}, not {quantize!r}", key="--quantize")
    limits = parity.thresholds_for(_gate_key(fmt, quantize), thresholds or [])
    folder = model_folder(run)
    landing.check_model_files(folder)
    target = landing.check_target(folder, output)
    facts = card.run_facts(folder)
    run_dir = folder.parent if folder.name == "model" else None
    if fmt == "hf":
        return _export_hf(run, folder, target, output, merge, verify, verify_data, limits, facts)
    _require(fmt)
    model, tokenizer, merged = _standalone(folder, fmt, merge)
    if fmt == "gguf":
        from llmtune.export.gguf_format import check_supported

        check_supported(model)
    head = _head_of(model)
    rows = verify_rows(run_dir, verify_data, head) if verify else None
    record = _record(fmt, quantize, model, head, merged, facts)

    def write(tmp: Path) -> dict[str, Any]:
        if fmt == "onnx":
            from llmtune.export.onnx_format import write_onnx

            record["files"] = write_onnx(model, tokenizer, tmp, quantize)
        else:
            from llmtune.export.gguf_format import write_gguf

            record["files"] = write_gguf(model, tokenizer, tmp, quantize, facts.get("run") or output.name)
            (tmp / "config.json").unlink(missing_ok=True)
        if rows is not None:
            record["parity"] = _gate(fmt, tmp, record, model, tokenizer, rows, limits, run_dir)
        return _finish(tmp, record, output)

    if target.is_dir() and any(target.iterdir()):
        say(f"replacing the earlier export in {output}")
    return landing.land(target, write, output)


def _gate_key(fmt: str, quantize: str | None) -> str:
    if fmt == "onnx" and quantize:
        return "onnx-int8"
    return f"gguf-{quantize}" if fmt == "gguf" else fmt


def _require(fmt: str) -> None:
    if fmt == "onnx":
        from llmtune.export.onnx_format import require_onnx

        require_onnx()
    else:
        from llmtune.export.gguf_format import require_gguf

        require_gguf()


def _standalone(folder: Path, fmt: str, merge: bool | None) -> tuple[Any, Any, bool]:
    """(model, tokenizer, merged): an adapter merged into its base, loaded in full precision (so
    an adapter trained over a 4-bit base is merged into the de-quantised base, never the 4 bits)."""
    from llmtune.export.hf_format import can_merge, load_for_export
    from llmtune.models.adapters import is_adapter_folder

    if is_adapter_folder(folder):
        raise BadInput(
            f"{folder} holds adapter layers, which no {fmt} runtime can run (they cannot be merged into "
            "the weights); export them with --format hf",
            key="--format",
        )
    if merge is False:
        raise BadInput(
            f"--format {fmt} writes a standalone model: --no-merge is for --format hf", key="--merge"
        )
    model, tokenizer = load_for_export(folder)
    if not hasattr(model, "peft_config"):
        return model.float().eval(), tokenizer, False
    kind = str(model.peft_config["default"].peft_type.value)
    if not can_merge(kind):
        raise BadInput(
            f"a {kind} adapter cannot be merged into the weights, and {fmt} needs a standalone model; "
            "export it with --format hf",
            key="--format",
        )
    return model.merge_and_unload().float().eval(), tokenizer, True


def _head_of(model: Any) -> str:
    from llmtune.models.info import model_head
    from llmtune.models.regression_head import is_regression

    head = model_head(model)
    if head == "classification" and is_regression(model.config.to_dict()):
        return "regression"
    return head or "causal_lm"


def _record(
    fmt: str, quantize: str | None, model: Any, head: str, merged: bool, facts: dict[str, Any]
) -> dict[str, Any]:
    from llmtune.models.regression_head import LABEL_RANGE

    config = model.config
    record: dict[str, Any] = {"format": fmt, "quantization": quantize, "task": head, "llmtune": __version__}
    if head == "classification":
        record["labels"] = [config.id2label[i] for i in range(config.num_labels)]
    if head == "regression" and getattr(config, LABEL_RANGE, None):
        record[LABEL_RANGE] = list(getattr(config, LABEL_RANGE))
    record["merged"] = merged
    record["run_facts"] = facts
    return record


def _gate(
    fmt: str,
    tmp: Path,
    record: dict[str, Any],
    model: Any,
    tokenizer: Any,
    rows: parity.Rows,
    limits: dict[str, float],
    run_dir: Path | None,
) -> dict[str, Any]:
    """Load the export from `tmp` with its runtime, compare, and raise ParityFailed when a figure
    is outside its threshold."""
    from llmtune.export.runners import OnnxSide, TorchRunner, gguf_side

    max_length = _max_length(run_dir)
    reference = TorchRunner(model, tokenizer, max_length)
    if fmt == "onnx":
        side, runtime = OnnxSide(tmp, max_length), "onnxruntime (CPUExecutionProvider)"
    elif fmt == "gguf":
        side, runtime = gguf_side(
            tmp, record["files"]["file"], min(model.config.max_position_embeddings, 2048)
        )
    else:
        side, runtime = _hf_side(tmp, record["task"], max_length), "transformers"
    say(f"verifying the export with {runtime} on {rows.source}")
    try:
        if record["task"] == "causal_lm":
            figures = parity.compare_lms(reference, side, rows, MAX_NEW_TOKENS)
        else:
            figures = parity.compare_heads(
                reference, side, rows, record.get("labels"), record.get("label_range")
            )
    finally:
        if hasattr(side, "close"):
            side.close()
    limits = {k: v for k, v in limits.items() if figures.get(parity.LIMITS[k][0]) is not None}
    failed = parity.failures(figures, limits)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, int | float))
    say(f"parity with the trained model ({runtime}): {'FAILED' if failed else 'passed'}; {shown}")
    result = {
        "verified": True,
        "runtime": runtime,
        "thresholds": limits,
        "figures": figures,
        "passed": not failed,
    }
    if failed:
        shown = {k: v for k, v in figures.items() if k not in ("examples", "metrics")}
        raise ParityFailed(
            "the export does not behave like the trained model (nothing was written; --no-verify writes it "
            "anyway, --threshold NAME=VALUE changes a limit):\n"
            + "\n".join(failed)
            + "\nfigures: "
            + json.dumps(shown),
            result,
        )
    return result


def _hf_side(tmp: Path, task: str, max_length: int | None) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.export.runners import TorchRunner

    cls = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
    return TorchRunner(cls.from_pretrained(str(tmp)), AutoTokenizer.from_pretrained(str(tmp)), max_length)


def _max_length(run_dir: Path | None) -> int | None:
    """The run's data.max_length: the model saw its inputs truncated to it."""
    import yaml

    if run_dir is None or not (run_dir / "recipe.yaml").is_file():
        return None
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    value = (recipe.get("data") or {}).get("max_length")
    return value if isinstance(value, int) else None


def _finish(tmp: Path, record: dict[str, Any], output: Path) -> dict[str, Any]:
    """export.json, README.md and the marker."""
    from llmtune.outputs import atomic_write_json, atomic_write_text

    if "parity" not in record:
        record["parity"] = {"verified": False}
    atomic_write_json(tmp / "export.json", record)
    atomic_write_text(tmp / "README.md", card.model_card(record, output.name))
    atomic_write_json(tmp / landing.EXPORT_MARKER, {"format": record["format"], "llmtune": __version__})
    return record


def _export_hf(
    run: Path,
    folder: Path,
    target: Path,
    output: Path,
    merge: bool | None,
    verify: bool,
    verify_data: Path | None,
    limits: dict[str, float],
    facts: dict[str, Any],
) -> dict[str, Any]:
    """--format hf: the Hugging Face folder (llmtune.models.export), with the card, export.json
    and, for a standalone model, the gate (transformers loading the export against the run's
    model with its adapter unmerged)."""
    from llmtune.export.hf_format import export_model, load_for_export

    run_dir = folder.parent if folder.name == "model" else None

    def finish(tmp: Path, merged: bool, standalone: bool) -> dict[str, Any]:
        record: dict[str, Any] = {"format": "hf", "quantization": None, "llmtune": __version__}
        if standalone:
            model, tokenizer = load_for_export(folder)
            head = _head_of(model)
            record = _record("hf", None, model, head, merged, facts)
            record["files"] = {"weights": sorted(p.name for p in tmp.glob("*.safetensors"))}
            if verify:
                rows = verify_rows(run_dir, verify_data, head)
                record["parity"] = _gate("hf", tmp, record, model, tokenizer, rows, limits, run_dir)
        else:
            record.update(task=_adapter_task(tmp), merged=False, run_facts=facts, files={"adapter": True})
            record["parity"] = {"verified": False, "reason": "an adapter, not a standalone model"}
        return _finish(tmp, record, output)

    return export_model(run, output, merge=merge, finish=finish)


def _adapter_task(folder: Path) -> str:
    config = card._json(folder / "adapter_config.json")
    return "causal_lm" if config.get("task_type") == "CAUSAL_LM" else "classification"
