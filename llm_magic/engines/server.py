"""The server engine: any OpenAI-compatible endpoint (vLLM, SGLang, TGI, llama.cpp's
server, Ollama, `transformers serve`) through the official `openai` client.

The server applies the chat template (`/v1/chat/completions`); `raw` text goes to
`/v1/completions` as it is. A single prompt streams (usage reported in the last chunk);
Ctrl-C closes the stream at once and keeps the text so far. `--over` sends the prompts
concurrently from a thread pool so the server's continuous batching does the work, with
back-off on 429/503 and each item failing on its own.

The API key is read from the environment variable the user named, when a client is made,
and lives only inside the client: never in a result, a card, a log line or the notebook.

`openai` is imported inside the functions: `import llm_magic` stays fast.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from ..errors import SERVER, GenerationError, IncompleteStream, LLMError, chain, diagnose
from ..logprobs import SERVER_DISTRIBUTION, TokenLogprob
from ..redact import public_url, redact
from ..settings import Settings
from . import server_formats, server_logprobs
from .base import (
    Budget,
    Capabilities,
    Completion,
    ProgressCallback,
    Rendered,
    Request,
    Run,
    Scored,
    ScorePair,
    TextCallback,
    failed_midway,
)


@dataclass
class Defaults:
    """Defaults for server models, set from the LLMMagics traits (`%config`) or in Python."""

    concurrency: int = 16  # requests in flight for --over
    timeout: float = 300.0  # seconds to wait for data from the server (read), per request
    connect_timeout: float = 10.0  # seconds to open a connection
    retries: int = 4  # for 429 and 503, with exponential back-off


DEFAULTS = Defaults()

_RETRIED = (429, 503)  # busy, rate-limited, still loading: worth another try


def adapters_of(info) -> list[str]:
    """The ids a server serves as adapters of `info`'s model: those whose `parent` (vLLM's
    field for a LoRA module) is it."""
    return [str(m["id"]) for m in info.served if m.get("parent") == info.name and m.get("id")]


@dataclass(frozen=True)
class Connection:
    """Where a server model is, and how to reach it: everything but the key itself."""

    url: str  # the base URL the client posts to (ends in /v1 for most servers)
    api_key_env: str | None  # the variable holding the key, read when a client is made
    timeout: float | None = None  # read timeout; None: DEFAULTS.timeout
    connect_timeout: float | None = None

    def key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def client(self, read_timeout: float | None = None):
        """A fresh `openai.OpenAI` client (no built-in retries: a closed port fails at once)."""
        import openai

        read = read_timeout or self.timeout or DEFAULTS.timeout
        connect = min(self.connect_timeout or DEFAULTS.connect_timeout, read)
        # A server without keys takes any; the client refuses to send none at all.
        return openai.OpenAI(
            base_url=self.url,
            api_key=self.key() or "none",
            max_retries=0,
            timeout=openai.Timeout(read, connect=connect),
        )

    def scrub(self, error: BaseException) -> BaseException:
        """The error with the key (should a server echo it back) and any URL credentials
        cut out of its messages, the whole chain through."""
        key = self.key()
        for e in chain(error, suppressed=True):
            e.args = tuple(redact(a, [key]) if isinstance(a, str) else a for a in e.args)
            message = getattr(e, "message", None)
            if isinstance(message, str):  # openai's errors repeat their text there
                # setattr: an attribute only some exceptions have, not BaseException's
                setattr(e, "message", redact(message, [key]))  # noqa: B010
        return error


class ServerEngine:
    """Generation with a model served over the OpenAI-compatible API."""

    kind = "server"
    # The server batches what it is sent at once; it counts a prompt's tokens itself.
    # Log-probabilities are asked of the server: one that gives none gets a note (an
    # answer) or a card (scoring), never a number it did not send. A server's adapters are
    # models it serves (vLLM: --lora-modules NAME=PATH).
    capabilities = Capabilities(
        group="request",
        counts_prompt_tokens=False,
        adapters=("served",),
        logprobs=True,
        prompt_logprobs=True,
        distribution=SERVER_DISTRIBUTION,
    )

    def __init__(self, info, connection: Connection) -> None:
        self._info = info  # serving.ServerInfo
        self.connection = connection
        self.top_k_refused = False  # learned from the server: it rejects top_k
        self.no_usage_said = False  # the note that the server reports no usage: said once
        self.logprobs_refused = False  # learned from the server: it rejects logprobs
        self.prompt_logprobs_checked = False  # its echoed log-probabilities passed the check
        self._client = None
        # Learned from the server, per kind of answer format: the way it enforces it, or
        # what each way met (engines/server_formats.py). Its capabilities follow.
        self.format_ways: dict[str, server_formats.Found] = {}
        self.capabilities = ServerEngine.capabilities
        self._adapters: dict[str, str] = {}  # name -> the id the server serves it as
        self._active: str | None = None

    # --- adapters: models of the same server ---------------------------------------------

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def attach_adapter(self, source):
        from ..errors import LoadError
        from .base import AdapterInfo

        served = [str(m.get("id")) for m in self._info.served]
        if source.path not in served:
            own = adapters_of(self._info)
            raise LoadError(
                f"{public_url(self.connection.url)} does not serve {source.path!r}",
                "a server's adapters are the model names it serves"
                + (f"; for {self._info.name}: {', '.join(own)}" if own else ""),
                [
                    "vLLM serves LoRA adapters as models: vllm serve BASE --enable-lora "
                    "--lora-modules NAME=PATH",
                    f"%llm_load {self._info.name} --server {public_url(self.connection.url)} "
                    "--reload asks the server again what it serves",
                ],
            )
        self._adapters[source.name] = source.path
        entry = next(m for m in self._info.served if str(m.get("id")) == source.path)
        return AdapterInfo(
            name=source.name,
            path=source.path,
            format="served",
            method="served",
            base_model=str(entry.get("parent") or entry.get("root") or "") or None,
        )

    def detach_adapter(self, name: str) -> list[Any]:
        self._adapters.pop(name, None)
        if self._active == name:
            self._active = None
        return []  # nothing was held here: the server holds the adapter

    def offered_adapters(self) -> tuple[str, ...]:
        return tuple(adapters_of(self._info))

    def settle(self) -> None:
        self._active = None

    @contextmanager
    def use_adapter(self, name: str | None):
        self._active = name
        try:
            yield
        finally:
            self._active = None

    @property
    def _model(self) -> str:
        """The id requests name: the served adapter's while one is in use."""
        return self._adapters.get(self._active or "", self._info.name)

    @property
    def info(self):
        return self._info

    @property
    def client(self):
        if self._client is None:
            self._client = self.connection.client()
        return self._client

    def describe(self) -> dict[str, Any]:
        import openai

        facts = {
            "engine": self.kind,
            "server": public_url(self.connection.url),
            "served_model": self._model,
            "client": f"openai {openai.__version__}",
        }
        if self._adapters:
            facts["adapter"] = self._active or "base"
        if self._info.server:
            facts["server_software"] = self._info.server
        return facts

    def context_limit(self) -> int | None:
        return self._info.context_length

    def render(self, request: Request) -> Rendered:
        if request.raw:
            text = "\n\n".join(m["content"] for m in request.messages)
            return Rendered(
                request, text, None, ("completions", text), ("sent as is to /v1/completions",)
            )
        messages = [{"role": m["role"], "content": m["content"]} for m in request.messages]
        shown = json.dumps(messages, ensure_ascii=False, indent=1)
        return Rendered(request, shown, None, ("chat", messages))

    # --- one prompt, streamed ----------------------------------------------------------

    def run(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        max_new: int,
        settings,
        on_text: TextCallback | None = None,
    ) -> Run:
        """Each row streamed in turn (one, from %%llm_generate). Ctrl-C closes the stream
        at once: the text so far is the partial completion."""
        # Before the clock starts: probing the server is not this answer's time.
        format_note = self._learn_format(settings, rows[0], max_new) if rows else ""
        started = time.perf_counter()
        completions: list[Completion] = []
        first_token_at = None
        notes: tuple[str, ...] = ()
        for row in rows:
            streamed = _Streamed()
            try:
                self._stream(row, seed, max_new, settings, on_text, streamed)
            except KeyboardInterrupt as e:
                completions.append(streamed.completion("interrupted", settings))
                return Run(
                    completions,
                    started,
                    time.perf_counter(),
                    first_token_at or streamed.first_at,
                    e,
                    format_note=format_note,
                )
            except Exception as e:
                # A stream that broke off may leave its connection unusable: the next
                # request opens a fresh one.
                self._drop_client()
                error = self._explain(e, row, max_new)
                if streamed.parts:  # the server failed mid-stream: keep what came
                    partial = streamed.completion("error", settings)
                    partial.error = str(error)
                    so_far = completions + [partial]
                    failed_midway(
                        error, Run(so_far, started, time.perf_counter(), streamed.first_at)
                    )
                raise error from e
            completions.append(streamed.completion(None, settings))
            first_token_at = first_token_at or streamed.first_at
            if streamed.usage is None and not self.no_usage_said:
                self.no_usage_said = True
                notes += (
                    "this server reports no usage while streaming: new tokens are counted as "
                    "streamed pieces, prompt tokens are unknown (said once for this model)",
                )
        return Run(
            completions,
            started,
            time.perf_counter(),
            first_token_at,
            notes=self._notes(settings, completions) + notes,
            format_note=format_note,
        )

    # --- answer formats ------------------------------------------------------------------

    def _learn_format(self, settings, row: Rendered, max_new: int) -> str:
        """Find how this server enforces the answer's kind of format (once per kind, by
        probing); returns the result's words for it."""
        fmt = settings.answer_format
        if fmt is None:
            return ""
        found = self.format_ways.get(fmt.kind)
        if found is None:
            try:
                found = server_formats.probe(fmt.kind, self._probe_answer)
            except Exception as e:
                raise self._explain(e, row, max_new) from e
            self.format_ways[fmt.kind] = found
            kinds = frozenset(k for k, f in self.format_ways.items() if f.way is not None)
            self.capabilities = replace(self.capabilities, answer_formats=kinds)
        return found.note()

    def _probe_answer(self, fields: dict[str, Any]) -> tuple[str, int | None]:
        """The probe prompt's greedy answer with these body fields; ("", status) when the
        server refuses them."""
        body = {
            "model": self._info.name,
            "max_tokens": server_formats.PROBE_TOKENS,
            "temperature": 0.0,
            "messages": [{"role": "user", "content": server_formats.PROBE_PROMPT}],
            "extra_body": fields,
        }
        try:
            reply = self.client.chat.completions.create(**body)
        except Exception as e:
            # Any HTTP error status refuses this way (llama-cpp-python's server answers a
            # field it cannot read with 500); a connection failure is the server's, raised.
            status = getattr(e, "status_code", None)
            if isinstance(status, int):
                return "", status
            raise
        return reply.choices[0].message.content or "", None

    def _format_fields(self, settings) -> dict[str, Any]:
        """The body fields that ask for the answer's format the server's way ({}: it has
        none, or no format was asked for)."""
        fmt = settings.answer_format
        found = self.format_ways.get(fmt.kind) if fmt is not None else None
        if fmt is None or found is None or found.way is None:
            return {}
        return found.way.fields(fmt) or {}

    def _notes(self, settings, completions: Sequence[Completion] = ()) -> tuple[str, ...]:
        notes: tuple[str, ...] = ()
        # Said only for a top_k the user chose: the default one is left out silently.
        chosen = settings.top_k != Settings.top_k
        if self.top_k_refused and settings.top_k and chosen and not settings.greedy:
            notes += (f"this server takes no top_k: sampled without --top-k {settings.top_k}",)
        if settings.logprobs is not None:
            if self.logprobs_refused:
                notes += (LOGPROBS_REFUSED,)
            elif any(c.new_tokens and not c.tokens for c in completions):
                notes += (LOGPROBS_NOT_SENT,)
        return notes

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _stream(
        self, row: Rendered, seed, max_new: int, settings, on_text, streamed: _Streamed
    ) -> None:
        endpoint, body = self._body(row, seed, max_new, settings)
        body.update(stream=True, stream_options={"include_usage": True})
        stream = None
        try:
            stream = self._create(self.client, endpoint, body)
            for chunk in stream:
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    streamed.usage = usage
                for choice in chunk.choices or ():
                    piece = choice.delta.content if endpoint == "chat" else choice.text
                    if settings.logprobs is not None:
                        streamed.tokens += _records(
                            endpoint, choice, len(streamed.tokens), settings
                        )
                    if piece:
                        if streamed.first_at is None:
                            streamed.first_at = time.perf_counter()
                        streamed.parts.append(piece)
                        streamed.pieces += 1
                        if on_text is not None:
                            on_text(piece)
                    if choice.finish_reason:
                        streamed.finish = choice.finish_reason
                        streamed.stop_said = _said_stop(choice)
        finally:
            if stream is not None:
                stream.close()  # Ctrl-C or an error: the server sees the client leave and stops
        if streamed.finish is None:
            # No finish reason: the server was stopped, or failed on its side without
            # saying why (llama.cpp's server with a prompt past its context).
            raise IncompleteStream(streamed.pieces)

    # --- many prompts, concurrently ------------------------------------------------------

    def run_many(
        self,
        rows: Sequence[Rendered],
        seed: int | None,
        settings: Settings,
        budget: Budget,
        on_progress: ProgressCallback | None,
    ) -> Generator[tuple[list[int], Run], None, None]:
        """Every row its own request, `settings.concurrency` (default: DEFAULTS.concurrency)
        in flight at once; yields ([index], run) as each finishes. A row that fails after its
        retries is a completion with `error` set, and the others go on; if every row fails,
        the first failure is raised as the card."""
        size = settings.concurrency or DEFAULTS.concurrency
        max_new, notes = budget(rows)
        format_note = self._learn_format(settings, rows[0], max_new) if rows else ""
        client = self.connection.client()  # its own connection pool, closed when the run ends
        pool = ThreadPoolExecutor(
            max_workers=min(size, len(rows)), thread_name_prefix="llm_magic-server"
        )
        done, failures = 0, []
        try:
            if on_progress is not None:
                on_progress(0, len(rows))
            pending = {
                pool.submit(
                    self._one, client, row, None if seed is None else seed + i, max_new, settings
                ): i
                for i, row in enumerate(rows)
            }
            while pending:
                finished, _ = wait(
                    pending, timeout=0.1, return_when=FIRST_COMPLETED
                )  # a short wait: Ctrl-C gets through
                for future in finished:
                    i = pending.pop(future)
                    run, error = future.result()
                    run.notes = notes + self._notes(settings, run.completions)
                    run.format_note = format_note
                    if error is not None:
                        failures.append(error)
                    done += 1
                    yield [i], run
                    if on_progress is not None:
                        on_progress(done, len(rows))
            if failures and len(failures) == len(rows):
                raise failures[0]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            client.close()  # requests still in flight end now (Ctrl-C): their connections close

    def _one(
        self, client, row: Rendered, seed, max_new: int, settings
    ) -> tuple[Run, LLMError | None]:
        """One row's request, retried on 429/503 with back-off; never raises."""
        started = time.perf_counter()
        for attempt in range(DEFAULTS.retries + 1):
            try:
                completion = self._complete(client, row, seed, max_new, settings)
                return Run([completion], started, time.perf_counter()), None
            except Exception as e:
                status = getattr(e, "status_code", None)
                if status in _RETRIED and attempt < DEFAULTS.retries:
                    time.sleep(_backoff(e, attempt))
                    continue
                error = self._explain(e, row, max_new)
                error.__cause__ = e
                failed = Completion("", 0, "error", error=str(error))
                return Run([failed], started, time.perf_counter()), error
        raise AssertionError("unreachable")

    def _complete(self, client, row: Rendered, seed, max_new: int, settings) -> Completion:
        endpoint, body = self._body(row, seed, max_new, settings)
        reply = self._create(client, endpoint, body)
        choice = reply.choices[0]
        text = (choice.message.content or "") if endpoint == "chat" else (choice.text or "")
        usage = getattr(reply, "usage", None)
        new = getattr(usage, "completion_tokens", None)
        reason, stop_string = _stop_reason(choice.finish_reason, _said_stop(choice), settings)
        done = Completion(
            text,
            new if new is not None else 0,
            reason,
            stop_string,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
        )
        if settings.logprobs is not None:
            done.tokens = tuple(_records(endpoint, choice, 0, settings))
        return done

    # --- the request -------------------------------------------------------------------

    def _body(self, row: Rendered, seed, max_new: int, settings) -> tuple[str, dict]:
        endpoint, content = row.payload
        body: dict[str, Any] = {"model": self._model, "max_tokens": max_new}
        body["messages" if endpoint == "chat" else "prompt"] = content
        if settings.greedy:
            body["temperature"] = 0.0  # the OpenAI API's greedy decoding
        else:
            body.update(temperature=settings.temperature, top_p=settings.top_p)
            if settings.top_k and not self.top_k_refused:
                body["extra_body"] = {
                    "top_k": settings.top_k
                }  # not in OpenAI's API; vLLM, llama.cpp, SGLang take it
        if seed is not None:
            body["seed"] = seed
        if settings.stop:
            body["stop"] = list(settings.stop)
        asked = self._format_fields(settings)
        if asked:
            body["extra_body"] = {**body.get("extra_body", {}), **asked}
        if settings.logprobs is not None and not self.logprobs_refused:
            body.update(server_logprobs.request_fields(endpoint, settings.logprobs))
        return endpoint, body

    def _create(self, client, endpoint: str, body: dict):
        api = client.chat.completions if endpoint == "chat" else client.completions
        try:
            return api.create(**body)
        except Exception as e:
            said = f"{e} {getattr(e, 'body', '')}"
            refused = getattr(e, "status_code", None) in (400, 422)
            if refused and "extra_body" in body and "top_k" in said:
                self.top_k_refused = True  # this server takes no top_k: sample without it
                rest = {k: v for k, v in body["extra_body"].items() if k != "top_k"}
                body = {k: v for k, v in body.items() if k != "extra_body"}
                return self._create(client, endpoint, body | ({"extra_body": rest} if rest else {}))
            if refused and "logprobs" in body:
                # Some servers (transformers serve) refuse logprobs: answer without them,
                # and say so with the answer.
                self.logprobs_refused = True
                kept = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
                return self._create(client, endpoint, kept)
            raise

    # --- scoring -----------------------------------------------------------------------

    def score(
        self,
        pairs: Sequence[ScorePair],
        settings: Settings,
        on_progress: ProgressCallback | None,
    ) -> Generator[tuple[list[int], list[Scored]], None, None]:
        """Each pair its own /v1/completions request with echo and logprobs,
        `settings.concurrency` at once; the reply checked (server_logprobs.scored): a
        server that gives no prompt log-probabilities gets the card at its first reply."""
        prepared = [
            server_logprobs.prepare(
                "\n\n".join(m["content"] for m in p.context.messages) if p.context else "",
                p.plain_delimiter + p.continuation,
                p.label,
            )
            for p in pairs
        ]
        top = settings.logprobs if settings.logprobs is not None else 0
        size = settings.concurrency or DEFAULTS.concurrency
        url = public_url(self.connection.url)
        client = self.connection.client()
        pool = ThreadPoolExecutor(
            max_workers=max(1, min(size, len(pairs))), thread_name_prefix="llm_magic-score"
        )

        def one(index: int):
            body = server_logprobs.scoring_body(self._info.name, prepared[index], top)
            return client.completions.create(**body)

        done = 0
        try:
            if not self.prompt_logprobs_checked:
                try:
                    server_logprobs.check_server(client, self._info.name, url)
                except GenerationError:
                    raise
                except Exception as e:
                    raise self._explain(e, "the server's check", 1, scoring=True) from e
                self.prompt_logprobs_checked = True
            if on_progress is not None:
                on_progress(0, len(pairs))
            pending = {pool.submit(one, i): i for i in range(len(pairs))}
            while pending:
                finished, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    try:
                        reply = future.result()
                    except Exception as e:
                        raise self._explain(e, pairs[i].label, 1, scoring=True) from e
                    yield [i], [server_logprobs.scored(reply, prepared[i], top, url)]
                    done += 1
                    if on_progress is not None:
                        on_progress(done, len(pairs))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            client.close()

    def _explain(
        self, error: BaseException, row: Rendered | str, max_new: int, scoring: bool = False
    ) -> LLMError:
        self.connection.scrub(error)
        context = {
            "stage": "generate",
            "model": self._info.name,
            "url": public_url(self.connection.url),
            "api_key_env": self.connection.api_key_env,
            "timeout": self.connection.timeout or DEFAULTS.timeout,
            "max_new_tokens": max_new,
            "label": row if isinstance(row, str) else row.request.label,
            "served": [m.get("id") for m in self._info.served],
        }
        if scoring and getattr(error, "status_code", None) in (400, 422, 500, 501):
            # Refused with echo and logprobs: the server cannot score (llama-cpp-python
            # without logits_all, a server that takes no echo).
            refusal = server_logprobs.no_prompt_logprobs(
                public_url(self.connection.url),
                f"it refused /v1/completions with echo and logprobs ({error})",
            )
            refusal.__cause__ = error
            return refusal
        return diagnose(error, context, SERVER, GenerationError)


