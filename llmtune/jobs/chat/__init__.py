"""`llmtune chat MODEL`: talk to a causal LM through its chat template, the reply streamed as
it is generated.

On a terminal the input line is prompt_toolkit's editor (arrow keys, history of this session,
Ctrl-R search); from a pipe each line is one turn and each reply is printed on its own line, so
`printf 'hi\\n/save c.jsonl\\n' | llmtune chat runs/x` works in scripts and tests. Ctrl-C during
a reply stops that reply (what was generated stays in the conversation) and the session goes
on; Ctrl-C at the prompt clears the line; Ctrl-D ends the session. Slash commands: see
`session.HELP`. Model text is printed with control characters shown escaped.

    llmtune chat runs/assistant
    llmtune chat Qwen/Qwen2.5-0.5B-Instruct --system "Answer in one sentence."
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmtune.console import safe_text
from llmtune.errors import BadInput
from llmtune.inference.source import find_source, open_engine
from llmtune.jobs.chat.session import HELP, Conversation


@dataclass
class Settings:
    """chat's options."""

    model: str
    system: str | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    debug: bool = False


def run(settings: Settings) -> None:
    """The chat session, until Ctrl-D, /exit or the end of piped input."""
    from llmtune.models.loading import quiet_libraries

    if settings.max_new_tokens < 1:
        raise BadInput(f"expected a positive number, got {settings.max_new_tokens}", key="--max-new-tokens")
    if settings.temperature < 0:
        raise BadInput(
            f"expected a temperature of 0 or more, got {settings.temperature}", key="--temperature"
        )
    quiet_libraries(settings.debug)
    source = find_source(settings.model)
    engine = open_engine(source)
    if engine.classifier:
        raise BadInput(
            f"{source.described} has a classification head: chat needs a causal LM (try llmtune predict)",
            key="MODEL",
        )
    tokenizer = engine.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise BadInput(
            f"the tokenizer of {source.described} has no chat template: chat needs a chat/instruct model "
            "(or a run trained on messages rows); llmtune predict generates from plain prompts",
            key="MODEL",
        )
    conversation = Conversation(system=settings.system)
    terminal = sys.stdin.isatty()
    if terminal:
        _tell(f"chatting with {safe_text(source.described)}; /help for commands, Ctrl-D to end")
    for line in _terminal_lines() if terminal else _piped_lines():
        if line.startswith("/"):
            reply = conversation.command(line)
            if reply is None:
                return
            _tell(reply)
            continue
        conversation.turns.append({"role": "user", "content": line})
        text = _reply(engine, conversation, settings)
        conversation.turns.append({"role": "assistant", "content": text})


def _reply(engine: Any, conversation: Conversation, settings: Settings) -> str:
    """Generate the assistant's reply, streamed to stdout; Ctrl-C keeps what came so far."""
    import torch
    from transformers import set_seed

    tokenizer, model = engine.tokenizer, engine.model
    prompt = tokenizer.apply_chat_template(
        conversation.messages(), tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([engine.encode(prompt)], device=engine.device)
    streamer = Printer(tokenizer)
    sampling = {"do_sample": settings.temperature > 0}
    if settings.temperature > 0:
        sampling.update(temperature=settings.temperature, top_p=settings.top_p)
        set_seed(settings.seed)
    else:  # greedy: the model's own sampling defaults would only be warned about
        sampling.update(temperature=None, top_p=None, top_k=None)
    try:
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=engine.pad_id,
                streamer=streamer,
                **sampling,
            )
    except KeyboardInterrupt:
        streamer.stop()
        print(file=sys.stdout, flush=True)
        _tell("[stopped]")
        return streamer.text
    print(file=sys.stdout, flush=True)
    return streamer.text


class Printer:
    """A transformers streamer that prints the reply as it grows (never the prompt), each piece
    as soon as it decodes to whole characters, control characters shown escaped."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        """Called by generate with the prompt first, then each new token."""
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens += [int(t) for t in value.reshape(-1).tolist()]
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return  # a character split across tokens: wait for the rest
        self._print(text)

    def end(self) -> None:
        """Called by generate when the reply is complete."""
        self._print(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def stop(self) -> None:
        """A reply cut short: keep what was printed."""

    def _print(self, text: str) -> None:
        if text.startswith(self.text):
            sys.stdout.write(safe_text(text[len(self.text) :]))
            sys.stdout.flush()
        self.text = text


def _terminal_lines() -> Iterator[str]:
    """Lines from prompt_toolkit's editor; Ctrl-C clears the line, Ctrl-D ends."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory

    session: PromptSession[str] = PromptSession(history=InMemoryHistory())
    while True:
        try:
            line = session.prompt("you> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        if line.strip():
            yield line.strip()


def _piped_lines() -> Iterator[str]:
    for line in sys.stdin:
        if line.strip():
            yield line.strip()


def _tell(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


__all__ = ["HELP", "Settings", "run"]
