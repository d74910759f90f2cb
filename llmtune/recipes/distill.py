"""The `distill` recipe: a smaller student that keeps most of a teacher's quality."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmtune.recipes.common import Data, ModelRef, RecipeBase, ScratchModel, Section, Training


class FromTeacher(Section):
    """Build the student by keeping some of the teacher's layers."""

    layers: list[int]
    """Indices of the teacher's blocks the student keeps."""


class StudentRef(Section):
    """The student: a copy of some teacher layers, a model path, or a scratch model."""

    from_teacher: FromTeacher | None = None
    """Keep these teacher layers."""
    path: str | None = None
    """Hub id or local directory of the student."""
    scratch: ScratchModel | None = None
    """A small model built from scratch."""

    @model_validator(mode="after")
    def _exactly_one(self) -> StudentRef:
        given = [x for x in (self.from_teacher, self.path, self.scratch) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of from_teacher, path or scratch")
        return self


class DistillRecipe(RecipeBase):
    """Teacher bulk-labels the transfer set; the student trains on its soft or hard labels."""

    kind: Literal["distill"] = "distill"
    """Which job this recipe is for."""
    task: Literal["classification", "causal_lm"] = "classification"
    """classification: soft/hard labels; causal_lm: token logits or teacher generations."""
    teacher: ModelRef
    """The model whose quality the student should keep."""
    student: StudentRef
    """The smaller model that learns from the teacher."""
    labels: list[str] | None = None
    """classification: label names; default: the teacher's id2label."""
    strategy: Literal["soft_labels", "hard_labels", "logits", "sequences"] = "soft_labels"
    """soft_labels | hard_labels (classification); logits | sequences (causal_lm)."""
    temperature: float = Field(2.0, gt=0)
    """Softens the teacher's distribution."""
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the distillation loss against gold labels where rows have them."""
    data: Data
    """Transfer set (train) and test rows."""
    training: Training = Field(default_factory=Training)
    """Optimisation settings of the student."""

    @model_validator(mode="after")
    def _strategy_fits_task(self) -> DistillRecipe:
        fits = {"classification": ("soft_labels", "hard_labels"), "causal_lm": ("logits", "sequences")}
        if self.strategy not in fits[self.task]:
            raise ValueError(
                f"strategy {self.strategy} does not apply to task {self.task}; "
                f"expected one of {', '.join(fits[self.task])}"
            )
        return self
