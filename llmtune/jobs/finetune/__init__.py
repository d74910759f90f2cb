"""`llmtune finetune`: classification heads (`classification.py`), causal-LM SFT (`sft.py`) and
hyper-parameter sweeps over either (`sweep.py`)."""

from llmtune.jobs.finetune.job import run

__all__ = ["run"]
