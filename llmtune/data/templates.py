"""Prompt templates: Jinja2 in a sandbox, with missing fields reported before any work starts.

A template comes from a recipe, so it must not be able to take the machine down. Jinja2's
`ImmutableSandboxedEnvironment` already blocks attribute tricks and caps `range()`; on top of it:

- every value a template builds is kept under `MAX_PROMPT_CHARS` *before* it is built: the
  sandbox's `call_binop` hook checks `*`, `**`, `+` and `%`, a code-generator hook checks `~`,
  and the filters and string methods that multiply text by a number (`center`, `indent`,
  `replace`, `join`, `format`, `ljust`, ...) are checked from their arguments;
- the prompt is rendered through `Template.generate()` and stopped once it passes the budget;
- rendering one row may take `MAX_RENDER_SECONDS`: a timer (SIGALRM, in the main thread) stops
  loops that print nothing, and the time is also checked between the chunks of output.

A field that is null in a row counts as missing (never the text "None"); `{{ x | default('') }}`
and `{% if x is defined %}` handle optional fields. The limits and the render deadline are in
`template_limits.py`.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Callable
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmtune.data.template_limits import (
    MAX_INT_BITS,
    MAX_PROMPT_CHARS,
    MAX_RENDER_SECONDS,
    Deadline,
    TemplateLimit,
)
from llmtune.errors import BadInput


# ------------------------------------------------------------------ size checks
def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _check(size: int, what: str = "the text") -> None:
    if size > MAX_PROMPT_CHARS:
        raise TemplateLimit(
            f"{what} would be {size:,} characters or items, over the limit of {MAX_PROMPT_CHARS:,} per row"
        )


def _check_number(value: Any) -> None:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit(
            f"a number with {value.bit_length():,} bits is over the limit of {MAX_INT_BITS:,}"
        )


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too big, before computing it."""
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"a product over the limit of {MAX_INT_BITS:,} bits")
        elif isinstance(right, int) and _size(left):
            _check(_size(left) * max(right, 0), "a repeated value")
        elif isinstance(left, int) and _size(right):
            _check(_size(right) * max(left, 0), "a repeated value")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
        if right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
            raise TemplateLimit(f"{left} ** {right} is over the limit of {MAX_INT_BITS:,} bits")
    elif operator == "+":
        _check(_size(left) + _size(right), "a sum")
    elif operator == "%" and isinstance(left, str):
        _check_printf(left, right if isinstance(right, tuple) else (right,))


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\d+|\*)?(?:\.(\d+|\*))?")


def _check_printf(fmt: str, args: Any) -> None:
    """`'%1000000000d' % 1` builds a huge string from a short one: check widths first."""
    for width, precision in _PRINTF_SPEC.findall(fmt):
        for number in (width, precision):
            if number.isdigit():
                _check(int(number), "a formatted field")
            elif number == "*":
                values = args.values() if isinstance(args, dict) else args
                for arg in values:
                    if isinstance(arg, int):
                        _check(arg, "a formatted field")


def _check_str_format(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The same for `'{:>1000000000}'.format(x)` and nested widths `'{:{}}'.format(x, n)`."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will say what is wrong
    for _, _, spec, _ in fields:
        for number in re.findall(r"\d+", spec or ""):
            _check(int(number), "a formatted field")
        if spec and "{" in spec:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, int):
                    _check(arg, "a formatted field")


def _lines(text: str) -> int:
    return text.count("\n") + 1


def _width(value: Any) -> int:
    return value if isinstance(value, int) else _size(value)


# What each text-multiplying filter or str method would produce, from its arguments (the first
# argument is the text). Each returns an upper bound on the result's length.
_ESTIMATES: dict[str, Callable[..., int]] = {
    "center": lambda s, width=80, *_: max(len(str(s)), _width(width)),
    "ljust": lambda s, width=0, *_: max(len(s), _width(width)),
    "rjust": lambda s, width=0, *_: max(len(s), _width(width)),
    "zfill": lambda s, width=0, *_: max(len(s), _width(width)),
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t") * _width(tabsize),
    "indent": lambda s, width=4, *_, **__: len(str(s)) + _lines(str(s)) * _width(width),
    "wordwrap": lambda s, width=79, brk=True, wrapstring=None, *_, **kw: (
        len(str(s)) + (len(str(s).split()) + _lines(str(s))) * len(kw.get("wrapstring", wrapstring) or "\n")
    ),
    "replace": lambda s, old="", new="", count=None: (
        len(str(s))
        + (str(s).count(str(old)) if old else len(str(s)) + 1) * max(len(str(new)) - len(str(old)), 0)
    ),
}


