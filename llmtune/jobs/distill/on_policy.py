"""`strategy: on_policy` (causal_lm): the student generates, the teacher scores its tokens.

Wraps TRL's `DistillationTrainer` (Agarwal et al., 2024, "On-Policy Distillation of Language
Models"): at every step the student samples a completion for each transfer prompt, and learns the
teacher's next-token distribution at every token of its own completion, under TRL's generalised
Jensen-Shannon divergence (`beta`: 0 forward KL, 1 reverse KL, between JSD) at `temperature`.
TRL 1.16's trainer is fully on-policy (no mixing with the data's completions): the transfer rows
need only a prompt, and gold completions in the transfer set are not used.

TRL uses one temperature for sampling the completions and for the divergence, so the recipe's
`temperature` is both here; `generation.max_new_tokens` bounds each completion and
`generation.top_p` filters the sampling (`generation.temperature` and `generation.stop` apply to
the test answers only). The training arguments are the ones every job gets
(`training_arguments`), so checkpoints, --resume and a graceful stop work as for the others;
they also override the config's own defaults (bf16, gradient checkpointing, a 1e-6 learning
rate) with the recipe's training section.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import BadInput
from llmtune.runs.rundir import RunDir
from llmtune.runs.training import callbacks, training_arguments


def check_output_widths(teacher: Any, student: Any) -> None:
    """TRL compares the two models' config vocab_size (not only the tokenizers): refuse a
    difference before the trainer does it with a ValueError mid-run."""
    sizes = {
        name: m.config.get_text_config().vocab_size
        for name, m in (("teacher", teacher), ("student", student))
    }
    if sizes["teacher"] != sizes["student"]:
        raise BadInput(
            f"strategy: on_policy (TRL's DistillationTrainer) needs teacher and student configs with the same "
            f"vocab_size; the teacher's is {sizes['teacher']}, the student's {sizes['student']}. Use a student "
            "built from_teacher, or one whose embedding matrix has the teacher's size",
            key="student",
        )


def prompt_datasets(prompts: dict[str, list[str]]) -> dict[str, Any]:
    """prompt-only rows for TRL (the student writes the completions); None for an empty split."""
    import datasets

    return {
        name: datasets.Dataset.from_dict({"prompt": prompts[name]}) if prompts[name] else None
        for name in ("train", "validation")
    }


def on_policy_trainer(job: Any, run_dir: RunDir) -> Any:
    """TRL's DistillationTrainer over the job's transfer (and validation) prompts, the student
    learning the frozen teacher's distributions over its own sampled completions."""
    from trl import DistillationConfig, DistillationTrainer

    recipe = job.recipe
    data = prompt_datasets(job.prompts)
    has_validation = data["validation"] is not None
    args = training_arguments(
        job.training,
        run_dir.path,
        device=job.student.device,
        seed=recipe.seed,
        has_validation=has_validation,
        extra={
            "beta": recipe.beta,
            "temperature": recipe.temperature,
            "top_p": recipe.generation.top_p,
            "max_completion_length": recipe.generation.max_new_tokens,
        },
        args_class=DistillationConfig,
    )
    return DistillationTrainer(
        model=job.student.model,
        teacher_model=job.teacher.model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=job.student.tokenizer,
        callbacks=callbacks(job.training, run_dir, has_validation),
    )
