"""What `llmtune finetune` costs over the library call it wraps.

Side by side, on this machine, with the same tiny model, rows, steps and batch:
  - causal_lm LoRA SFT: `llmtune finetune` vs the `trl sft` CLI, unpacked and packed;
  - classification LoRA: `llmtune finetune` vs a plain HF Trainer script.
Each command runs in its own process; we record its wall time and peak RSS (from wait4) and print
a Markdown table of llmtune / library ratios. Run:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_finetune.py --steps 100 --batch 8 --repeats 2 --threads 2

The table goes to bench/results/finetune.md (--output), after the machine, load and command.

Two torch threads by default, as in BENCHMARKS.md; on a small shared machine `--threads 1` makes
both sides' numbers less noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from provenance import header, load, now, this_command  # noqa: E402

BIN = Path(sys.executable).parent
DATA = ROOT / "data" / "sentiment" / "train.jsonl"

PLAIN_TRAINER = """
import json, sys
import datasets
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
model_dir, data, out, steps, batch = sys.argv[1:6]
tok = AutoTokenizer.from_pretrained(model_dir)
rows = [json.loads(line) for line in open(data)]
labels = sorted({r["sentiment"] for r in rows})
enc = tok([r["review"] for r in rows], truncation=True, max_length=128)
ds = datasets.Dataset.from_dict({**enc, "labels": [labels.index(r["sentiment"]) for r in rows]})
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules="all-linear"))
args = TrainingArguments(out, max_steps=int(steps), per_device_train_batch_size=int(batch), learning_rate=1e-3,
                         report_to=[], use_cpu=True, save_strategy="no", logging_steps=10, disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok)).train()
model.save_pretrained(out + "/model")
"""


def build_models(folder: Path) -> Path:
    """A tiny llama (hidden 64, 2 layers) saved as a plain HF folder that every tool can load."""
    from llmtune.models.loading import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    spec = ScratchModel(architecture="llama", hidden_size=64, num_layers=2, num_heads=4)
    tokenizer = build_tokenizer(spec, [])
    model_dir = folder / "tiny-llama"
    build_scratch_model(spec, tokenizer, head="causal_lm", labels=None).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def write_sft_rows(folder: Path) -> Path:
    """prompt/completion rows from the sentiment reviews, in a folder `trl sft` can load."""
    out = folder / "sft"
    out.mkdir()
    with (out / "train.jsonl").open("w") as f:
        for line in DATA.read_text().splitlines():
            row = json.loads(line)
            f.write(
                json.dumps(
                    {"prompt": f"Review: {row['review']}\nSentiment: ", "completion": row["sentiment"]}
                )
                + "\n"
            )
    return out


def recipe(
    folder: Path, name: str, model_dir: Path, task: str, steps: int | None, batch: int, packing: bool
) -> Path:
    """A recipe for the same run as the library command; steps None: one epoch over the rows."""
    data = (
        f"{{train: {folder / 'sft' / 'train.jsonl'}, max_length: 256}}"
        if task == "causal_lm"
        else f"{{train: {DATA}, columns: {{text: review, label: sentiment}}, max_length: 128}}"
    )
    path = folder / f"{name}.yaml"
    path.write_text(
        f"kind: finetune\ntask: {task}\nmodel: {{path: {model_dir}}}\n"
        "method: {type: lora, r: 8, alpha: 16, dropout: 0.0}\n"
        f"data: {data}\n"
        f"training: {{{f'max_steps: {steps}' if steps else 'epochs: 1'}, batch_size: {batch}, learning_rate: 1.0e-3, packing: {str(packing).lower()}}}\n"
        f"output: {{dir: {folder / 'runs' / name}, overwrite: true}}\n"
    )
    return path


TRAIN_RUNTIME = re.compile(r"train_runtime['\"]?\s*[:=]\s*'?([0-9.]+)")


def measure(command: list[str], run_dir: Path | None = None) -> tuple[float, float, float]:
    """(wall seconds, training-loop seconds as the Trainer logs them, peak RSS in MiB) of one
    command in its own process. llmtune keeps the Trainer's totals off the console: they are read
    from the run's metrics.jsonl (`run_dir`)."""
    with tempfile.TemporaryFile("w+") as log:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        log.seek(0)
        text = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{text[-3000:]}")
    if run_dir is not None and (run_dir / "metrics.jsonl").exists():
        text += (run_dir / "metrics.jsonl").read_text()
    found = TRAIN_RUNTIME.findall(text)
    return wall, float(found[-1]) if found else float("nan"), usage.ru_maxrss / 1024


