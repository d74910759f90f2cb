"""One chat conversation: its messages, the slash commands that change it, and /save.

/save writes the conversation as one JSON line, {"messages": [...]}, the row format `llmtune
finetune` trains on. It never overwrites a file this session did not write (a second /save to
the same file updates it), never writes through a symlink, and writes atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.outputs import atomic_write_text

HELP = """commands:
  /reset         forget the conversation (the system message stays)
  /system TEXT   set the system message (and start over); /system alone removes it
  /save FILE     save the conversation as one JSON line {"messages": [...]}
  /help          this list
Ctrl-C stops a reply; Ctrl-D (or /exit) ends the session."""


@dataclass
class Conversation:
    """The messages so far, and the files this session saved."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    saved: set[Path] = field(default_factory=set)

    def messages(self) -> list[dict[str, str]]:
        """The messages as a chat template takes them."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def command(self, line: str) -> str | None:
        """Run a slash command; returns what to tell the user, or None to end the session."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return None
        if name == "/reset":
            self.turns.clear()
            return "conversation cleared"
        if name == "/system":
            self.system = arg or None
            self.turns.clear()
            return "system message set; conversation cleared" if arg else "system message removed"
        if name == "/save":
            return self.save(Path(arg).expanduser()) if arg else "usage: /save FILE"
        return HELP

    def save(self, path: Path) -> str:
        """Write the conversation to `path` (see the module docstring for what is refused)."""
        real = path.resolve() if not path.is_symlink() else path
        if path.is_symlink():
            return f"not saved: {path} is a symlink; llmtune never writes through one"
        if path.exists() and real not in self.saved:
            return f"not saved: {path} exists and this session did not write it; choose another file"
        if path.exists() and not path.is_file():
            return f"not saved: {path} is not a file"
        try:
            atomic_write_text(path, json.dumps({"messages": self.messages()}, ensure_ascii=False) + "\n")
        except OSError as exc:
            return f"not saved: {exc.strerror or exc}"
        self.saved.add(real)
        return f"saved {len(self.turns)} message(s) to {path}"
