"""The server catalogue: a model served over the OpenAI-compatible API
(engines/server.py), for a load (LoadError) or a generation (GenerationError), which the
caller names.

The openai client's own exception classes come first; under APIConnectionError, the link
that says why (refused, unknown host, TLS) is matched before the generic one, and since
httpcore hides that link with `from None`, the walk enters suppressed contexts.

context: stage ("load"/"generate"), url (no credentials), model, api_key_env (the
variable's name: the key itself is never in the context), served (ids), timeout,
max_new_tokens, label.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .card import Diagnosis, LLMError
from .rules import Catalogue, Context, Rule, pattern
from .wording import model_name

_HTTPX = ("httpx", "httpx2")  # the openai client's HTTP library, under either name
_READ_TIMEOUT = tuple(
    f"{p}.{n}" for p in _HTTPX for n in ("ReadTimeout", "ConnectTimeout", "PoolTimeout")
)
_DROPPED = tuple(
    f"{p}.{n}"
    for p in _HTTPX + ("httpcore", "httpcore2")
    for n in ("RemoteProtocolError", "ReadError")
)
_CONTEXT_TOO_LONG = pattern(
    r"context length|context window|maximum context|max_model_len|n_ctx|too many tokens|"
    r"prompt is too long|exceeds the (model|maximum)|longer than the model"
)


class IncompleteStream(Exception):
    """A server's stream that ended without a finish reason: the server was stopped, or
    failed on its side without saying why. Raised by the server engine, explained here."""

    def __init__(self, pieces: int) -> None:
        self.pieces = pieces  # pieces of text that arrived before the end
        super().__init__(
            f"the stream ended after {pieces} piece{'' if pieces == 1 else 's'} of text "
            "with no finish reason"
        )


def _what(ctx: Context) -> str:
    url = ctx.get("url") or "the server"
    if ctx.get("stage") == "load":
        return f"could not use the server at {url}"
    label = ctx.get("label")
    return f"generation with {model_name(ctx)} on {url} failed" + (
        f" ({label})" if label and label != "the prompt" else ""
    )


def _host_port(ctx: Context) -> str:
    parts = urlsplit(str(ctx.get("url") or ""))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _server_body(exc: BaseException) -> str:
    """What the server said, in one line; an HTML page is named, not shown."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = (
            inner.get("message") or inner.get("detail") or str(inner)
            if isinstance(inner, dict)
            else str(inner)
        )
    elif isinstance(body, str):
        text = body
    else:
        text = getattr(exc, "message", None) or str(exc)
    text = " ".join(str(text).split())
    if text.lstrip().lower().startswith(("<!doctype", "<html")):
        return "an HTML page"
    return text[:300]


def _refused(exc: BaseException, ctx: Context) -> Diagnosis:
    where = _host_port(ctx)
    return Diagnosis(
        _what(ctx),
        f"nothing is listening at {where} (connection refused)",
        [
            "start the server first, e.g. on the GPU node: vllm serve MODEL --port 8000",
            "check the host and port in --server (the URL the server printed when it started)",
            "a server behind SSH: ssh -N -L 8000:localhost:8000 gpu-node, "
            "then --server http://127.0.0.1:8000/v1",
        ],
    )


def _unknown_host(exc: BaseException, ctx: Context) -> Diagnosis:
    host = urlsplit(str(ctx.get("url") or "")).hostname
    return Diagnosis(
        _what(ctx),
        f"the host name {host!r} is not known here (DNS lookup failed)",
        [
            "check the spelling of the host in --server",
            "use the machine's IP address, or add the name to /etc/hosts",
        ],
    )


def _tls(exc: BaseException, ctx: Context) -> Diagnosis:
    first = (str(exc).strip().splitlines() or [""])[0][:120]
    fixes = [
        "a server on plain HTTP (most are: vLLM, llama.cpp, transformers serve): "
        "write http://, not https://"
    ]
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        fixes.insert(
            0,
            "a self-signed certificate: "
            "point SSL_CERT_FILE at its CA bundle before starting the kernel",
        )
    return Diagnosis(_what(ctx), f"the TLS handshake with {_host_port(ctx)} failed: {first}", fixes)


def _timed_out(exc: BaseException, ctx: Context) -> Diagnosis:
    timeout = ctx.get("timeout")
    limit = f" within {timeout:g} s" if isinstance(timeout, (int, float)) else ""
    return Diagnosis(
        _what(ctx),
        f"the server did not answer{limit} (connect or read timeout)",
        [
            "a long answer on a busy server: %config LLMMagics.request_timeout = 900  "
            "(then %llm_load ... --reload)",
            "check that the server is up and not stuck: its log, or curl URL/models",
            "fewer new tokens: --max-new-tokens 64",
        ],
    )


def _dropped(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        "the server closed the connection before the answer was complete",
        ["the server may have crashed or restarted: see its log, then run the cell again"],
    )


def _incomplete(exc: BaseException, ctx: Context) -> Diagnosis:
    pieces = getattr(exc, "pieces", 0)
    if pieces:
        cause = (
            "the server ended the stream before the answer was complete (no finish reason): "
            "it was stopped, or failed on its side"
        )
    else:
        cause = (
            "the server ended the stream before sending any text (no finish reason): it was "
            "stopped, or failed on its side, e.g. a prompt past its context"
        )
    fixes = ["its log says why; check that it is still running, then run the cell again"]
    if not pieces:
        fixes.append(
            "shorten the prompt, or start the server with a longer context "
            "(llama.cpp: --n_ctx N; vLLM: --max-model-len N)"
        )
    return Diagnosis(_what(ctx), cause, fixes)


