"""How the server engine loads (`%llm_load [MODEL] --server URL`): it asks the server what
it serves, and puts the model in the same cache as local ones (no weights: memory 0, so a
memory budget ignores it; a model count counts it).

Loading asks the server what it serves (`GET /models`, timed: the round trip on the
card) and checks MODEL against it; the same request again is a cache hit with no network
call. What the server says about itself (its `/models` fields such as `max_model_len` or
`owned_by`, its `Server` header, vLLM's `/version`) is kept as plain data for the card.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from ..cache import MODEL_CACHE, LoadedModel
from ..display import ServerCard
from ..errors import SERVER, LoadError, diagnose
from ..redact import public_url, url_credentials, without_credentials
from .base import CacheKey, Loaded, LoadOptions, LoadReport, ModelInfo, Plan, Progress
from .cards import adapters_rows
from .server import DEFAULTS, Connection, ServerEngine, adapters_of

# /models fields that give a model's context length, by server.
_CONTEXT_FIELDS = (
    "max_model_len",
    "context_length",
    "max_context_length",
    "n_ctx",
    "max_input_length",
)


@dataclass(frozen=True)
class ServerInfo(ModelInfo):
    """A served model's facts: ModelInfo's (device and source are the URL, dtype "served"),
    and what the server said of itself. Holds no key: only its variable's name."""

    url: str = ""  # without credentials
    served: tuple[dict[str, Any], ...] = ()  # the server's /models entries, as it sent them
    server: str | None = None  # what the server says it is: Server header, /version
    latency: float = 0.0  # seconds, one /models round trip
    api_key_env: str | None = None  # the variable's name, never its value

    @property
    def held_as(self) -> str:
        return "served"  # the server holds the weights, as it chooses

    @property
    def entry(self) -> dict[str, Any]:
        return next((m for m in self.served if m.get("id") == self.name), {})

    @property
    def context_length(self) -> int | None:
        for name in _CONTEXT_FIELDS:
            value = self.entry.get(name)
            if isinstance(value, int) and value > 0:
                return value
        return None


