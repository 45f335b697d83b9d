"""The llama.cpp engine: a `.gguf` run as it is, quantized, in the kernel.

`llama-cpp-python` (the optional extra `llm_magic[llama-cpp]`) maps the file and runs
llama.cpp's own kernels on its quantized weights: no dequantizing, no conversion, a load
in about a second, and several times the decode speed of the dequantized transformers
model on a CPU. `handle.model` is the `llama_cpp.Llama` object.

The prompt: the GGUF's own chat template, rendered with the formatter llama-cpp-python's
`create_chat_completion` uses for it (`Jinja2ChatFormatter` over the template in the
file's metadata), then tokenized as that handler does it. Rendering here rather than
calling `create_chat_completion` gives the exact prompt tokens before generating (the
context budget, `--show-prompt`) and the new token ids while generating (counts, stop
strings, an interrupt that keeps what was made), and the tokens are the same: greedy text
equals `create_chat_completion(temperature=0)` for the same messages (tests check it).
A file without a template (or `--raw`) gets the text as it is, as `create_completion` does.

llama.cpp in-process runs one sequence at a time here, so `--over` runs its prompts one
after another (progress after each).

Nothing here imports llama_cpp (or torch) at module level.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata as _metadata
from typing import Any

from ..cache import LoadedModel
from ..display import LoadCard
from ..errors import GENERATION, GenerationError, LoadError, diagnose
from ..logprobs import TokenLogprob
from ..settings import Settings
from ..sources.adapter import AdapterSource
from ..sources.resolve import resolve_source
from ..sources.sizing import Estimate
from ..structured import KINDS
from . import gbnf, llama_cpp_logprobs, prompt_tokens, score_tokens
from .base import (
    AdapterInfo,
    Budget,
    CacheKey,
    Capabilities,
    Completion,
    Loaded,
    LoadOptions,
    LoadReport,
    ModelInfo,
    Plan,
    Progress,
    ProgressCallback,
    Rendered,
    Request,
    Run,
    Scored,
    ScorePair,
    TextCallback,
)
from .cards import load_card

KIND = "llama.cpp"
INSTALL = 'pip install "llm_magic[llama-cpp]"'
# The KV cache grows with the context: a model trained on 128k positions would reserve
# gigabytes. Up to this many positions are kept (the card says when it is less).
MAX_CONTEXT = 4096


class LlamaCppEngine:
    """Generation with a cached `llama_cpp.Llama`, read through the cache entry so that
    unloading leaves it holding nothing."""

    kind = KIND
    # Answer formats: llama.cpp's grammar sampler (GBNF, engines/gbnf.py).
    capabilities = Capabilities(
        group="prompt",
        adapters=("gguf",),
        logprobs=True,
        prompt_logprobs=True,
        answer_formats=frozenset(KINDS),
    )

    def __init__(self, entry) -> None:
        self.entry = entry  # cache.LoadedModel; .model is the Llama object
        self._formatter = None
        self._adapters: dict[str, Any] = {}  # name -> llama.cpp's adapter (a C pointer)
        self._active: str | None = None

    @property
    def info(self):
        return self.entry.info

    def describe(self) -> dict[str, Any]:
        llm = self.entry.model
        described = {
            "engine": self.kind,
            "llama_cpp_python": _version(),
            "threads": getattr(llm, "n_threads", None),
            "quantization": self.entry.info.quantization,
        }
        if self._adapters:
            described["adapter"] = self._active or "base"
        return described

    # --- adapters: GGUF LoRA files on the open model ------------------------------------
    # llama.cpp reads an adapter's tensors beside the model's (llama_adapter_lora_init)
    # and applies it per context (llama_set_adapters_lora): the model is not opened again.

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def attach_adapter(self, source: AdapterSource) -> AdapterInfo:
        import llama_cpp

        llm = self.entry.model
        arch = llm.metadata.get("general.architecture")
        if source.architecture and arch and source.architecture != arch:
            raise _other_base(
                source,
                self.info.name,
                f"it is for {source.architecture} models; this one is {arch}",
            )
        started = time.perf_counter()
        with _llama_log() as said:
            adapter = llama_cpp.llama_adapter_lora_init(
                llm._model.model, source.path.encode("utf-8")
            )
        if not adapter:  # a NULL pointer: llama.cpp logged why
            raise _refused(source, self.info.name, said)
        self._adapters[source.name] = adapter
        self.settle()
        return AdapterInfo(
            name=source.name,
            path=source.path,
            format="gguf",
            rank=source.rank,
            alpha=source.alpha,
            kinds=source.kinds,
            modules=len(source.modules),
            memory_bytes=source.size_bytes,  # its tensors, read beside the model's
            base_model=source.base_model,
            load_seconds=time.perf_counter() - started,
        )

    def detach_adapter(self, name: str) -> list[Any]:
        """Freed in llama.cpp's own memory: no Python object is left to watch."""
        import llama_cpp

        adapter = self._adapters.pop(name, None)
        if self._active == name:
            self._apply(None)
        if adapter:
            llama_cpp.llama_adapter_lora_free(adapter)
        return []

    def offered_adapters(self) -> tuple[str, ...]:
        return ()

    @contextmanager
    def use_adapter(self, name: str | None) -> Iterator[None]:
        self._apply(name)
        try:
            yield
        finally:
            self.settle()

    def settle(self) -> None:
        """The model at rest: its default adapter on, or none."""
        self._apply(self.entry.default_adapter)

    def _apply(self, name: str | None) -> None:
        """Adapter `name` on the context (None: none). The KV cache holds keys made by the
        other weights: llama-cpp-python would reuse a matching prompt prefix from it, so
        the context starts over when the adapter changes."""
        import ctypes

        import llama_cpp

        if name == self._active:
            return
        llm = self.entry.model
        if name is None:
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[name])
            scales = (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
                raise GenerationError(f"llama.cpp could not switch to adapter {name}")
        llm.reset()
        self._active = name

    def context_limit(self) -> int | None:
        return self.entry.model.n_ctx()

    def close(self) -> None:
        """Free the model and its context now (llama.cpp memory is not Python memory:
        `Llama.close()` releases it whether or not a reference lingers)."""
        llm = self.entry.model
        if llm is not None:
            for name in list(self._adapters):  # each freed while its model still exists
                self.detach_adapter(name)
            llm.close()

    # --- prompts ---------------------------------------------------------------------

    def render(self, request: Request) -> Rendered:
        llm = self.entry.model
        formatter = None if request.raw else self._chat_formatter()

        def encode(piece: str, markers: bool) -> list[int]:
            return list(llm.tokenize(piece.encode("utf-8"), add_bos=False, special=markers))

        def name(token: int) -> str:
            return str(llm._model.token_get_text(token))

        if formatter is None:
            text = "\n\n".join(m["content"] for m in request.messages)
            # As create_completion tokenizes a text prompt: the model's bos, then the text.
            # Outside --raw, special-token text in it is read as plain text.
            bos = [llm.token_bos()] if llm._model.add_bos_token() and llm.token_bos() != -1 else []
            markers = [] if request.raw else prompt_tokens.markers_in(encode, name, [text])
            ids = bos + (encode(text, not markers) if text else [])
            notes = (prompt_tokens.marker_note(markers),) if markers else ()
            return Rendered(request, text, len(ids) if text else 0, ids, notes=notes)
        from jinja2 import TemplateError

        def render(messages) -> Any:
            try:
                return formatter(messages=[dict(m) for m in messages])
            except (TemplateError, ValueError) as e:  # raise_exception raises ValueError
                fixes = ["--raw sends the text without the chat template"]
                if request.system:
                    fixes.insert(0, "leave out --system: some templates take no system message")
                raise GenerationError(
                    "the model's chat template refused the prompt", str(e), fixes
                ) from e

        formatted = render(request.messages)
        # As llama-cpp-python's chat handler tokenizes it: the template wrote the special
        # tokens (the messages' own special-token text stays text).
        ids = llm.tokenize(
            formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        split = prompt_tokens.encode_template(
            encode,
            name,
            formatted.prompt,
            [m["content"] for m in request.messages],
            lambda texts: (
                render(
                    {**m, "content": t} for m, t in zip(request.messages, texts, strict=True)
                ).prompt
            ),
        )
        if split is None:
            return Rendered(request, formatted.prompt, len(ids), ids)
        head, tail = _around(ids, encode(formatted.prompt, True))  # the bos tokenizing added
        ids = head + split[0] + tail
        return Rendered(request, formatted.prompt, len(ids), ids, notes=split[1])

    def _chat_formatter(self):
        """The formatter create_chat_completion uses for this file's own template (None
        when the file has none). llama-cpp-python swaps a few well-known templates for
        built-in look-alikes; `load` points it back at the file's template, so both paths
        use the same one."""
        if self._formatter is None:
            llm = self.entry.model
            template = llm.metadata.get("tokenizer.chat_template")
            if not template:
                return None
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = llm.token_eos(), llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
        return self._formatter

    # --- generating ------------------------------------------------------------------

    def run(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        max_new: int,
        settings,
        on_text: TextCallback | None = None,
    ) -> Run:
        """One row after another (llama.cpp runs one sequence at a time here); streams
        to `on_text` when given. Ctrl-C stops at the next token, keeping the text so far."""
        started = time.perf_counter()
        completions: list[Completion] = []
        first_token_at = None
        interrupt = None
        rules, notes = (
            gbnf.grammar(self.entry.model, settings.answer_format)
            if settings.answer_format is not None
            else (None, ())
        )
        for index, row in enumerate(rows):
            done, first, interrupt = self._one(
                row, seed, max_new, settings, on_text if index == 0 else None, rules
            )
            completions.append(done)
            first_token_at = first_token_at or first
            if interrupt is not None:
                break
        return Run(
            completions,
            started,
            time.perf_counter(),
            first_token_at,
            interrupt,
            notes=notes,
            format_note=gbnf.NAME if rules is not None else "",
        )

    def run_many(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        settings: Settings,
        budget: Budget,
        on_progress: ProgressCallback | None,
    ) -> Generator[tuple[list[int], Run], None, None]:
        """Each prompt on its own, in order (`--batch-size` does not apply: one sequence at a
        time)."""
        if on_progress is not None:
            on_progress(0, len(rows))
        for index, row in enumerate(rows):
            max_new, notes = budget([row])
            run = self.run([row], seed, max_new, settings)
            run.notes = (
                notes
                + run.notes
                + (
                    ("llama.cpp runs the prompts one after another (--batch-size does not apply)",)
                    if settings.batch_size and settings.batch_size > 1 and index == 0
                    else ()
                )
            )
            yield [index], run
            if run.interrupt is None and on_progress is not None:
                on_progress(index + 1, len(rows))

    def _one(
        self,
        row: Rendered,
        seed: int | None,
        max_new: int,
        settings,
        on_text: TextCallback | None,
        rules: str | None = None,
    ) -> tuple[Completion, float | None, KeyboardInterrupt | None]:
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        llm = self.entry.model
        prompt = list(row.payload)
        if seed is not None:
            llm.set_seed(seed)
        # The user's settings and nothing else: min_p off (llama-cpp-python defaults to
        # 0.05), no repeat penalty. Temperature 0 is llama.cpp's greedy sampler.
        sampling: dict[str, Any] = (
            dict(temp=0.0)
            if settings.greedy
            else dict(
                temp=settings.temperature, top_p=settings.top_p, top_k=settings.top_k, min_p=0.0
            )
        )
        stops = tuple(settings.stop)
        hold = max((len(s) for s in stops), default=1) - 1  # not yet shown: may start a stop string
        tokens: list[int] = []
        text, sent, reason, stop_hit = "", 0, None, None
        first = interrupt = None
        vocab = llm._model.vocab
        if rules is not None:  # a fresh grammar state for each answer
            sampling["grammar"] = LlamaGrammar.from_string(rules, verbose=False)
        kept: list[TokenLogprob] = []  # with --logprobs
        if settings.logprobs is not None:
            vocabulary = llama_cpp_logprobs.Vocabulary(llm)
            pieces = llama_cpp_logprobs.Pieces(llm, special=False)
        generator = llm.generate(prompt, repeat_penalty=1.0, **sampling)
        try:
            for token in generator:
                first = first or time.perf_counter()
                tokens.append(token)
                if settings.logprobs is not None:
                    # The logits that produced it are the context's last row until the
                    # generator decodes the token.
                    kept.append(
                        llama_cpp_logprobs.record(
                            len(kept),
                            pieces(token),
                            token,
                            llama_cpp_logprobs.last_logprobs(llm),
                            settings.logprobs,
                            vocabulary,
                        )
                    )
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    reason = "eos"
                    break
                text = _decoded(llm.detokenize(tokens, prev_tokens=prompt))
                hits = [(text.find(s), s) for s in stops if s in text]
                if hits:
                    pos, stop_hit = min(hits)
                    text, reason = text[:pos], "stop string"
                    break
                if len(tokens) >= max_new:
                    reason = "length"
                    break
                if on_text is not None and len(text) - hold > sent:
                    on_text(text[sent : len(text) - hold])
                    sent = len(text) - hold
        except KeyboardInterrupt as e:
            interrupt, reason = e, "interrupted"
        except Exception as e:  # explained outside this handler's context
            generator.close()
            raise self._explain(e, len(prompt), max_new) from None
        finally:
            generator.close()
        if reason == "eos":
            text = _decoded(llm.detokenize(tokens[:-1], prev_tokens=prompt))
        if on_text is not None and interrupt is None and len(text) > sent:
            on_text(text[sent:])
        done = Completion(
            text, len(tokens), reason or "length", stop_hit, tuple(tokens), len(prompt)
        )
        done.tokens = tuple(kept)
        return done, first, interrupt

    def score(
        self,
        pairs: Sequence[ScorePair],
        settings: Settings,
        on_progress: ProgressCallback | None,
    ) -> Generator[tuple[list[int], list[Scored]], None, None]:
        """Each pair in turn, in the model's own context, with the logits of the scored
        positions only (llama_cpp_logprobs); tokenized as lm-evaluation-harness does."""
        llm = self.entry.model
        encoded = [self._encoded(pair) for pair in pairs]
        top = settings.logprobs if settings.logprobs is not None else 0
        try:
            yield from llama_cpp_logprobs.score(llm, encoded, top, on_progress)
        except (KeyboardInterrupt, GeneratorExit, GenerationError):
            raise
        except Exception as e:
            width = max(len(p.context) + len(p.continuation) for p in encoded)
            raise self._explain(e, width, 0) from None

    def _encoded(self, pair: ScorePair) -> score_tokens.Encoded:
        llm = self.entry.model
        context, templated = "", False
        if pair.context is not None:
            context = self.render(pair.context).shown
            templated = not pair.context.raw and self._chat_formatter() is not None
        return score_tokens.encoded(
            pair, context, templated, llama_cpp_logprobs.pair_tokenizer(llm)
        )

    def _explain(self, error: BaseException, prompt_tokens: int, max_new: int) -> BaseException:
        context = {
            "model": self.info.name,
            "prompt_tokens": prompt_tokens,
            "max_new_tokens": max_new,
            "batch_size": 1,
            "context_length": self.context_limit(),
            "dtype": self.info.dtype,
        }
        wrapped = diagnose(error, context, GENERATION)
        if wrapped is not error:
            wrapped.__cause__ = error
        return wrapped


def _around(full: list[int], inner: list[int]) -> tuple[list[int], list[int]]:
    """(what tokenizing added before `inner`, and after it) in `full`: the model's bos."""
    for start in range(len(full) - len(inner) + 1):
        if full[start : start + len(inner)] == inner:
            return full[:start], full[start + len(inner) :]
    return [], []


@contextmanager
def _llama_log() -> Iterator[list[str]]:
    """What llama.cpp logs within the block, kept (not printed): why it refused a file.
    llama-cpp-python's own logger is put back after."""
    import ctypes

    import llama_cpp

    said: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        said.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield said
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _refused(source: AdapterSource, model: str, said: list[str]) -> LoadError:
    reason = next(
        (
            line.split("failed to apply lora adapter:")[-1].strip()
            for line in said
            if "failed" in line
        ),
        "",
    )
    if "shape" in reason or "arch" in reason:
        return _other_base(source, model, f"llama.cpp: {reason}")
    return LoadError(
        f"llama.cpp could not read the LoRA file {os.path.basename(source.path)}",
        f"llama.cpp: {reason}" if reason else "llama.cpp gave no reason",
        [
            "make the GGUF LoRA from its PEFT folder with llama.cpp's convert_lora_to_gguf.py "
            "FOLDER --base BASE_MODEL_FOLDER",
            "a newer llama.cpp may read it: pip install -U llama-cpp-python",
        ],
    )


def _other_base(source: AdapterSource, model: str, why: str) -> LoadError:
    from ..paths import short_name

    return LoadError(
        f"{source.name}: an adapter for another base model than {short_name(model)}",
        why,
        [
            "load the .gguf it was converted against, then the adapter: %llm_load BASE.gguf "
            f"--engine llama.cpp --adapter {source.name}={source.path}",
            "convert_lora_to_gguf.py --base names the model a LoRA file is made for",
        ],
    )


def _decoded(raw: bytes) -> str:
    """The text of the bytes so far; an incomplete UTF-8 character at the end waits for
    the next token (a streamed piece never changes afterwards)."""
    return codecs.getincrementaldecoder("utf-8")("ignore").decode(raw, final=False)


def _version() -> str | None:
    try:
        return _metadata.version("llama_cpp_python")
    except _metadata.PackageNotFoundError:
        return None


# --- loading ---------------------------------------------------------------------------


def available() -> bool:
    """Whether llama-cpp-python is installed (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def missing_error(name: str) -> LoadError:
    return LoadError(
        f"could not load {name} with --engine llama.cpp",
        "the optional package llama-cpp-python is not installed (it runs .gguf files as they are)",
        [
            INSTALL,
            "then restart the kernel and run %llm_load again",
            "or leave out --engine: transformers loads the .gguf dequantized (slower)",
        ],
    )


class LlamaCppLoader:
    def plan(self, options: LoadOptions, progress: Progress | None) -> Plan:
        name = options.model
        if name is None:
            raise LoadError("no model given", fixes=["%llm_load $path --engine llama.cpp"])
        if options.quantize:
            raise LoadError(
                f"--quantize {options.quantize} with --engine llama.cpp: "
                "llama.cpp runs the file as quantized in it",
                fixes=[
                    "leave out --quantize: the .gguf is quantized already",
                    "leave out --engine to quantize with bitsandbytes",
                ],
            )
        source = resolve_source(name, options.revision)
        if source.kind != "gguf" or source.path is None:
            raise LoadError(
                f"{source.name}: --engine llama.cpp runs .gguf files only",
                "llama.cpp reads its own file format, GGUF; this is a "
                + ("Hub id" if source.kind == "hub" else "folder"),
                [
                    "leave out --engine to load it with transformers",
                    "or convert it to .gguf with llama.cpp's convert_hf_to_gguf.py",
                ],
            )
        if not available():
            raise missing_error(source.name)
        # The weights are mapped as they are in the file.
        size = os.path.getsize(source.path)
        est = Estimate(size, 0, "gguf", "gguf", (source.path,), 0)
        unused = options.unused("dtype", "max_memory", "trust_remote_code")
        if options.device_map not in ("auto", "cpu"):
            unused += (f"--device-map {options.device_map}",)
        notes = (
            (
                f"{', '.join(unused)}: not used by --engine llama.cpp, which runs the file's"
                " own quantized weights on the CPU (leave out --engine for transformers)",
            )
            if unused
            else ()
        )
        return Plan(CacheKey(KIND, source.identity), name, est, "cpu", source=source, notes=notes)

    def load(self, plan: Plan, options: LoadOptions, progress: Progress | None) -> Loaded:
        assert plan.source is not None and plan.source.path is not None
        llm, info = _open(plan.source.name, plan.source.path, progress)
        return Loaded(llm, None, info, LlamaCppEngine)

    def card(self, entry: LoadedModel, report: LoadReport) -> LoadCard:
        return load_card(entry, report)


LOADER = LlamaCppLoader()


def _open(name: str, path: str, progress: Progress | None) -> tuple[Any, ModelInfo]:
    """Open the .gguf at `path` with llama.cpp; returns (the Llama object, its facts)."""
    import llama_cpp

    from ..hardware import physical_cores

    started = time.perf_counter()
    trained = _trained_context(path)
    n_ctx = min(trained, MAX_CONTEXT) if trained else MAX_CONTEXT
    threads = physical_cores()
    if progress:
        progress(f"opening {os.path.basename(path)} with llama.cpp ({threads} threads)…")
    try:
        llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, verbose=False)
    except ValueError as e:  # llama-cpp-python's "Failed to load model from file: ..."
        raise LoadError(
            f"{os.path.basename(path)}: llama.cpp could not open the file",
            "it is not a GGUF model this llama.cpp can read: truncated or damaged, "
            "or an architecture it does not know",
            [
                f"check the file: {os.path.getsize(path)} bytes at {path}",
                "a newer llama.cpp may know the architecture: pip install -U llama-cpp-python",
                "or leave out --engine: "
                "transformers reads .gguf files of the architectures it knows",
            ],
        ) from e
    if llm.metadata.get("tokenizer.chat_template") and llm.chat_format != "chat_template.default":
        # llama-cpp-python took a built-in look-alike for this template: use the file's own.
        llm.chat_format = "chat_template.default"
    seconds = time.perf_counter() - started
    kind = _file_type(llm.metadata)
    size = os.path.getsize(path)
    state = _context_bytes(llm)
    context = f"{n_ctx} tokens" + (
        f" (trained on {trained}; capped to keep the KV cache small)"
        if trained and trained > n_ctx
        else ""
    )
    details = (
        (
            "engine",
            f"llama.cpp (llama-cpp-python {_version() or '?'}), in the kernel: "
            "the file runs as it is",
        ),
        ("quantization", kind),
        ("context", context),
        ("threads", f"{threads} (one per physical core)"),
    )
    info = ModelInfo(
        name=name,
        kind="gguf",
        class_name=f"llama.cpp {llm.metadata.get('general.architecture', '?')}",
        num_params=int(llama_cpp.llama_model_n_params(llm._model.model)),
        memory_bytes=size + state,
        device="cpu",
        dtype=kind.split()[0],
        quantization=kind.split()[0],
        dtype_reason="as quantized in the file; llama.cpp computes on it directly",
        source=path,
        revision=None,
        load_seconds=seconds,
        engine=KIND,
        details=details,
    )
    return llm, info


# Byte widths of GGUF's fixed-size value types (uint8 ... float64, bool), to step over values.
_GGUF_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _trained_context(path: str) -> int | None:
    """`{arch}.context_length` from the GGUF header, walked without decoding the
    vocabulary (gguf.GGUFReader decodes every value: seconds for a 49k vocabulary)."""
    import struct

    found: dict[str, Any] = {}
    try:
        with open(path, "rb") as f:
            magic, version, _tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF" or version < 2:
                return None

            def string() -> bytes:
                (n,) = struct.unpack("<Q", f.read(8))
                return f.read(n)

            def skip(kind: int) -> None:
                if kind == 8:
                    string()
                elif kind == 9:
                    item, count = struct.unpack("<IQ", f.read(12))
                    if item in _GGUF_WIDTH:
                        f.seek(_GGUF_WIDTH[item] * count, 1)
                    else:
                        for _ in range(count):
                            skip(item)
                else:
                    f.seek(_GGUF_WIDTH[kind], 1)

            for _ in range(n_kv):
                key = string().decode("utf-8", "replace")
                (kind,) = struct.unpack("<I", f.read(4))
                if key == "general.architecture" and kind == 8:
                    found["arch"] = string().decode("utf-8", "replace")
                elif key.endswith(".context_length") and kind in (
                    4,
                    5,
                    10,
                    11,
                ):  # u32, i32, u64, i64
                    found[key] = struct.unpack(
                        {4: "<I", 5: "<i", 10: "<Q", 11: "<q"}[kind], f.read(_GGUF_WIDTH[kind])
                    )[0]
                else:
                    skip(kind)
                if "arch" in found and f"{found['arch']}.context_length" in found:
                    return int(found[f"{found['arch']}.context_length"])
    except (
        OSError,
        struct.error,
        KeyError,
        ValueError,
        OverflowError,
        MemoryError,
    ):  # a damaged header
        return None  # llama.cpp itself then says what is wrong with the file
    return None


def _file_type(meta: dict) -> str:
    """'Q4_1' from the header's general.file_type, named by the gguf package's table."""
    raw = meta.get("general.file_type")
    if raw is None:
        return "unknown"
    try:
        import gguf

        return gguf.LlamaFileType(int(raw)).name.removeprefix("MOSTLY_") + " (GGUF file type)"
    except (ImportError, ValueError):
        return f"file type {raw}"


def _context_bytes(llm) -> int:
    """Bytes of the context (KV cache, buffers) beside the mapped file; 0 if unknown."""
    try:
        import llama_cpp

        return int(llama_cpp.llama_state_get_size(llm._ctx.ctx))
    except Exception:  # an older binding without it: the file size alone is shown
        return 0
