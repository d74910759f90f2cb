"""Prompt templates: Jinja2 in a sandbox, with missing fields reported before any work starts."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmtune.errors import BadInput


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    # StrictUndefined: a field the row lacks is an error, never a silent empty string.
    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


class Template:
    """A compiled template; `render(row)` raises BadInput naming the missing field."""

    def __init__(self, source: str, *, where: str) -> None:
        self.source = source
        self.where = where
        env = _environment()
        try:
            parsed = env.parse(source)
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise BadInput(
                f"template syntax error on template line {exc.lineno}: {exc.message}", key=where
            ) from None
        self.fields = sorted(meta.find_undeclared_variables(parsed))

    def check_fields(
        self, available: set[str], *, file: str | None = None, extra: set[str] = frozenset()
    ) -> None:
        """Refuse a template that names a field the rows do not have."""
        missing = [f for f in self.fields if f not in available and f not in extra]
        if missing:
            raise BadInput(
                f"template uses {', '.join(missing)} but the rows only have "
                f"{', '.join(sorted(available)) or 'no fields'}",
                file=file,
                key=self.where,
            )

    def render(self, row: dict[str, Any]) -> str:
        """Fill the template from one row."""
        try:
            return self._template.render(**row)
        except jinja2.UndefinedError as exc:
            raise BadInput(f"template: {exc.message}", key=self.where) from None
        except jinja2.exceptions.SecurityError as exc:
            raise BadInput(f"template not allowed in the sandbox: {exc}", key=self.where) from None