LOGPROBS_REFUSED = (
    "--logprobs: this server refused log-probabilities (it answered without them); "
    "vLLM gives them, or load the model in the kernel"
)
LOGPROBS_NOT_SENT = (
    "--logprobs: this server sent no log-probabilities with its answer (result.tokens is "
    "empty); vLLM gives them, or load the model in the kernel"
)


def _records(endpoint: str, choice, start: int, settings) -> list[TokenLogprob]:
    """The token records in one reply (or streamed chunk) choice."""
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None:
        return []
    top = settings.logprobs or 0
    if endpoint == "chat":
        return server_logprobs.chat_records(getattr(logprobs, "content", None), start, top)
    return server_logprobs.completion_records(logprobs, start, top)


class _Streamed:
    """What came through one stream so far."""

    def __init__(self) -> None:
        self.tokens: list[TokenLogprob] = []
        self.parts: list[str] = []
        self.pieces = 0
        self.first_at: float | None = None
        self.usage = None
        self.finish: str | None = None
        self.stop_said: tuple[bool, object] = (False, None)  # see _said_stop

    def completion(self, reason: str | None, settings: Settings) -> Completion:
        usage = self.usage
        new = getattr(usage, "completion_tokens", None)
        prompt = getattr(usage, "prompt_tokens", None)
        if reason is None:
            reason, stop_string = _stop_reason(self.finish, self.stop_said, settings)
        else:
            stop_string = None
        # Without usage (interrupted, or a server that does not report it): one token per
        # streamed piece.
        done = Completion(
            "".join(self.parts),
            new if new is not None else self.pieces,
            reason,
            stop_string,
            prompt_tokens=prompt,
        )
        done.tokens = tuple(self.tokens)
        return done


