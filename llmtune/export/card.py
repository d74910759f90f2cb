"""DIR/export.json (what was exported, how, and the parity figures) and DIR/README.md, the model
card: base model by hub id and revision, task, labels, method, data sizes, test metrics with
their intervals, the parity figures, and how to load the export in a few lines. No path of this
machine is written: the export is meant to be copied elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llmtune import __version__


def run_facts(folder: Path) -> dict[str, Any]:
    """What the run behind model folder `folder` says of itself (empty for a bare model folder):
    base model, method, task, data sizes, test metrics."""
    run = folder.parent
    manifest = _json(run / "manifest.json") if folder.name == "model" else {}
    recipe = {}
    if manifest and (run / "recipe.yaml").is_file():
        recipe = yaml.safe_load((run / "recipe.yaml").read_text()) or {}
    summary = manifest.get("summary") or {}
    model = recipe.get("model") or {}
    facts: dict[str, Any] = {
        "run": manifest.get("name"),
        "base_model": _base_model(model, folder),
        "method": (recipe.get("method") or {}).get("type") or summary.get("method"),
        "quantized_base": model.get("quantization") not in (None, "none"),
        "data_rows": summary.get("rows"),
        "test_metrics": summary.get("test"),
    }
    return {k: v for k, v in facts.items() if v is not None}


def _base_model(model: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    if model.get("scratch"):
        return {"scratch": model["scratch"]}
    path = model.get("path")
    if not isinstance(path, str):
        adapter = _json(folder / "adapter_config.json")
        path = adapter.get("base_model_name_or_path")
        if not isinstance(path, str):
            return None
    if Path(path).is_absolute() or path.startswith((".", "~")):
        return {"local_folder": Path(path).name}  # a folder on the machine that trained it
    revision = model.get("revision") or "main"
    return {"id": path, "revision": revision, "commit": _cached_commit(path, revision)}


def _cached_commit(repo: str, revision: str) -> str | None:
    """The commit the local Hugging Face cache holds for repo@revision (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision, local_files_only=True)).name
    except Exception:  # not in the cache, or not a hub id
        return None


def model_card(record: dict[str, Any], name: str) -> str:
    """README.md of the export from its export.json `record`; `name` is the folder's name."""
    facts = record.get("run_facts", {})
    base = facts.get("base_model") or {}
    front = {"library_name": {"hf": "transformers", "onnx": "onnx", "gguf": "gguf"}[record["format"]]}
    if base.get("id"):
        front["base_model"] = base["id"]
    front["tags"] = ["llmtune", record["task"], record["format"]]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {facts.get('run') or name}",
        "",
    ]
    lines += [
        f"- **Task**: {record['task']}"
        + (f" ({', '.join(record['labels'])})" if record.get("labels") else "")
    ]
    if base.get("id"):
        commit = f", commit {base['commit']}" if base.get("commit") else ""
        lines.append(
            f"- **Base model**: [{base['id']}](https://huggingface.co/{base['id']}) (revision {base['revision']}{commit})"
        )
    elif base.get("scratch"):
        lines.append(f"- **Base model**: built from scratch ({_inline(base['scratch'])})")
    elif base.get("local_folder"):
        lines.append(f"- **Base model**: a local model folder ({base['local_folder']})")
    if facts.get("method"):
        merged = " (adapter merged into the base in full precision" + (
            ", not into the 4-bit weights it was trained over)" if facts.get("quantized_base") else ")"
        )
        lines.append(f"- **Method**: {facts['method']}{merged if record.get('merged') else ''}")
    if facts.get("data_rows"):
        lines.append(f"- **Data**: {_inline(facts['data_rows'])} rows")
    lines.append(
        f"- **Format**: {record['format']}"
        + (f", {record['quantization']}" if record.get("quantization") else "")
    )
    lines.append(f"- **Exported by**: llmtune {__version__}")
    if facts.get("test_metrics"):
        lines += [
            "",
            "## Test metrics (the run's model, before export)",
            "",
            _metrics_table(facts["test_metrics"]),
        ]
    lines += ["", "## Parity with the trained model", "", _parity(record.get("parity"))]
    lines += ["", "## How to load it", "", "```python", *load_snippet(record, name), "```", ""]
    return "\n".join(lines)


def load_snippet(record: dict[str, Any], name: str) -> list[str]:
    """A few lines that load this export with its plain runtime."""
    fmt, task = record["format"], record["task"]
    if fmt == "onnx":
        inputs = record["files"]["inputs"]
        return [
            "import numpy as np, onnxruntime as ort",
            "from transformers import AutoTokenizer",
            f'tok, sess = AutoTokenizer.from_pretrained("{name}"), ort.InferenceSession("{name}/model.onnx")',
            'enc = tok(["some text"], return_tensors="np")',
            f"logits = sess.run(['logits'], {{k: enc[k].astype(np.int64) for k in {inputs!r}}})[0]",
        ]
    if fmt == "gguf":
        return [
            "from llama_cpp import Llama  # pip install llama-cpp-python; or Ollama: FROM ./"
            + record["files"]["file"],
            f'llm = Llama(model_path="{name}/{record["files"]["file"]}")',
            'print(llm("Your prompt", max_tokens=32, temperature=0)["choices"][0]["text"])',
        ]
    auto = "AutoModelForCausalLM" if task == "causal_lm" else "AutoModelForSequenceClassification"
    return [
        f"from transformers import AutoTokenizer, {auto}",
        f'tok, model = AutoTokenizer.from_pretrained("{name}"), {auto}.from_pretrained("{name}")',
        'out = model(**tok(["some text"], return_tensors="pt"))',
    ]


def _parity(parity: dict[str, Any] | None) -> str:
    if not parity or not parity.get("verified"):
        return "Not verified (exported with --no-verify)."
    figures = {k: v for k, v in parity["figures"].items() if k not in ("examples", "metrics", "source")}
    rows = ["| figure | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in figures.items()]
    text = [
        f"Loaded with {parity['runtime']} and compared with the trained model (transformers, float32) on "
        f"{parity['figures'].get('source')}: **{'passed' if parity['passed'] else 'FAILED'}**.",
        "",
        *rows,
        "",
        "Thresholds: " + ", ".join(f"{k} {v:g}" for k, v in parity["thresholds"].items()),
    ]
    metrics = parity["figures"].get("metrics")
    if metrics:
        text += [
            "",
            "Metrics on those rows, trained model vs export:",
            "",
            _metrics_table(metrics["model"], metrics["export"]),
        ]
    return "\n".join(text)


def _metrics_table(first: dict[str, Any], second: dict[str, Any] | None = None) -> str:
    head = "| metric | trained model | export |" if second else "| metric | value |"
    rows = [head, "|---|---|---|" if second else "|---|---|"]
    for key, value in first.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and not all(isinstance(v, int | float) for v in value)
        ):
            continue  # per-class tables, examples: in the run's report.md
        rows.append(f"| {key} | {_fmt(value)} |" + (f" {_fmt(second.get(key))} |" if second else ""))
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _inline(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items() if v is not None)


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
