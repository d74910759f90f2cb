"""prompt-eval's checks on generated text: assertions (data, never code), a judge model, and the
statistics every table carries. Part of the `prompt-eval` recipe (llmtune/recipes/prompt_eval.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llmtune.recipes.common import ModelRef, Section

AssertionType = Literal[
    "contains", "not_contains", "regex", "is_json", "json_schema", "max_length", "min_length", "one_of"
]
# what `value` must be for each assertion type (None: no value)
VALUE_KINDS: dict[str, str | None] = {
    "contains": "text",
    "not_contains": "text",
    "regex": "text",
    "is_json": None,
    "json_schema": "schema",
    "max_length": "count",
    "min_length": "count",
    "one_of": "texts",
}
DEFAULT_JUDGE_TEMPLATE = """\
{{ rubric }}

Question: {{ text }}
Answer: {{ output }}
{% if reference %}Reference answer: {{ reference }}
{% endif %}Rate the answer from {{ low }} to {{ high }}. Reply with the number only.
Score:"""


class Assertion(Section):
    """One check on every generated output (promptfoo-style); each gives a pass rate per pair."""

    type: AssertionType
    """contains / not_contains: `value` is (not) in the output; regex: RE2 pattern `value` is found
    in it (linear time: no catastrophic backtracking, no look-around or back-references); is_json:
    the output parses as JSON; json_schema: it parses and matches the JSON Schema `value`;
    max_length / min_length: at most / at least `value` characters; one_of: the output (stripped)
    is one of the texts in `value`."""
    value: str | int | list[str] | dict[str, Any] | None = None
    """What the assertion compares with (see type); none for is_json."""
    name: str | None = None
    """Its name in tables and gates (pass_rate:NAME); default: the type. Two assertions of one type
    need names."""
    ignore_case: bool = False
    """contains, not_contains, one_of: compare without regard to case."""

    @model_validator(mode="after")
    def _value_fits_type(self) -> Assertion:
        kind = VALUE_KINDS[self.type]
        value = self.value
        if kind is None and value is not None:
            raise ValueError(f"{self.type} takes no value")
        if kind == "text" and (not isinstance(value, str) or not value):
            raise ValueError(f"{self.type} needs value: a non-empty text")
        if kind == "count" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{self.type} needs value: a number of characters (0 or more)")
        if kind == "texts" and (not isinstance(value, list) or not value):
            raise ValueError(f"{self.type} needs value: a list of texts")
        if kind == "schema" and not isinstance(value, dict):
            raise ValueError(f"{self.type} needs value: a JSON Schema (a mapping)")
        if self.type == "regex":
            check_regex(str(value))
        if self.type == "json_schema":
            check_json_schema(value)  # type: ignore[arg-type]
        return self

    @property
    def label(self) -> str:
        """The assertion's name: its own, else its type."""
        return self.name or self.type


INSTALL = "pip install 'llmtune[eval]'"


def require(module: str, package: str) -> Any:
    """Import an optional package of the `eval` extra, or ValueError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"needs the {package} package: {INSTALL}") from None


def check_regex(pattern: str) -> None:
    """ValueError unless RE2 compiles `pattern` (RE2 refuses what could take exponential time)."""
    re2 = require("re2", "google-re2")

    try:
        re2.compile(pattern)
    except re2.error as exc:
        raise ValueError(
            f"not a valid RE2 regular expression ({exc}); RE2 has no look-around or back-references"
        ) from None


def check_json_schema(schema: dict[str, Any]) -> None:
    """ValueError unless `schema` is a valid JSON Schema (for its declared draft, else the latest)."""
    jsonschema = require("jsonschema", "jsonschema")

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None


class Judge(Section):
    """A model that scores each output by a rubric, at temperature 0, through llmtune's engine."""

    model: ModelRef
    """The judge model (a causal LM); loaded once, after every pair has generated."""
    rubric: str
    """What a good answer is, in words; put in the template as {{ rubric }}."""
    scale: list[int] = Field(default_factory=lambda: [1, 5])
    """Lowest and highest score, e.g. [1, 5]; a reply outside it is unparseable."""
    template: str = DEFAULT_JUDGE_TEMPLATE
    """Sandboxed Jinja2 template of the judge's prompt over {{ rubric }}, {{ output }} (the answer),
    {{ reference }} (the gold answer), {{ low }}, {{ high }} and the row's fields ({{ text }}...)."""
    score_pattern: str = r"(?i)\bscore\s*:\s*(\d+(?:\.\d+)?)"
    """The rubric's own reply format; its group is the score. A reply that is a bare number also
    counts; anything else (several different scores, a number outside the scale) is unparseable."""
    chat: bool = False
    """Apply the judge's chat template (instruction-tuned judges)."""
    system: str | None = None
    """System message (chat: true)."""
    max_new_tokens: int = Field(16, ge=1)
    """Tokens the judge may generate per reply."""
    stop: list[str] = Field(default_factory=list)
    """Texts that end a reply, e.g. a line break."""

    @field_validator("scale")
    @classmethod
    def _two_ordered(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or value[0] >= value[1]:
            raise ValueError("expected [lowest, highest] with lowest < highest, e.g. [1, 5]")
        return value

    @field_validator("score_pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        import re

        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if groups != 1:
            raise ValueError(f"needs exactly one group (the score); it has {groups}")
        return value


class Statistics(Section):
    """Intervals and paired tests on every table."""

    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Level of every interval; a difference is marked significant when p < 1 - confidence."""
    resamples: int = Field(1000, ge=100, le=100000)
    """Bootstrap resamples (seeded by the recipe's seed) for the metrics that are not proportions."""
