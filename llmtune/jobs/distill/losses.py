"""The distillation losses and the HF Trainer that applies them.

Classification (Hinton et al., 2015): the student's and the teacher's distributions are softened
by the temperature T and compared with KL(teacher || student), scaled by T^2 so that the
gradients keep their size as T changes; on rows with a gold label this is mixed with
cross-entropy on the gold label (`alpha` weighs the distillation part). hard_labels replaces the
soft target by the teacher's argmax. Regression: the student regresses the teacher's score (MSE),
mixed with the gold score the same way.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

NO_GOLD = -100  # the gold column of a row without a gold label (cross-entropy's ignore index)
# teacher probabilities are stored as the engine gives them; a 0 (float underflow) becomes this
SMALLEST_PROBABILITY = 1e-30


def distillation_loss(
    student_logits: Any,
    teacher_probs: Any,
    gold: Any,
    *,
    temperature: float,
    alpha: float,
    hard: bool = False,
) -> Any:
    """Mean over the batch of alpha * distill + (1 - alpha) * CE(gold) on rows with a gold label
    (gold >= 0) and of distill alone on the others; distill is T^2 * KL(teacher_T || student_T)
    (soft) or CE(teacher argmax) (hard)."""
    import torch
    import torch.nn.functional as F

    logits = student_logits.float()
    if hard:
        distill = F.cross_entropy(logits, teacher_probs.argmax(-1), reduction="none")
    else:
        # softmax(log p / T) == softmax(z / T): the teacher's logits z are log p up to a constant
        teacher_log = F.log_softmax(
            teacher_probs.float().clamp(min=SMALLEST_PROBABILITY).log() / temperature, -1
        )
        student_log = F.log_softmax(logits / temperature, -1)
        distill = (teacher_log.exp() * (teacher_log - student_log)).sum(-1) * temperature**2
    has_gold = gold >= 0
    ce = F.cross_entropy(logits, gold.clamp(min=0), reduction="none")
    return torch.where(has_gold, alpha * distill + (1 - alpha) * ce, distill).mean()


def regression_loss(
    student_scores: Any, teacher_scores: Any, gold: Any, has_gold: Any, *, alpha: float
) -> Any:
    """Mean of alpha * MSE(teacher) + (1 - alpha) * MSE(gold) on rows with a gold score, MSE to the
    teacher's score on the others."""
    import torch

    predicted = student_scores.float().view(-1)
    distill = (predicted - teacher_scores.float()) ** 2
    supervised = (predicted - gold.float()) ** 2
    return torch.where(has_gold, alpha * distill + (1 - alpha) * supervised, distill).mean()


class DistillationTrainer(Trainer):
    """The HF Trainer with the distillation loss: batches carry `teacher` (the teacher's
    probabilities per label) and `gold` (label index, or NO_GOLD) beside the model inputs."""

    def __init__(self, *args: Any, temperature: float, alpha: float, hard: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temperature, self.alpha, self.hard = temperature, alpha, hard

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        teacher, gold = inputs.pop("teacher"), inputs.pop("gold")
        outputs = model(**inputs)
        loss = distillation_loss(
            outputs.logits, teacher, gold, temperature=self.temperature, alpha=self.alpha, hard=self.hard
        )
        return (loss, outputs) if return_outputs else loss


class Collator:
    """Pads the token columns with the tokenizer; stacks the teacher and gold columns."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        tokens = [{k: f[k] for k in ("input_ids", "attention_mask")} for f in features]
        batch = dict(self.tokenizer.pad(tokens, return_tensors="pt"))
        if "teacher" in features[0]:
            batch["teacher"] = torch.tensor([f["teacher"] for f in features], dtype=torch.float32)
        if "gold" in features[0]:
            batch["gold"] = torch.tensor([f["gold"] for f in features], dtype=torch.long)
        return batch


class ScoreDistillationTrainer(Trainer):
    """The HF Trainer with `regression_loss`: batches carry `teacher` (the teacher's score),
    `gold` (the gold score, 0 where missing) and `has_gold` beside the model inputs, all in the
    head's units (0..1 of the teacher's label_range when it has one)."""

    def __init__(self, *args: Any, alpha: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = alpha

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        teacher, gold, has_gold = inputs.pop("teacher"), inputs.pop("gold"), inputs.pop("has_gold")
        outputs = model(**inputs)
        loss = regression_loss(outputs.logits, teacher, gold, has_gold, alpha=self.alpha)
        return (loss, outputs) if return_outputs else loss


class ScoreCollator:
    """Pads the token columns with the tokenizer; stacks the teacher, gold and has_gold columns."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        tokens = [{k: f[k] for k in ("input_ids", "attention_mask")} for f in features]
        batch = dict(self.tokenizer.pad(tokens, return_tensors="pt"))
        for name, dtype in (("teacher", torch.float32), ("gold", torch.float32), ("has_gold", torch.bool)):
            batch[name] = torch.tensor([f[name] for f in features], dtype=dtype)
        return batch