def _estimate(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if name in _ESTIMATES and args:
        try:
            size = _ESTIMATES[name](*args, **kwargs)
        except (TypeError, ValueError):
            return  # wrong arguments: the real call reports them
        _check(size, f"the result of {name}")
    elif name == "format" and args and isinstance(args[0], str):
        _check_printf(args[0], kwargs or args[1:])


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """The filter with its result's size checked before (when it can be) and after the call."""
    passes_context = getattr(func, "jinja_pass_arg", None) is not None

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja still passes the context first
    def guarded(*args: Any, **kwargs: Any) -> Any:
        user_args = args[1:] if passes_context else args
        if name == "join" and user_args:  # a generator would be used up by the estimate
            items = list(user_args[0])
            sep = user_args[1] if len(user_args) > 1 else kwargs.get("d", "")
            _check(sum(len(str(x)) for x in items) + len(str(sep)) * len(items), "the joined text")
            args = (*args[: len(args) - len(user_args)], items, *user_args[1:])
        else:
            _estimate(name, user_args, kwargs)
        result = func(*args, **kwargs)
        _check(_size(result), f"the result of {name}")
        return result

    return guarded


# ------------------------------------------------------------------ environment
class _Buffer(list):
    """The output of a block, macro or `{% set %}...{% endset %}`, kept under the limit while
    it fills (a loop in a block could otherwise fill memory before the block ends)."""

    chars = 0

    def append(self, item: Any) -> None:
        self.chars += _size(item)
        _check(self.chars, "a block's text")
        super().append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)


class _LimitedCodeGenerator(CodeGenerator):
    """Routes `a ~ b` and block buffers through the environment, so their size is checked."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.new_buffer()")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with every value kept under MAX_PROMPT_CHARS."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        # StrictUndefined: a field the row lacks is an error, never a silent empty string.
        super().__init__(
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
            finalize=_no_null,
        )
        self.globals.pop("lipsum", None)  # makes text by the page; no use in a prompt
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Operators whose result could be huge are checked before they run."""
        _check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        _check_number(result)
        return result

    def new_buffer(self) -> _Buffer:
        """A block's output buffer (see _Buffer)."""
        return _Buffer()

    def checked_concat(self, parts: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`, refused when the joined text would be too long."""
        texts = [str(p) for p in parts]
        _check(sum(len(t) for t in texts), "the joined text")
        return "".join(texts)

    def concat(self, parts: Any) -> str:  # type: ignore[override]
        """Block and macro output (`{% set x %}...{% endset %}`, macro results): same limit."""
        texts = list(parts)
        _check(sum(len(t) for t in texts), "a block's text")
        return "".join(texts)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """Every call from a template: arguments, str methods and results stay under the limit
        (a macro that doubles its text on each call stops at the limit)."""
        for value in (*args, *kwargs.values()):
            _check(_size(value), "an argument")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if __obj.__name__ == "join" and args:  # materialised: the check must not use up a generator
                items = list(args[0])
                _check(sum(_size(x) for x in items) + len(owner) * len(items), "the joined text")
                args = (items, *args[1:])
            _estimate(__obj.__name__, (owner, *args), kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _check(_size(result), "a call's result")
        _check_number(result)
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` with its widths checked before it runs."""
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt = value.__self__

        @functools.wraps(wrapper)
        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if value.__name__ == "format_map" and args else kwargs
            _check_str_format(fmt, args, dict(mapping) if isinstance(mapping, dict) else {})
            return wrapper(*args, **kwargs)

        return checked


def _no_null(value: Any) -> Any:
    # a null nested in a field ({{ meta.title }}) would print as "None"
    if value is None:
        raise TemplateLimit("a null value would be printed as 'None'; use | default('') for optional values")
    return value


@functools.lru_cache(maxsize=1)
def _environment() -> LimitedSandbox:
    return LimitedSandbox()


# ------------------------------------------------------------------ templates
class Template:
    """A compiled template; `render(row)` raises BadInput naming the field or the limit."""

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

    def render(self, row: dict[str, Any], *, where: str | None = None) -> str:
        """Fill the template from one row. Any failure (a missing or null field, an error in the
        template, a limit) is BadInput naming `where` (the row's file:line) and the template key."""
        try:
            return self._render(row)
        except jinja2.UndefinedError as exc:
            raise BadInput(exc.message or "a field is undefined", file=where, key=self.where) from None
        except jinja2.exceptions.SecurityError as exc:
            raise BadInput(f"not allowed in the sandbox: {exc}", file=where, key=self.where) from None
        except TemplateLimit as exc:
            raise BadInput(str(exc), file=where, key=self.where) from None
        except Exception as exc:  # noqa: BLE001 - whatever the template raises is the template's error
            raise BadInput(f"{type(exc).__name__}: {exc}", file=where, key=self.where) from None

    def _render(self, row: dict[str, Any]) -> str:
        context = {k: _null_field(k) if v is None else v for k, v in row.items()}
        chunks, total = [], 0
        with Deadline(MAX_RENDER_SECONDS) as deadline:
            for chunk in self._template.generate(context):  # a dict, so that any column name works
                total += len(chunk)
                _check(total, "the prompt")
                deadline.check()
                chunks.append(chunk)
        return "".join(chunks)


def _null_field(name: str) -> jinja2.StrictUndefined:
    return jinja2.StrictUndefined(
        hint=f"field {name!r} is null in this row (use {{{{ {name} | default('') }}}} if it is optional)",
        name=name,
    )


def template_of(source: str | None, *, rendered: bool = False) -> Template | None:
    """A recipe's data.template, compiled. None when there is none (the model reads a field of
    the row), or when the rows arrive `rendered`: mixed or replayed rows carry their input
    already rendered into text, each by its source's template, so nothing is rendered again."""
    if not source or rendered:
        return None
    return Template(source, where="data.template")
