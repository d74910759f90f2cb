"""`engine: llamacpp`: llama.cpp through llama-cpp-python on a GGUF file (the optional extra
`llmtune[llamacpp]`).

The model is a GGUF file (from `llmtune export --format gguf`, or any llama.cpp model), or a
folder holding exactly one. What it does:
- generate: prompts are tokenized by the GGUF's own tokenizer (no second BOS after a rendered
  chat template) and keep their last `max_length` tokens; greedy at temperature 0, else sampled
  with top_p / top_k from a seed made of `seed`, the prompt and the copy number (so a row's
  samples do not depend on its batch); texts are cut before the first stop string. llama.cpp's
  own sampling defaults that engine hf does not apply (repeat penalty, min_p) are turned off;
- choice log-likelihoods and classify-by-likelihood from the logits of `prompt + choice`
  (split into tokens as lm-evaluation-harness does, as engine hf);
- greedy rows run PARALLEL_SEQUENCES at a time, each step one llama.cpp batch with the next
  token of every live row (llamacpp_parallel: `Llama` itself runs one sequence at a time); sampled
  rows, and a row too long for one sequence's cells, run one after the other through `Llama`; all
  on `model.threads` threads.
The rows, fingerprints, resume, lock, errors file and exit codes are the job's own.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmtune.errors import BadInput
from llmtune.inference.interface import (
    ChoiceScores,
    EngineRequest,
    Generation,
    Supports,
    dedupe,
    label_probabilities,
    split_continuations,
)
from llmtune.inference.llamacpp_parallel import ParallelGreedy

# rows decoded together by greedy generate: on the engines bench's model a step of 32 rows cost
# under half a lone row's step per row, and 64 no less per row than 32. Each row holds
# max_length + max_new_tokens KV cells.
PARALLEL_SEQUENCES = 32
INSTALL_HINT = "engine: llamacpp needs llama-cpp-python: pip install 'llmtune[llamacpp]'"
NOT_GGUF = "engine: llamacpp runs a GGUF file (llmtune export --format gguf); {what}"


def require(key: str = "engine") -> None:
    """BadInput (exit 2, before anything is written) when llama-cpp-python is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise BadInput(INSTALL_HINT, key=key)