def trl_sft(
    model_dir: Path, data: Path, out: Path, steps: int | None, batch: int, packing: bool
) -> list[str]:
    """The `trl sft` command for the same run; steps None: one epoch over the rows."""
    length = ["--max_steps", str(steps)] if steps else ["--num_train_epochs", "1"]
    return [
        str(BIN / "trl"), "sft", "--model_name_or_path", str(model_dir), "--dataset_name", str(data),
        "--output_dir", str(out), *length, "--per_device_train_batch_size", str(batch),
        "--learning_rate", "1e-3", "--max_length", "256", "--use_peft", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_dropout", "0.0", "--lora_target_modules", "all-linear", "--report_to", "none", "--use_cpu",
        "--save_strategy", "no", "--logging_steps", "10", "--disable_tqdm", "true",
        # trl sft defaults to bf16 + gradient checkpointing; llmtune's recipe says fp32 without
        "--bf16", "false", "--gradient_checkpointing", "false",
        *(["--packing"] if packing else []),
    ]  # fmt: skip


# each case's llmtune run folder (recipe()'s `name`), where its metrics.jsonl is
RUN_NAMES = {
    "SFT LoRA, unpacked (vs trl sft)": "sft",
    "SFT LoRA, packed (vs trl sft --packing)": "sft-packed",
    "SFT LoRA, 1 epoch: llmtune packed vs trl sft unpacked": "sft-epoch",
    "classification LoRA (vs HF Trainer script)": "cls",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="best of N per command")
    parser.add_argument("--threads", default="2", help="OMP_NUM_THREADS for every command (same for both)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "finetune.md")
    args = parser.parse_args()
    started, load_before = now(), load()
    os.environ["OMP_NUM_THREADS"] = args.threads
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_dir = build_models(folder)
        sft = write_sft_rows(folder)
        llmtune = [str(BIN / "llmtune"), "finetune"]
        s, b = args.steps, args.batch
        cases = {
            "SFT LoRA, unpacked (vs trl sft)": (
                llmtune + [str(recipe(folder, "sft", model_dir, "causal_lm", s, b, False))],
                trl_sft(model_dir, sft, folder / "trl", s, b, False),
            ),
            "SFT LoRA, packed (vs trl sft --packing)": (
                llmtune + [str(recipe(folder, "sft-packed", model_dir, "causal_lm", s, b, True))],
                trl_sft(model_dir, sft, folder / "trl-packed", s, b, True),
            ),
            # packing's gain is fewer steps for the same rows: one epoch each, not equal steps
            "SFT LoRA, 1 epoch: llmtune packed vs trl sft unpacked": (
                llmtune + [str(recipe(folder, "sft-epoch", model_dir, "causal_lm", None, b, True))],
                trl_sft(model_dir, sft, folder / "trl-epoch", None, b, False),
            ),
            "classification LoRA (vs HF Trainer script)": (
                llmtune + [str(recipe(folder, "cls", model_dir, "classification", s, b, False))],
                [
                    sys.executable,
                    "-c",
                    PLAIN_TRAINER,
                    str(model_dir),
                    str(DATA),
                    str(folder / "plain"),
                    str(s),
                    str(b),
                ],
            ),
        }
        rows = []
        for name, (ours, theirs) in cases.items():
            best = {"ours": [float("inf")] * 3, "theirs": [float("inf")] * 3}
            for _ in range(args.repeats):  # alternate, so that load on the machine hits both alike
                for side, command in (("ours", ours), ("theirs", theirs)):
                    run_dir = Path(tmp) / "runs" / RUN_NAMES[name] if side == "ours" else None
                    best[side] = [min(a, b) for a, b in zip(best[side], measure(command, run_dir))]
            rows.append((name, best["ours"], best["theirs"]))
            print(f"done: {name}", file=sys.stderr)
    lines = [
        f"{args.steps} steps, batch {args.batch}, tiny llama (hidden 64, 2 layers), LoRA r=8, "
        f"{os.cpu_count()} CPU cores, {args.threads} torch thread(s); best of {args.repeats}",
        "",
        "| case | llmtune s | library s | time ratio | train loop ratio | llmtune MiB | library MiB | memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ours, theirs in rows:
        lines.append(
            f"| {name} | {ours[0]:.1f} | {theirs[0]:.1f} | {ours[0] / theirs[0]:.2f} | {ours[1] / theirs[1]:.2f} | "
            f"{ours[2]:.0f} | {theirs[2]:.0f} | {ours[2] / theirs[2]:.2f} |"
        )
    text = header(
        "Fine-tuning: llmtune finetune vs trl sft and a plain Trainer", this_command(), load_before, started
    )
    text += "\n" + "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