def normalize_url(url: str) -> str:
    """`host:8000/v1` → `http://host:8000/v1`; no trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def check_url(url: str) -> None:
    """Refuse a --server URL no OpenAI-compatible API answers on (another scheme, a port
    that is no port, no host) before anything is sent."""
    parts = urlsplit(url)
    shown = public_url(url)  # no user:password, no key from the query
    fixes = ["--server http://HOST:8000/v1  (the API's base URL, as the server prints it)"]
    if parts.scheme not in ("http", "https"):
        raise LoadError(
            f"--server {shown}: {parts.scheme}:// is not an address of an HTTP API",
            "an OpenAI-compatible server answers on http:// or https://",
            fixes,
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or not parts.hostname:
        raise LoadError(
            f"--server {shown}: "
            + ("no host in the URL" if not parts.hostname else "the port is not 1 to 65535"),
            "the URL is http://HOST:PORT/PATH, PORT a number from 1 to 65535",
            fixes,
        )


def default_key_env(api_key_env: str | None) -> str | None:
    """The variable named, else OPENAI_API_KEY when it is set, else none (no key sent)."""
    if api_key_env:
        return api_key_env
    return "OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") else None


class ServerLoader:
    def plan(self, options: LoadOptions, progress: Progress | None) -> Plan:
        """The cached entry's key when the cache can tell without asking the server (MODEL
        given, or the one model of this server loaded before); else the server is asked."""
        assert options.server is not None
        started = time.perf_counter()
        url = normalize_url(options.server)
        check_url(url)  # an address no API answers on, said first (credentials hidden)
        _refuse_credentials(url)
        key_env = default_key_env(options.api_key_env)
        if key_env and not os.environ.get(key_env):
            raise LoadError(
                f"--api-key-env {key_env}: the variable is not set in the kernel's environment",
                fixes=[
                    f"import os, getpass; os.environ[{key_env!r}] = getpass.getpass()  "
                    "(then %llm_load again)",
                    "leave out --api-key-env for a server without keys",
                ],
            )
        unused = options.unused(
            "dtype", "device_map", "max_memory", "quantize", "revision", "trust_remote_code"
        )
        notes = (
            (
                f"{', '.join(unused)}: not used with --server, where the server holds the"
                " weights as it was started",
            )
            if unused
            else ()
        )
        if not options.reload:
            known = _cached_key(url, options.model, key_env)
            if known is not None:
                return Plan(known, options.model or url, notes=notes)
        if progress:
            progress(f"asking {public_url(url)} what it serves…")
        connection = Connection(url, key_env, options.timeout)
        info, connection = _probe(connection, options.model, started)
        # The key names the URL that answered: the same model reached by another spelling
        # of the URL (with or without /v1) is the same entry.
        key = _key(connection.url, info.name, key_env)
        return Plan(key, info.name, state=(info, connection), notes=notes)

    def load(self, plan: Plan, options: LoadOptions, progress: Progress | None) -> Loaded:
        info, connection = plan.state
        # Named as it answered: the model it serves, the URL that answered (with /v1).
        settled = replace(options, model=info.name, server=public_url(connection.url))
        return Loaded(
            None, None, info, lambda entry: ServerEngine(info, connection), options=settled
        )

    def card(self, entry: LoadedModel, report: LoadReport) -> ServerCard:
        engine, info = entry.engine, entry.info
        if not isinstance(info, ServerInfo):  # this loader's plans hold only ServerInfo
            raise TypeError(f"a server card for {info.name}, which was not loaded from a server")
        timeout = engine.connection.timeout if isinstance(engine, ServerEngine) else None
        return ServerCard(
            info=info,
            cache_state=report.state,
            cache_models=report.cache_models,
            cache_bytes=report.cache_bytes,
            seconds=report.seconds,
            aliases=tuple(sorted(entry.aliases)),
            concurrency=DEFAULTS.concurrency,
            timeout=timeout or DEFAULTS.timeout,
            budget_notes=report.notes,
            extra_rows=_served_adapters(entry) + adapters_rows(entry),
        )


LOADER = ServerLoader()


def _refuse_credentials(url: str) -> None:
    """A URL holding a password or a key is refused, before anything is sent: the key is
    read from an environment variable only, never from text that the notebook keeps."""
    credentials = url_credentials(url)
    if not credentials:
        return
    raise LoadError(
        f"--server {public_url(url)}: the URL holds {' and '.join(credentials)}, "
        "which llm_magic does not send",
        "a server's key is read from an environment variable (--api-key-env): written in "
        "the URL it would stay in the notebook, its history and tracebacks",
        [
            "import os, getpass; os.environ['SERVER_KEY'] = getpass.getpass()",
            f"%llm_load --server {without_credentials(url)} --api-key-env SERVER_KEY",
            "then take the key out of this cell: the notebook and its history keep it",
        ],
    )


def _served_adapters(entry: LoadedModel) -> tuple[tuple[str, str], ...]:
    """The server's own adapters of the model (vLLM lists each with the model as `parent`),
    each usable as `-m MODEL:ADAPTER`."""
    offered = [a for a in adapters_of(entry.info) if a not in entry.adapters]
    if not offered:
        return ()
    label = min(entry.aliases) if entry.aliases else entry.name
    return (("adapters", ", ".join(offered) + f"  (served: -m {label}:{offered[0]})"),)


def _key(url: str, model: str, key_env: str | None) -> CacheKey:
    return CacheKey("server", f"{url} {model}", api_key_env=key_env)


def _cached_key(url: str, model: str | None, key_env: str | None) -> CacheKey | None:
    """The key of the cached entry this request names, found without asking the server."""
    if model is not None:
        key = _key(url, model, key_env)
        return key if key in MODEL_CACHE else None
    same = [
        e.key
        for e in MODEL_CACHE.entries()
        if e.key.engine == "server"
        and isinstance(e.info, ServerInfo)
        and e.info.url == public_url(url)
        and e.key.api_key_env == key_env
    ]
    # MODEL left out: the one model of this server loaded before.
    return same[0] if len(same) == 1 else None


def _probe(
    connection: Connection, model: str | None, started: float
) -> tuple[ServerInfo, Connection]:
    """Ask the server what it serves; pick MODEL among it. A base URL without /v1 whose
    /models is not found is tried again with /v1 (what most servers expect)."""
    context = {
        "stage": "load",
        "url": public_url(connection.url),
        "model": model,
        "api_key_env": connection.api_key_env,
        "timeout": min(connection.timeout or DEFAULTS.timeout, 30.0),
    }
    try:
        listing, server, latency, connection = _models(connection)
    except Exception as e:
        connection.scrub(e)
        raise diagnose(e, context, SERVER, LoadError) from e
    served = tuple(m for m in listing if isinstance(m, dict) and isinstance(m.get("id"), str))
    ids = [m["id"] for m in served]
    url = public_url(connection.url)
    if model is None:
        if len(ids) != 1:
            raise LoadError(
                f"{url} serves {len(ids)} models: which one?" if ids else f"{url} lists no models",
                fixes=[f"%llm_load {ids[0]} --server {url}"]
                + ([f"served: {', '.join(ids)}"] if len(ids) > 1 else [])
                if ids
                else ["check the server's log: it may still be loading the model"],
            )
        model = ids[0]
    elif model not in ids:
        import difflib

        near = difflib.get_close_matches(model, ids, 3, 0.4)
        raise LoadError(
            f"{url} does not serve {model!r}",
            f"it serves {len(ids)} model{'s' if len(ids) != 1 else ''}"
            + (f": {', '.join(ids[:8])}" if ids else ""),
            ([f"did you mean: %llm_load {near[0]} --server {url}"] if near else [])
            + (
                [f"%llm_load --server {url}  (MODEL left out takes the one it serves)"]
                if len(ids) == 1
                else []
            )
            + [
                "start the server with that model (vllm serve MODEL, transformers serve MODEL, ...)"
            ],
        )
    info = ServerInfo(
        name=model,
        kind="server",
        class_name="served",
        num_params=0,
        memory_bytes=0,  # the weights live on the server
        device=url,
        dtype="served",
        dtype_reason="chosen by the server",
        source=url,
        revision=None,
        load_seconds=time.perf_counter() - started,
        engine="server",
        url=url,
        served=served,
        server=server,
        latency=latency,
        api_key_env=connection.api_key_env,
    )
    return info, connection


def _models(connection: Connection) -> tuple[list, str | None, float, Connection]:
    """(the /models list, what the server says it is, the round trip, the connection that
    answered). Raises openai's errors, or a LoadError for a reply that is not the API's."""
    client = connection.client(read_timeout=min(connection.timeout or DEFAULTS.timeout, 30.0))
    try:
        try:
            began = time.perf_counter()
            raw = client.models.with_raw_response.list()
        except Exception as e:
            if getattr(e, "status_code", None) != 404 or connection.url.endswith("/v1"):
                raise
            # http://host:8000 for http://host:8000/v1: try the usual base once.
            retry = Connection(
                connection.url + "/v1",
                connection.api_key_env,
                connection.timeout,
                connection.connect_timeout,
            )
            try:
                return _models(retry)
            except Exception:
                raise e from None
        latency = time.perf_counter() - began
        data = _json(raw, connection)
        server = _server_software(client, raw, connection)
    finally:
        client.close()
    return data, server, latency, connection


def _json(raw, connection: Connection) -> list:
    url = public_url(connection.url)
    kind = raw.headers.get("content-type", "")
    try:
        data = json.loads(raw.text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        what = (
            "an HTML page"
            if "html" in kind or raw.text.lstrip().startswith("<")
            else f"{kind or 'something'} that is not the API's model list"
        )
        raise LoadError(
            f"could not use the server at {url}",
            f"{url} is not an OpenAI-compatible API: {url}/models answered with {what}",
            [
                "the API's base URL usually ends in /v1: --server http://HOST:8000/v1",
                "check the port: it may be another web server (a notebook, a dashboard)",
            ],
        )
    return data["data"]


def _server_software(client, raw, connection: Connection) -> str | None:
    """The server's own word on what it is, where it gives one: vLLM's /version, else the
    HTTP Server header (uvicorn, llama.cpp, ...). Best effort, short timeout."""
    parts = []
    header = raw.headers.get("server")
    root = connection.url.removesuffix("/v1")
    try:
        version = client.with_options(timeout=2.0).get(root + "/version", cast_to=object)
        if isinstance(version, dict) and isinstance(version.get("version"), str):
            parts.append(f"version {version['version']}")
    except Exception:  # most servers have no /version: nothing to say
        pass
    if header:
        parts.insert(0, header)
    return "; ".join(parts) or None