def _stream_error(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        f"the server failed while answering; it says: {_server_body(exc)}",
        [
            "its log says more; run the cell again once it is fixed",
            "a server that keeps failing may need a restart",
        ],
    )


def _says_context_too_long(exc: BaseException) -> bool:
    return bool(_CONTEXT_TOO_LONG.search(_server_body(exc)))


def _connection(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        f"the connection to {_host_port(ctx)} failed",
        [
            "check the URL in --server and that the server is running",
        ],
    )


def _key_refused(exc: BaseException, ctx: Context) -> Diagnosis:
    var = ctx.get("api_key_env")
    status = getattr(exc, "status_code", "")
    if var:
        cause = f"the server refused the key in ${var} ({status})"
        fixes = [
            f"check the key in ${var} (it is never shown here)",
            "set it, then %llm_load again with --reload: "
            f"import os, getpass; os.environ['{var}'] = getpass.getpass()",
        ]
    else:
        cause = f"the server wants an API key, and none was sent ({status})"
        fixes = [
            "name the variable that holds the key: "
            "%llm_load MODEL --server URL --api-key-env MY_KEY",
            "or set OPENAI_API_KEY before %llm_load (it is the default)",
        ]
    return Diagnosis(_what(ctx), cause, fixes)


def _not_found(exc: BaseException, ctx: Context) -> Diagnosis:
    said = _server_body(exc)
    if said == "an HTML page" or ctx.get("stage") == "load" or "model" not in said.lower():
        return _not_openai(exc, ctx)
    served = ctx.get("served") or []
    fixes = [f"served here: {', '.join(served)}"] if served else []
    fixes.append("%llm_load --server URL  (without MODEL) takes the one the server serves")
    return Diagnosis(_what(ctx), f"the server does not serve {ctx.get('model')!r}: {said}", fixes)


def _not_openai(exc: BaseException, ctx: Context) -> Diagnosis:
    url = ctx.get("url") or "the URL"
    return Diagnosis(
        _what(ctx),
        f"{url} is not an OpenAI-compatible API: {url}/models answered "
        f"{getattr(exc, 'status_code', '')} with {_server_body(exc)}",
        [
            "the API's base URL usually ends in /v1: --server http://HOST:8000/v1",
            "check the port: it may be another web server (a notebook, a dashboard)",
        ],
    )


def _context_too_long(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        f"the prompt is longer than the model's context: the server says: {_server_body(exc)}",
        [
            "shorten the prompt, or the variables filled into it",
            f"fewer new tokens: --max-new-tokens {max(1, (ctx.get('max_new_tokens') or 256) // 2)}",
            "a server started with a longer context (vllm serve ... --max-model-len N)",
        ],
    )


def _bad_request(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        f"the server refused the request ({getattr(exc, 'status_code', '')}): {_server_body(exc)}",
        [
            "leave out a setting this server may not take (--top-k, --seed, --stop)",
            "--show-prompt shows the messages that were sent",
        ],
    )


def _rate_limited(exc: BaseException, ctx: Context) -> Diagnosis:
    return Diagnosis(
        _what(ctx),
        f"the server is rate-limiting requests (429), still after retries: {_server_body(exc)}",
        [
            "fewer requests at once: --concurrency 4",
            "wait a little, then run the cell again",
        ],
    )


def _server_failed(exc: BaseException, ctx: Context) -> Diagnosis:
    status = getattr(exc, "status_code", "5xx")
    fixes = ["the server's log says why; run the cell again once it is fixed"]
    if status == 503:
        fixes.insert(
            0,
            "503: the server may still be loading the model or be overloaded: wait, then run again",
        )
    if status == 501 or _server_body(exc) == "an HTML page":
        return _not_openai(exc, ctx)
    return Diagnosis(_what(ctx), f"the server failed ({status}): {_server_body(exc)}", fixes)


SERVER = Catalogue(
    rules=(
        Rule("timeout", ("openai.APITimeoutError",) + _READ_TIMEOUT, _timed_out),
        Rule("refused", ("builtins.ConnectionRefusedError",), _refused),
        Rule("unknown_host", ("socket.gaierror",), _unknown_host),
        Rule("tls", ("ssl.SSLError",), _tls),
        Rule("dropped", _DROPPED, _dropped),
        Rule(
            "key_refused",
            ("openai.AuthenticationError", "openai.PermissionDeniedError"),
            _key_refused,
        ),
        Rule("not_found", ("openai.NotFoundError",), _not_found),
        Rule(
            "context_too_long",
            ("openai.BadRequestError", "openai.UnprocessableEntityError"),
            _context_too_long,
            _CONTEXT_TOO_LONG,
        ),
        Rule(
            "bad_request",
            ("openai.BadRequestError", "openai.UnprocessableEntityError", "openai.ConflictError"),
            _bad_request,
        ),
        Rule("rate_limited", ("openai.RateLimitError",), _rate_limited),
        Rule("server_failed", ("openai.InternalServerError",), _server_failed),
        Rule("connection", ("openai.APIConnectionError",), _connection),
        Rule("incomplete", ("llm_magic.IncompleteStream",), _incomplete),
        # An error the server sent in place of the rest of a stream (openai raises the
        # base APIError with the server's body); its own words are shown.
        Rule(
            "stream_context_too_long",
            ("openai.APIError",),
            _context_too_long,
            when=_says_context_too_long,
        ),
        Rule("stream_error", ("openai.APIError",), _stream_error),
    ),
    error_class=LLMError,  # callers name LoadError or GenerationError
    what=_what,
    suppressed=True,
)