def gguf_file(ref: Any, recipe: Any, key: str = "model") -> Path:
    """The GGUF file `ref.path` names (a file, or a folder with exactly one); BadInput otherwise
    (a transformers folder, a scratch model, an adapter: the wrong model type for this engine)."""
    if ref.scratch is not None or ref.path is None:
        raise BadInput(NOT_GGUF.format(what="a scratch model is not one"), key=f"{key}.path")
    if ref.adapter:
        raise BadInput(NOT_GGUF.format(what="merge the adapter and export first"), key=f"{key}.adapter")
    path = recipe.resolve_path(ref.path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise BadInput(
            f"{path} holds several GGUF files ({names}); name one in model.path", key=f"{key}.path"
        )
    what = f"{path} is not one" if path.exists() else f"{path} not found"
    raise BadInput(NOT_GGUF.format(what=what), key=f"{key}.path")


def inspect_model(ref: Any, recipe: Any, key: str = "model") -> Any:
    """A GGUF file is a causal LM; anything else is refused here, before anything loads."""
    from llmtune.models.info import ModelInfo

    file = gguf_file(ref, recipe, key)
    return ModelInfo("causal_lm", None, [], file, None)


def check_model(head: str | None, path: str | None = None, key: str = "engine") -> None:
    """llama.cpp runs causal LMs only (a head is refused by `inspect_model` first)."""
    if head != "causal_lm":
        raise BadInput(NOT_GGUF.format(what="classification heads run on engine: hf or onnx"), key=key)


def open_engine(request: EngineRequest) -> LlamaCppEngine:
    """`engine: llamacpp` (the registry's factory) on the request's GGUF file."""
    from llmtune.models.cpu import runtime_threads

    file = gguf_file(request.ref, request.recipe, request.key)
    threads = runtime_threads(request.ref.threads)
    return LlamaCppEngine(
        file,
        threads=threads,
        max_length=request.max_length,
        max_new_tokens=request.max_new_tokens,
        seed=getattr(request.recipe, "seed", 0) or 0,
    )


class LlamaCppEngine:
    """llama-cpp-python's `Llama` behind the methods the jobs call on every engine."""

    classifier = False
    regression = False

    def __init__(
        self, file: Path, *, threads: int, max_length: int, max_new_tokens: int = 32, seed: int = 0
    ) -> None:
        """Open `file` with room for a `max_length` prompt plus `max_new_tokens` (logits of every
        position kept, for choice scores)."""
        from llama_cpp import Llama

        self.max_length = max_length
        self.threads = threads
        self.seq_len = max_length + max(max_new_tokens, 1)
        self.parallel: ParallelGreedy | None = None  # made on the first greedy call
        self.llm = Llama(
            model_path=str(file),
            n_ctx=max_length + max(max_new_tokens, 1),
            n_batch=min(512, max_length + max(max_new_tokens, 1)),
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            seed=seed,
            verbose=False,
        )
        meta = self.llm.metadata
        self.bos_id = self.llm.token_bos()
        self.add_bos = str(meta.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"
        self.bos_text = self._piece(self.bos_id) if self.bos_id >= 0 else ""
        self.eos_text = self._piece(self.llm.token_eos()) if self.llm.token_eos() >= 0 else ""
        self.chat_template = meta.get("tokenizer.chat_template")
        self.eos_ids = {
            t for t in (self.llm.token_eos(), _meta_int(meta, "tokenizer.ggml.eot_token_id")) if t >= 0
        }
        self.description = f"llama.cpp, {file.name}, {threads} thread(s)"

    @property
    def supports(self) -> Supports:
        """Generation and choice scores; no heads."""
        return Supports(generate=True, choices=True, heads=False, description=self.description)

    def close(self) -> None:
        """Free the llama.cpp contexts and model (the parallel context first: it uses the model)."""
        if self.parallel is not None:
            self.parallel.close()
            self.parallel = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    # ------------------------------------------------------------------ tokens
    def encode(self, prompt: str) -> list[int]:
        """Token ids by the GGUF's tokenizer; a prompt that starts with the BOS text (a rendered
        chat template) gets no second BOS."""
        add_bos = self.add_bos and not (self.bos_text and prompt.startswith(self.bos_text))
        return list(self.llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True))

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """Prompt lengths in tokens, before truncation."""
        return [len(self.encode(p)) for p in prompts]

    def apply_chat_template(self, prompt: str, system: str | None = None) -> str:
        """The prompt as the user turn of the GGUF's chat template (BadInput when it has none)."""
        if not self.chat_template:
            raise BadInput("chat: true but this GGUF file has no chat template; use chat: false", key="chat")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            self.chat_template
        )
        return template.render(
            messages=messages, add_generation_prompt=True, bos_token=self.bos_text, eos_token=self.eos_text
        )

    # ---------------------------------------------------------------- generate
    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        stop: Sequence[str] = (),
        num_return_sequences: int = 1,
        seed: int = 0,
    ) -> list[Generation]:
        """One Generation per prompt, in input order (see the module's docstring)."""
        unique, where = dedupe(prompts)
        encoded = [self.encode(p)[-self.max_length :] for p in unique]
        results: list[Generation | None] = [None] * len(unique)
        if temperature <= 0:
            self._greedy_in_parallel(encoded, results, max_new_tokens, stop, num_return_sequences)
        for k, (prompt, tokens) in enumerate(zip(unique, encoded)):
            if results[k] is not None:
                continue
            texts, used = [], 0
            for copy in range(num_return_sequences):
                self.llm.set_seed(_row_seed(seed, prompt, copy))
                text, n = self._complete(tokens, max_new_tokens, temperature, top_p, top_k, stop)
                texts.append(text)
                used += n
            results[k] = Generation(texts, used)
        done = [r for r in results if r is not None]
        assert len(done) == len(unique)
        return [Generation(list(done[j].texts), done[j].new_tokens) for j in where]

    def _greedy_in_parallel(
        self,
        encoded: list[list[int]],
        results: list[Generation | None],
        max_new_tokens: int,
        stop: Sequence[str],
        copies: int,
    ) -> None:
        """Fill `results` for the prompts that fit one parallel sequence (greedy copies are equal:
        one run, repeated)."""
        if self.parallel is None:
            self.parallel = ParallelGreedy(
                self.llm, slots=PARALLEL_SEQUENCES, seq_len=self.seq_len, threads=self.threads
            )
        stops = [s for s in stop if s]
        fitting = [k for k, tokens in enumerate(encoded) if self.parallel.fits(tokens, max_new_tokens)]
        news = self.parallel.generate(
            [encoded[k] for k in fitting],
            max_new_tokens,
            self.eos_ids,
            lambda new: bool(stops) and any(s in self._text(new) for s in stops),
        )
        for k, new in zip(fitting, news):
            text = self._text(new)
            cuts = [text.find(s) for s in stops if s in text]
            results[k] = Generation([text[: min(cuts)] if cuts else text] * copies, len(new) * copies)

    def _text(self, new: list[int]) -> str:
        return self.llm.detokenize(new).decode("utf-8", "replace")

    def _complete(
        self,
        tokens: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int | None,
        stop: Sequence[str],
    ) -> tuple[str, int]:
        """One completion, decoded as engine hf decodes (the bytes of every new token, invalid
        UTF-8 replaced), ended by end-of-sequence, max tokens or the first stop string."""
        sampling = temperature > 0
        stops = [s for s in stop if s]
        new: list[int] = []
        text = ""
        steps = self.llm.generate(
            tokens,
            temp=temperature if sampling else 0.0,
            top_p=top_p if sampling else 1.0,
            top_k=(top_k or 0) if sampling else 1,
            min_p=0.0,
            repeat_penalty=1.0,
            reset=True,
        )
        for token in steps:
            if token in self.eos_ids or len(new) >= max_new_tokens:
                break
            new.append(token)
            text = self._text(new)
            cuts = [text.find(s) for s in stops if s in text]
            if cuts:
                return text[: min(cuts)], len(new)
        return text, len(new)

    # ----------------------------------------------------------------- choices
    def score_choices(self, prompts: list[str], choices: list[str]) -> list[ChoiceScores]:
        """Log-likelihood of each choice as the continuation of each prompt."""
        import numpy as np

        unique, where = dedupe(prompts)
        scores = []
        for prompt in unique:
            context, conts = split_continuations(self.encode, prompt, choices, self.max_length)
            sums = []
            for cont in conts:
                self.llm.reset()
                self.llm.eval(context + cont)
                logits = np.asarray(
                    self.llm.scores[len(context) - 1 : len(context) - 1 + len(cont)], dtype=np.float64
                )
                top = logits.max(axis=-1, keepdims=True)
                logprobs = logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))
                sums.append(float(logprobs[np.arange(len(cont)), cont].sum()))
            counts = [len(c) for c in conts]
            scores.append(ChoiceScores(sums, [s / n for s, n in zip(sums, counts)], counts))
        return [scores[j] for j in where]

    def classify(self, prompts: list[str], labels: list[str]) -> list[dict[str, float]]:
        """Softmax over the labels' log-likelihood sums (each scored as `" " + label` unless the
        prompt ends with whitespace, as engine hf)."""
        return label_probabilities(self.score_choices, prompts, labels)

    def score(self, prompts: list[str]) -> list[float]:
        """Refused: a GGUF causal LM has no regression head."""
        raise ValueError("score needs a regression head; engine: llamacpp runs causal LMs")

    def head_labels(self) -> list[str]:
        """Refused: a GGUF causal LM has no classification head."""
        raise ValueError("engine: llamacpp runs causal LMs; there is no classification head")


def _meta_int(meta: dict[str, Any], key: str) -> int:
    try:
        return int(meta.get(key, -1))
    except (TypeError, ValueError):
        return -1


def _row_seed(seed: int, prompt: str, copy: int) -> int:
    """A row's own sampling seed (its samples do not depend on what else runs)."""
    digest = hashlib.sha256(f"{seed}\0{copy}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
