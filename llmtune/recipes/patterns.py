"""User-supplied regular expressions (rule rewards, prompt-eval's answer_pattern), compiled with
RE2: it runs in time linear in the text, so no pattern can spin on a response (Python's `re`
backtracks: `(?s)(.+)+QQQ9` takes minutes on a few KB). RE2 has no backreferences and no
lookaround; a pattern that needs them is refused when the recipe is read (exit 2), naming it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Any:
    """`pattern` compiled with RE2 (`.search(text)` gives a match with `.group()`/`.groups()`, as
    `re` does); ValueError with the reason when RE2 cannot compile it."""
    import re2

    options = re2.Options()
    options.log_errors = False  # the reason is in the exception; RE2 would also print it to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = (
            exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        )
        raise ValueError(
            f"pattern {pattern!r} is not a regular expression llmtune can run in bounded time: {reason} "
            "(patterns run on RE2, linear in the text: no backreferences like \\1, no lookaround "
            "like (?=...) or (?<!...))"
        ) from None
