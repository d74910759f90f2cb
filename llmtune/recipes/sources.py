"""The source vocabulary of a data section that mixes training sources: `Source` (files with a
share of the rows, and their own columns and template), `Replay` (general rows against
forgetting) and `MixtureData`, the data section that holds them. The recipe that trains on a
mixture composes it; the readers that draw the mixture (`llmtune.data.mixture`) take it as it is,
so neither imports the other's job."""

from __future__ import annotations

from pathlib import PurePath

from pydantic import Field, field_validator, model_validator

from llmtune.recipes.common import CANONICAL_FIELDS, Data, Section
from llmtune.recipes.paths import RecipePath


def _canonical(columns: dict[str, str] | None) -> dict[str, str] | None:
    unknown = [k for k in columns or {} if k not in CANONICAL_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown canonical field(s) {unknown}; expected some of {', '.join(CANONICAL_FIELDS)}"
        )
    return columns


class Source(Section):
    """One training source of a mixture: its own file(s), share of the rows and, if needed, its
    own columns and template."""

    path: RecipePath | list[RecipePath]
    """File, glob or list, relative to this file."""
    weight: float = Field(1.0, gt=0)
    """Sampling probability of this source (weights are normalised to sum to 1)."""
    name: str | None = None
    """Name in the report; default: the file's stem."""
    columns: dict[str, str] | None = None
    """Canonical field -> column name for this source; default: data.columns."""
    template: str | None = None
    """Template for this source's rows; default: data.template."""

    @field_validator("columns")
    @classmethod
    def _canonical_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _canonical(value)

    def label(self) -> str:
        """The source's name in the report: `name`, else the stem of its (first) file."""
        if self.name:
            return self.name
        first = self.path if isinstance(self.path, str) else self.path[0]
        return PurePath(first).stem or "train"


class Replay(Section):
    """General rows mixed into every epoch against catastrophic forgetting."""

    path: RecipePath | list[RecipePath]
    """File, glob or list of general rows, relative to this file."""
    ratio: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of each epoch's rows that are replayed general rows."""
    columns: dict[str, str] | None = None
    """Canonical field -> column name in the replay files; default: data.columns."""
    template: str | None = None
    """Template for the replay rows; default: data.template."""

    @field_validator("columns")
    @classmethod
    def _canonical_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _canonical(value)


class MixtureData(Data):
    """A data section whose training rows may come from several sources: one training set, or a
    weighted mixture of sources, plus replay."""

    train: RecipePath | list[RecipePath] | list[Source] | None = None  # type: ignore[assignment]
    """File, glob or list (relative to this file): .jsonl .json .csv .tsv .parquet .txt, or a
    datasets save_to_disk folder. A list of {path, weight, columns, template} mixes several
    sources (multi-task) by weight."""
    replay: Replay | None = None
    """{path: general.jsonl, ratio: 0.2}: general rows mixed into every epoch against forgetting."""

    def is_mixture(self) -> bool:
        """Whether train is a list of weighted sources."""
        return isinstance(self.train, list) and any(isinstance(s, Source) for s in self.train)

    def is_composite(self) -> bool:
        """Whether the training rows are drawn from several sources (a mixture, or replay): every
        row then carries its source, and a head task's rows arrive with their model input
        rendered (`llmtune.data.mixture`)."""
        return self.is_mixture() or self.replay is not None

    def task_sources(self) -> list[tuple[str, Source]]:
        """(recipe key, source) of every task source; a plain train is one source named `train`."""
        mixed = [s for s in self.train if isinstance(s, Source)] if isinstance(self.train, list) else []
        if mixed:
            return [(f"data.train[{i}]", source) for i, source in enumerate(mixed)]
        return [("data.train", Source(path=self.train, name="train"))]  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _distinct_sources(self) -> MixtureData:
        names = [s.label() for s in self.train if isinstance(s, Source)] if self.is_mixture() else []
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two data.train sources are named {twice[0]!r}: give each a distinct `name`")
        if self.replay is not None and "replay" in names:
            raise ValueError("the source name 'replay' is taken by data.replay: rename that source")
        return self
