"""The `distill` recipe: a smaller student that keeps most of a teacher's quality."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmtune.recipes.common import Data, ModelRef, RecipeBase, Section, Training
from llmtune.recipes.distributed import Distributed
from llmtune.recipes.engines import VllmSettings

STRATEGIES = {
    "classification": ("soft_labels", "hard_labels"),
    "regression": ("scores",),
    "causal_lm": ("logits", "sequences", "on_policy"),
}


class FromTeacher(Section):
    """Build the student from the teacher: its embeddings, the chosen blocks and its head
    (DistilBERT's initialisation)."""

    layers: list[int] = Field(min_length=1)
    """Indices of the teacher's blocks the student keeps, e.g. [0, 2, 4] (every other block of a
    6-block teacher); each at most once, in increasing order."""

    @field_validator("layers")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(i < 0 for i in value) or value != sorted(set(value)):
            raise ValueError(f"expected distinct block indices >= 0 in increasing order, got {value}")
        return value

    trim_vocab: bool = False
    """The same as student.trim_vocab (either turns it on)."""


class DistillGeneration(Section):
    """How causal_lm completions are generated: the teacher's (`sequences`), the student's
    (`on_policy`), and both models' greedy answers to the test prompts (exact match, tokens/s)."""

    max_new_tokens: int = Field(64, ge=1)
    """Longest completion, in tokens (on_policy: of each completion the student samples while it
    trains)."""
    temperature: float = Field(0.0, ge=0.0)
    """0 is greedy (the teacher's most likely completion); above 0 samples. Test answers are
    always greedy. on_policy samples at the recipe's `temperature` instead (TRL uses one
    temperature for sampling and for the divergence)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling when temperature > 0; on_policy: of the student's training samples."""
    stop: list[str] = Field(default_factory=list)
    """Completions are cut before the first of these strings (e.g. ["\n"]); not applied to the
    student's on_policy training samples, which end at EOS or max_new_tokens."""


class StudentRef(ModelRef):
    """The student: teacher blocks (`from_teacher`), a model `path`, or a `scratch` model; its
    loading settings (dtype, device, ...) as for any model reference."""

    from_teacher: FromTeacher | None = None
    """Copy the teacher's embeddings, these blocks and the head."""
    trim_vocab: bool = False
    """Keep only the vocabulary the transfer, validation and test data use (plus special tokens and
    single characters, so that any text still encodes): in small encoders the embedding matrix is
    much of the model. The student saves as a standard model + tokenizer. WordPiece and BPE
    tokenizers (tokenizer.json)."""

    @model_validator(mode="after")
    def _path_or_scratch(self) -> StudentRef:
        # overrides ModelRef's rule: from_teacher is a third way to name the student
        given = [x for x in (self.from_teacher, self.path, self.scratch) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of from_teacher, path or scratch")
        if self.adapter is not None and self.from_teacher is not None:
            raise ValueError("adapter is for a student given by path")
        return self

    @property
    def trims_vocab(self) -> bool:
        """Whether the vocabulary is trimmed (student.trim_vocab or from_teacher.trim_vocab)."""
        return self.trim_vocab or bool(self.from_teacher and self.from_teacher.trim_vocab)

    def describe(self) -> str:
        """A short human name for tables and logs."""
        trimmed = " (vocabulary trimmed)" if self.trims_vocab else ""
        if self.from_teacher is not None:
            return f"teacher blocks {self.from_teacher.layers}{trimmed}"
        return super().describe() + trimmed


class DistillRecipe(RecipeBase):
    """A smaller student learns from a teacher; the report compares both on the test rows.

    Strategies by task:
    - classification, `soft_labels`: the teacher's label probabilities (KL at `temperature`,
      mixed by `alpha` with cross-entropy on gold labels); `hard_labels`: its argmax.
    - regression, `scores`: the teacher's score (a regression head, e.g. from finetune
      task: regression), MSE mixed by `alpha` with gold scores; student and teacher both predict
      one number.
    - causal_lm (rows: `prompt`, or data.template, plus `completion`): `sequences` — the teacher
      generates a completion per prompt (`generation`), the student is SFT-trained on them (any
      tokenizers); `logits` — token-level distillation on the teacher's distributions over the
      data's completions (`beta`, `temperature`, mixed by `alpha` with the completion's
      cross-entropy; same vocabulary); `on_policy` — at every step the student samples a
      completion per transfer prompt (`generation.max_new_tokens`, `generation.top_p`, at
      `temperature`) and learns the teacher's distributions over its own tokens (`beta`,
      `temperature`; TRL's DistillationTrainer; same vocabulary; transfer rows need only a
      prompt, `alpha` and gold completions do not apply).
    Teacher outputs (labels, scores, generations) are journaled in the run directory: a stopped
    run continued with --resume does not recompute them.
    """

    kind: Literal["distill"] = "distill"
    """Which job this recipe is for."""
    task: Literal["classification", "regression", "causal_lm"] = "classification"
    """classification: soft/hard labels; regression: the teacher's scores; causal_lm: token
    logits, teacher generations, or on-policy generations scored by the teacher."""
    teacher: ModelRef
    """The model whose quality the student should keep (a run's model/, a hub id, + adapter)."""
    student: StudentRef
    """The smaller model that learns from the teacher; refused when it is not smaller."""
    labels: list[str] | None = None
    """classification: label names; default: the teacher's head's names. A student given by path
    must have the same label set."""
    strategy: Literal["soft_labels", "hard_labels", "scores", "logits", "sequences", "on_policy"] = (
        "soft_labels"
    )
    """soft_labels: KL divergence to the teacher's distribution at `temperature`; hard_labels:
    cross-entropy on the teacher's argmax (classification); scores: MSE to the teacher's score
    (regression); causal_lm: logits (token-level distillation on the data's completions, same
    vocabulary), sequences (the teacher writes completions, the student is SFT-trained on them;
    any tokenizer) or on_policy (the student samples, the teacher's next-token distributions are
    the target, through TRL's DistillationTrainer; same vocabulary)."""
    temperature: float = Field(2.0, gt=0)
    """Softens both distributions before they are compared; the KL term is scaled by T^2
    (Hinton et al.) so that its gradients keep their size. causal_lm on_policy: TRL's
    DistillationTrainer samples the student's completions at this temperature too, and does not
    scale its divergence by T^2."""
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the distillation loss against the gold-label loss on rows that have a gold label
    (rows without one learn from the teacher alone); causal_lm logits: against the cross-entropy
    of the data's completion. sequences and on_policy learn from the teacher alone."""
    beta: float = Field(0.0, ge=0.0, le=1.0)
    """causal_lm logits / on_policy: 0 forward KL(teacher || student), 1 reverse
    KL(student || teacher), in between the generalised Jensen-Shannon divergence of TRL's GKD
    (0.5: the usual JSD)."""
    baseline: bool = True
    """Also train the same student on the gold labels (scores) alone, to show what distillation
    bought (needs transfer rows with gold labels; false skips it, for speed). causal_lm: no
    baseline yet."""
    data: Data
    """Transfer set (train: may be unlabelled; labelled rows also count as gold), optional
    validation, and labelled test rows on which teacher and student are compared."""
    training: Training = Field(default_factory=Training)
    """Optimisation settings of the student."""
    distributed: Distributed = Field(default_factory=Distributed)
    """Under torchrun / accelerate launch with several processes: ddp, fsdp or deepspeed."""
    engine: Literal["hf", "vllm", "onnx"] = "hf"
    """How the teacher labels or generates: hf (transformers, in this process); vllm (vLLM's
    offline LLM, for causal LM teachers; pip install 'llmtune[vllm]'); onnx (ONNX Runtime, for
    classification and regression teachers: the teacher exported once into engine onnx's cache;
    pip install 'llmtune[onnx]')."""
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    """engine: vllm settings."""

    measure_batch_size: int = Field(32, ge=1)
    """Rows per batch when teacher and student speed are measured on the test rows."""
    generation: DistillGeneration = Field(default_factory=DistillGeneration)
    """causal_lm: how completions are generated (teacher for sequences, student for on_policy,
    both for the test rows' exact match and tokens/s)."""

    @model_validator(mode="after")
    def _strategy_fits_task(self) -> DistillRecipe:
        if self.strategy not in STRATEGIES[self.task]:
            raise ValueError(
                f"strategy {self.strategy} does not apply to task {self.task}; "
                f"expected one of {', '.join(STRATEGIES[self.task])}"
            )
        if self.labels is not None and self.task != "classification":
            raise ValueError(f"labels are for task: classification, not {self.task}")
        if self.task == "causal_lm" and self.engine == "onnx":
            raise ValueError(
                "engine: onnx labels and scores with a classification or regression teacher but does "
                "not generate; a causal_lm teacher runs on engine: hf or vllm"
            )
        if self.task == "causal_lm" and self.student.trims_vocab:
            raise ValueError("trim_vocab is for classification and regression students (encoders)")
        return self
