"""Token-level distillation for causal LMs (`strategy: logits`).

At every completion token the student's next-token distribution is pulled towards the
teacher's with the generalised Jensen-Shannon divergence of GKD (Agarwal et al., 2024), as TRL
computes it (`GKDTrainer.generalized_jsd_loss`): beta 0 is the forward KL(teacher || student),
1 the reverse KL(student || teacher), in between the JSD with mixture weight beta; both
distributions are softened by the temperature T and the divergence is scaled by T^2 (as the
classification loss is, so that the gradients keep their size as T changes). `alpha` mixes it
with the cross-entropy of the data's completion tokens. The teacher runs frozen, without
gradients, on the same tokens in the loss itself: no teacher logits are stored.

Vocabularies: teacher and student must share one tokenizer vocabulary; an embedding padded with
a few unused rows (Qwen: config.vocab_size > len(tokenizer)) is the same vocabulary, so the
logits of both are cut to the tokenizer's size before they are compared.
"""

from __future__ import annotations

import os
from typing import Any

from trl import SFTTrainer

from llmtune.errors import BadInput

IGNORE = -100  # labels of prompt and padding tokens


def generalized_jsd(
    student_logits: Any, teacher_logits: Any, labels: Any, *, beta: float, temperature: float
) -> Any:
    """TRL GKD's generalised JSD, mean over the tokens whose label is not IGNORE (logits already
    aligned with `labels`: position t predicts labels[t])."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GKD lives in trl.experimental
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss(
        student_logits,
        teacher_logits,
        labels=labels,
        beta=beta,
        temperature=temperature,
        reduction="batchmean",
    )


def token_distillation_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    *,
    vocab_size: int,
    beta: float,
    temperature: float,
    alpha: float,
) -> Any:
    """alpha * T^2 * JSD_beta(teacher_T, student_T) + (1 - alpha) * CE(labels), both averaged over
    the completion tokens. Logits are (batch, length, vocab) over the same input ids; `labels`
    are the input ids with IGNORE on prompt and padding; the logits at position t predict the
    token at t + 1 (shifted here); both are cut to `vocab_size` (the tokenizer's)."""
    import torch.nn.functional as F

    student = student_logits[:, :-1, :vocab_size].float()
    teacher = teacher_logits[:, :-1, :vocab_size].float()
    target = labels[:, 1:]
    distill = generalized_jsd(student, teacher, target, beta=beta, temperature=temperature) * temperature**2
    if alpha >= 1.0:
        return distill
    ce = F.cross_entropy(student.reshape(-1, student.size(-1)), target.reshape(-1), ignore_index=IGNORE)
    return alpha * distill + (1 - alpha) * ce


def shared_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any, strategy: str = "logits") -> int:
    """The size of the vocabulary teacher and student share (their tokenizers' token -> id maps
    must be equal), else BadInput: logits over different vocabularies cannot be compared."""
    teacher, student = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher != student:
        differing = sorted(set(teacher.items()) ^ set(student.items()), key=lambda kv: kv[1])[:3]
        shown = ", ".join(f"{token!r}: {i}" for token, i in differing)
        raise BadInput(
            f"strategy: {strategy} compares token distributions, so teacher and student need the same "
            f"vocabulary; theirs differ ({len(teacher)} and {len(student)} tokens; e.g. {shown}). Use a "
            "student with the teacher's tokenizer (from_teacher, or a model of the same family), or "
            "strategy: sequences, which works across tokenizers",
            key="student",
        )
    return len(teacher_tokenizer)


def check_logit_widths(teacher: Any, student: Any, vocab_size: int) -> None:
    """Both models' output layers cover the shared vocabulary (extra padding rows are fine)."""
    for name, model in (("teacher", teacher), ("student", student)):
        width = model.get_output_embeddings().weight.shape[0]
        if width < vocab_size:
            raise BadInput(
                f"the {name}'s output layer has {width} rows but its tokenizer {vocab_size} tokens",
                key=name,
            )


class LogitsDistillationTrainer(SFTTrainer):
    """TRL's SFTTrainer (tokenizing, completion masks, padding, checkpoints) whose loss is
    `token_distillation_loss` against a frozen teacher run on the same batch."""

    def __init__(
        self,
        *args: Any,
        teacher: Any,
        vocab_size: int,
        beta: float,
        temperature: float,
        alpha: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.distill = {"vocab_size": vocab_size, "beta": beta, "temperature": temperature, "alpha": alpha}

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        import torch

        labels = inputs["labels"]
        forward = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
        outputs = model(**forward, use_cache=False)
        with torch.no_grad():
            teacher_logits = self.teacher(**forward, use_cache=False).logits
        loss = token_distillation_loss(outputs.logits, teacher_logits, labels, **self.distill)
        return (loss, outputs) if return_outputs else loss
