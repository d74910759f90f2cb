"""How `llmtune --help` and each verb's `--help` read: the verb list with each description in
full (wrapped, never cut with "..."), and usage lines that name a required argument plainly."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup


class Verbs(TyperGroup):
    """The verb list of `llmtune --help`: each verb's first paragraph in full, wrapped, never cut."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, " ".join((command.help or "").split("\n\n")[0].split())))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class Verb(TyperCommand):
    """A verb whose usage line names a required argument plainly (`RECIPE`, not `{RECIPE}`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [piece.replace("{", "").replace("}", "") for piece in super().collect_usage_pieces(ctx)]
