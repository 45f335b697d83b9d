"""`ScoreMagics`: `%%llm_score`, the cell's text scored by a loaded model (log-likelihood,
perplexity, tokens; or each of several choices after it). Parse, call `api.score`, show —
as `LLMMagics` does for generation; the defaults (batch size) come from the LLMMagics
instance it is given at registration, which holds the one configuration section."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from .. import api, prompts
from ..errors import GenerationError
from .cells import (
    batch_progress,
    out_name,
    over_items,
    parse_line,
    run_streamed,
    unquote,
    user_namespace,
)
from .llm import LLMMagics


@magics_class
class ScoreMagics(Magics):
    """Scoring text with a loaded model (configured by `LLMMagics`' traits)."""

    def __init__(self, shell, settings: LLMMagics):
        super().__init__(shell)
        self.settings = settings

    @no_var_expand  # `{name}` in the line and the cell are ours to fill, not IPython's
    @magic_arguments(name="%llm_score")  # IPython writes one "%" before it
    @argument(
        "-m",
        "--model",
        default=None,
        help="Alias (--as) or name of a loaded model. Default: the one loaded or used last.",
    )
    @argument(
        "--context",
        default=None,
        metavar="TEXT|VAR",
        help="Score the cell as the continuation of this text (or of the text in this "
        "variable). A chat model reads it as the user's turn and the cell as its answer; "
        "with --raw, as plain text.",
    )
    @argument(
        "--choices",
        nargs="+",
        default=None,
        metavar="CHOICE",
        help="Score each choice as the continuation of the cell (the question): their "
        "probabilities over the choices, the likeliest, the per-character figure "
        "(lm-evaluation-harness's acc_norm). Words, or one variable holding a list.",
    )
    @argument(
        "--answer",
        default=None,
        help="The right choice (its text or index): the result gives acc and acc_norm.",
    )
    @argument(
        "--over",
        default=None,
        help="Score the cell once per item of this list variable, {item} standing for the "
        "item; an item that is a dict may hold its own 'choices' and 'answer'. One row per "
        "item (.to_pandas()).",
    )
    @argument(
        "--raw",
        action="store_true",
        help="Read the context as plain text, without the chat template.",
    )
    @argument("--system", default=None, help="A system message before the context (chat models).")
    @argument(
        "--delimiter",
        default=None,
        help="Put before each choice. Default: a space after plain text (as "
        "lm-evaluation-harness), none after a chat template.",
    )
    @argument(
        "--batch-size",
        type=int,
        default=None,
        help="Texts per forward pass in the kernel. Default: LLMMagics.batch_size, else the "
        "engine's choice.",
    )
    @argument(
        "--logprobs",
        type=int,
        default=None,
        metavar="K",
        help="The likeliest alternatives kept per token (hover a token to see them). Default: 5.",
    )
    @argument("--out", default=None, help="Also store the result in this variable.")
    @argument(
        "--no-fill",
        action="store_true",
        help="Score the cell as written: no {name} filling.",
    )
    @cell_magic
    def llm_score(self, line: str, cell: str):
        """Score the cell's text with a loaded model by one teacher-forced pass: its
        log-likelihood (the sum of its tokens' log-probabilities), token count, mean,
        perplexity and each token (coloured by probability; alternatives on hover), as
        lm-evaluation-harness computes them. With --context, the cell is scored after it;
        with --choices, each choice is scored after the cell."""
        args = parse_line(self.llm_score, line)
        ns = user_namespace(self)
        out = out_name(args.out)
        listed = over_items(args, ns)
        over = listed.items if listed is not None else None
        choices = self._choices(args.choices, ns)
        context = self._context(args.context, ns)
        answer = _answer(args.answer)
        jupyter = getattr(self.shell, "kernel", None) is not None
        keywords: dict[str, Any] = {
            "batch_size": args.batch_size or self.settings.batch_size or None,
            "system": unquote(args.system) if args.system is not None else None,
        }
        if args.logprobs is not None:
            keywords["logprobs"] = args.logprobs

        def call():
            with batch_progress(jupyter, len(over) if over else 0, "items") as progress:
                return api.score(
                    cell.strip("\n"),
                    context=context,
                    choices=choices,
                    answer=answer,
                    model=unquote(args.model) if args.model else None,
                    raw=args.raw,
                    over=over,
                    namespace=None if args.no_fill else ns,
                    delimiter=unquote(args.delimiter) if args.delimiter is not None else None,
                    progress=progress,
                    **keywords,
                )

        return run_streamed(call, None, out, self.shell, what="scoring")

    @staticmethod
    def _choices(words: list[str] | None, ns) -> list[str] | None:
        """The choices: the words given, or the list in the one variable named."""
        if words is None:
            return None
        if len(words) == 1 and words[0].isidentifier() and words[0] in ns:
            value = ns[words[0]]
            items = prompts.items_of(value, f"--choices {words[0]}").items
            if not all(isinstance(c, str) for c in items):
                raise GenerationError(
                    f"--choices {words[0]}: the choices must be strings",
                    fixes=[f"{words[0]} = ['Paris', 'London', 'Rome']"],
                )
            return items
        return [unquote(w) for w in words]

    @staticmethod
    def _context(text: str | None, ns) -> str | None:
        """The context: the text given, or the text in the variable named."""
        if text is None:
            return None
        text = unquote(text)
        if text.isidentifier() and isinstance(ns.get(text), str):
            # A variable's text as it is: its braces are not fields to fill.
            return ns[text].replace("{", "{{").replace("}", "}}")
        return text


def _answer(text: str | None) -> int | str | None:
    if text is None:
        return None
    text = unquote(text)
    return int(text) if text.isdigit() else text
