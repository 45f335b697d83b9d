"""How to generate: one `Settings` value travels from the magic (or the Python API) to the
engine. The generation options are listed once, in `OPTIONS`: the magics' flags are made
from it, `LLMMagics`' traits are checked against it (tests/test_settings.py), and the
keywords `llm_magic.generate` and `chat` take are typed by it.

Adding an option: a field here and its `Option` line, a trait on `LLMMagics` if a notebook
may set its default, and the engines that support it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, TypedDict

from .errors import GenerationError
from .logprobs import DEFAULT_TOP
from .structured import AnswerFormat

# The most alternatives kept per token (the OpenAI API's top_logprobs allows 20).
MAX_LOGPROBS = 20

# Seeds are 32-bit: llama.cpp's sampler holds 32 bits, and one range for every engine
# keeps a seed meaning the same on each.
SEED_LIMIT = 2**32


@dataclass(frozen=True)
class Settings:
    """How to generate. The defaults are those of `%%llm_generate` and `llm_magic.generate`."""

    max_new_tokens: int = 256
    greedy: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    seed: int | None = None
    stop: tuple[str, ...] = ()
    system: str | None = None
    raw: bool = False
    # How --over runs many prompts; neither changes what a prompt's answer means.
    batch_size: int | None = None  # rows per batch in the kernel (None: the engine chooses)
    concurrency: int | None = None  # requests in flight to a server (None: the engine's default)
    # The format the answer must take (--schema, --choice, --regex); None: free text.
    answer_format: AnswerFormat | None = None
    # Keep each new token's log-probability and its `logprobs` likeliest alternatives
    # (None: off; 0: the tokens' own only). Changes no token.
    logprobs: int | None = None
    # Answer an identical deterministic request from the run log instead of generating it.
    reuse: bool = False

    def check(self) -> None:
        """Refuse settings that cannot work, before any token is computed."""
        if self.max_new_tokens <= 0:
            raise GenerationError(
                f"--max-new-tokens {self.max_new_tokens}: at least 1 new token is needed",
                fixes=["--max-new-tokens 256", "%config LLMMagics.max_new_tokens = 256"],
            )
        if not math.isfinite(self.temperature):
            raise GenerationError(
                f"--temperature {self.temperature}: must be a finite number above 0",
                "an infinite temperature makes every token equally likely: noise",
                ["--temperature 0.7", "--greedy for deterministic output"],
            )
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise GenerationError(
                f"--seed {self.seed}: must be a whole number from 0 to {SEED_LIMIT - 1}",
                "the engines' random generators take 32-bit seeds",
                ["--seed 42", "leave out --seed: a fresh one is chosen and shown with the result"],
            )
        if not self.greedy and not self.temperature > 0:
            raise GenerationError(
                f"--temperature {self.temperature}: sampling needs a temperature above 0",
                "temperature 0 would mean always taking the most likely token, "
                "which is greedy decoding",
                ["--greedy for deterministic output", "--temperature 0.7 to sample"],
            )
        if not self.greedy and not 0 < self.top_p <= 1:
            raise GenerationError(
                f"--top-p {self.top_p}: must be in (0, 1]",
                fixes=["--top-p 0.9", "--top-p 1 turns it off"],
            )
        if not self.greedy and self.top_k < 0:
            raise GenerationError(
                f"--top-k {self.top_k}: must be 0 (off) or more",
                fixes=["--top-k 50", "--top-k 0 turns it off"],
            )
        if any(s == "" for s in self.stop):
            raise GenerationError(
                "--stop '': an empty stop string would stop at once",
                fixes=["--stop '\\n\\n'", "leave --stop out"],
            )
        for name, flag in (("batch_size", "--batch-size"), ("concurrency", "--concurrency")):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise GenerationError(
                    f"{flag} {value}: must be at least 1",
                    fixes=[f"{flag} 8", "leave it out to let the engine choose"],
                )

        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise GenerationError(
                f"--logprobs {self.logprobs}: the alternatives kept per token go from 0 "
                f"to {MAX_LOGPROBS}",
                fixes=["--logprobs (5 alternatives)", "--logprobs 0 (the tokens' own only)"],
            )

    def recorded(self) -> dict[str, Any]:
        """The settings as the result records them (what decided the text)."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        # The seed is recorded on its own; the others say how the text was got, not what.
        for key in ("seed", "batch_size", "concurrency", "reuse"):
            d.pop(key)
        d.pop("answer_format")  # asdict copied it field by field: plain data instead
        if self.answer_format is not None:
            d["answer_format"] = self.answer_format.recorded()
        if self.logprobs is None:
            d.pop("logprobs")
        if self.greedy:  # unused by greedy decoding: don't suggest they mattered
            for key in ("temperature", "top_p", "top_k"):
                d.pop(key)
        return d

    def with_(self, **changes: Any) -> Settings:
        """A copy with `changes`; the unset ones (None) keep this value's."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class SamplingKeywords(TypedDict, total=False):
    """The keywords `llm_magic.chat` takes for its `Settings` (a conversation keeps its own
    system message and runs no --over)."""

    max_new_tokens: int
    greedy: bool
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: str | tuple[str, ...] | list[str]
    answer_format: AnswerFormat | None
    logprobs: int | None
    reuse: bool


class SettingsKeywords(SamplingKeywords, total=False):
    """The keywords `llm_magic.generate` takes for its `Settings`: one per field."""

    system: str | None
    raw: bool
    batch_size: int | None
    concurrency: int | None


class ScoreKeywords(TypedDict, total=False):
    """The keywords `llm_magic.score` takes for its `Settings` (the fields scoring reads)."""

    system: str | None
    batch_size: int | None
    logprobs: int | None


def refuse_unknown(keywords: Mapping[str, Any], known: set[str], what: str) -> None:
    """Raise TypeError naming the keywords not in `known` (`what` they should be: "load
    option"), with the names each could be a misspelling of."""
    unknown = sorted(set(keywords) - known)
    if unknown:
        import difflib

        near = [m for u in unknown for m in difflib.get_close_matches(u, known, 1)]
        raise TypeError(
            f"unknown {what} {', '.join(unknown)}"
            + (f" (did you mean {', '.join(near)}?)" if near else "")
        )


def make(base: Settings | None = None, **keywords: Any) -> Settings:
    """Settings from `base` (default: the defaults) and keywords, the ones left None keeping
    `base`'s; a misspelt keyword fails with the names it could be. Checked."""
    refuse_unknown(keywords, {f.name for f in fields(Settings)}, "generation setting")
    stop = keywords.get("stop")
    if isinstance(stop, str):
        keywords["stop"] = (stop,)
    elif stop is not None:
        keywords["stop"] = tuple(stop)
    if keywords.get("system") == "":
        keywords["system"] = None
    settings = (base or Settings()).with_(**keywords)
    settings.check()
    return settings


@dataclass(frozen=True)
class Option:
    """One generation option as the magics offer it: the `Settings` field, the flag's help,
    and whether `LLMMagics` has a trait for its default (`%config LLMMagics.NAME = ...`)."""

    name: str
    help: str
    # "count": an int flag whose value may be left out (`--logprobs` means `const`);
    # "format": the answer's format, from --schema/--choice/--regex.
    kind: Literal["int", "float", "switch", "list", "text", "format", "count"]
    configurable: bool = True
    shown_default: str | None = None  # the default in words, where its value says little
    flags: tuple[str, ...] = ()  # where the field has other flags than its name's (first: main)
    const: Any = None  # a "count" flag's value when given without one

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        return getattr(Settings(), self.name)

    @property
    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.kind == "switch":
            return "on" if self.default else "off"
        return str(self.default)


# The options every generating cell takes (%%llm_generate, %%llm_chat), in their help's order.
OPTIONS: tuple[Option, ...] = (
    Option("max_new_tokens", "At most this many new tokens.", "int"),
    Option("temperature", "Sampling temperature, above 0.", "float"),
    Option(
        "top_p",
        "Sample among the likeliest tokens up to this probability mass (1: all).",
        "float",
    ),
    Option("top_k", "Sample among the k likeliest tokens (0: all).", "int"),
    Option(
        "seed",
        "Seed for sampling: the same seed gives the same text. "
        "Default: a fresh one, shown with the result.",
        "int",
        configurable=False,
    ),
    Option(
        "greedy",
        "Always take the likeliest token: deterministic.",
        "switch",
    ),
    Option(
        "stop",
        "Stop when this text appears; the text is cut before it. Repeatable; "
        "\\n and \\t stand for newline and tab.",
        "list",
        configurable=False,
    ),
    Option(
        "answer_format",
        "The format the answer must take, enforced while decoding where the engine can, "
        "and checked: result.data is the parsed value.",
        "format",
        configurable=False,
        flags=("--schema", "--choice", "--regex"),
    ),
    Option(
        "logprobs",
        "Keep each new token's log-probability (the model's own distribution, before "
        "temperature/top-p) and its K likeliest alternatives: --logprobs [K], K 5 when left "
        "out, 0 for none. result.tokens, result.tokens_frame(). As a trait, K turns it on "
        "for every cell; 0 leaves it off.",
        "count",
        shown_default="off",
        const=DEFAULT_TOP,
    ),
    Option(
        "reuse",
        "Answer from the run log when the same deterministic request (greedy, or the same "
        "--seed; same model, settings and prompt) ran before, in milliseconds; with --over, "
        "generate only the items not logged yet (resumes an interrupted run).",
        "switch",
    ),
)

# Options of %%llm_generate alone (a conversation keeps its own system message, and runs
# no --over).
GENERATE_OPTIONS: tuple[Option, ...] = (
    Option(
        "system",
        "A system message (chat models), filled like the prompt.",
        "text",
        shown_default="none",
    ),
    Option("raw", "Send the cell as it is, without the chat template.", "switch", False),
    Option(
        "batch_size",
        "Prompts per batch with --over in the kernel.",
        "int",
        shown_default="0 = the engine's choice: 8 on a CPU, 32 on a GPU",
    ),
    Option(
        "concurrency",
        "Requests in flight with --over on a server model.",
        "int",
        shown_default="16",
    ),
)