def _said_stop(choice) -> tuple[bool, object]:
    """(whether the server says what stopped the answer, what it says). vLLM sends
    `stop_reason`: the stop string hit, a stop token's id, or null for the end of the
    answer; other servers send no such field."""
    extra = getattr(choice, "model_extra", None) or {}
    return ("stop_reason" in extra, extra.get("stop_reason"))


def _stop_reason(
    finish: str | None, said: tuple[bool, object], settings: Settings | None
) -> tuple[str, str | None]:
    """The server's finish_reason in llm_magic's words: "eos" when the model finished (as
    every engine says it), "length", "stop string". A server's "stop" covers both the end
    of the answer and a stop string; only where it does not say which (not vLLM) and
    --stop was given is it "eos or stop string"."""
    if finish == "length":
        return "length", None
    tells, what = said
    stops = settings.stop if settings is not None else ()
    if isinstance(what, str) and what in stops:
        return "stop string", what
    if finish == "stop":
        return ("eos or stop string" if stops and not tells else "eos"), None
    return finish or "eos", None


def _backoff(error: BaseException, attempt: int) -> float:
    """Seconds before retrying: the server's Retry-After when it gives one (capped), else
    0.5, 1, 2, 4 s with jitter."""
    response = getattr(error, "response", None)
    after = response.headers.get("retry-after") if response is not None else None
    try:
        if after is not None:
            return min(float(after), 30.0)
    except ValueError:
        pass
    return 0.5 * 2**attempt * (0.75 + random.random() / 2)
