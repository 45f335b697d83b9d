"""`%llm_load [MODEL] --server URL`: a model served over the OpenAI-compatible API, put in
the same cache as local models (no weights: memory 0, so the budget ignores it).

Loading asks the server what it serves (`GET /models`, timed: the round trip on the
card) and checks MODEL against it; the same request again is a cache hit with no network
call. What the server says about itself (its `/models` fields such as `max_model_len` or
`owned_by`, its `Server` header, vLLM's `/version`) is kept as plain data for the card.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .cache import MODEL_CACHE, LoadedModel
from .display import ServerCard
from .engines.server import DEFAULTS, Connection, ServerEngine, public_url
from .errors import SERVER, LoadError, diagnose

# /models fields that give a model's context length, by server.
_CONTEXT_FIELDS = (
    "max_model_len",
    "context_length",
    "max_context_length",
    "n_ctx",
    "max_input_length",
)


@dataclass(frozen=True)
class ServerInfo:
    """Plain facts about a served model (the card, `%llm_models`, each result's metadata).
    Named like loading.ModelInfo's fields where they mean the same; holds no key."""

    name: str  # the id the server serves it under
    url: str  # without credentials
    served: tuple[dict, ...]  # the server's /models entries, as it sent them
    server: str | None  # what the server says it is: Server header, /version
    latency: float  # seconds, one /models round trip
    load_seconds: float
    api_key_env: str | None  # the variable's name, never its value
    kind: str = "server"
    class_name: str = "served"
    num_params: int = 0
    memory_bytes: int = 0  # the weights live on the server
    dtype: str = "served"
    dtype_reason: str = "chosen by the server"
    revision: str | None = None
    trust_remote_code: bool = False
    converted_from: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def device(self) -> str:
        return self.url

    @property
    def source(self) -> str:
        return self.url

    @property
    def entry(self) -> dict:
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


def default_key_env(api_key_env: str | None) -> str | None:
    """The variable named, else OPENAI_API_KEY when it is set, else none (no key sent)."""
    if api_key_env:
        return api_key_env
    return "OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") else None


def load_with_card(
    model: str | None,
    server: str,
    *,
    api_key_env: str | None = None,
    alias: str | None = None,
    reload: bool = False,
    timeout: float | None = None,
    progress=None,
) -> tuple[LoadedModel, ServerCard]:
    """The cached entry for MODEL on the server at `server` (MODEL None: the one model it
    serves), and its card. Fails with a LoadError card; the cache is then unchanged."""
    started = time.perf_counter()
    if alias is not None and not alias.isidentifier():
        raise LoadError(f"--as {alias!r}: an alias must be a plain name (letters, digits, _)")
    url = normalize_url(server)
    key_env = default_key_env(api_key_env)
    if key_env and not os.environ.get(key_env):
        raise LoadError(
            f"--api-key-env {key_env}: the variable is not set in the kernel's environment",
            fixes=[
                f"import os, getpass; os.environ[{key_env!r}] = getpass.getpass()  (then %llm_load again)",
                "leave out --api-key-env for a server without keys",
            ],
        )
    entry = None if reload else _cached(url, model, key_env)
    state = "cached"
    if entry is None:
        state = "reloaded" if reload and _cached(url, model, key_env) is not None else "new"
        if progress:
            progress(f"asking {public_url(url)} what it serves…")
        info, connection = _probe(Connection(url, key_env, timeout), model, started)
        key = _key(connection.url, info.name, key_env)
        entry = (
            None if reload else MODEL_CACHE.get(key)
        )  # the same model, reached by another spelling of the URL
        if entry is not None:
            state = "cached"
        else:
            entry = LoadedModel(key, None, None, info)
            entry.engine = ServerEngine(info, connection)
            MODEL_CACHE.put(entry)
    if alias:
        MODEL_CACHE.alias(entry, alias)
    seconds = time.perf_counter() - started if state == "cached" else entry.info.load_seconds
    return entry, card(entry, state, seconds)


def card(entry: LoadedModel, state: str = "cached", seconds: float = 0.0) -> ServerCard:
    engine = entry.engine
    return ServerCard(
        info=entry.info,
        cache_state=state,
        cache_models=len(MODEL_CACHE),
        cache_bytes=MODEL_CACHE.total_bytes(),
        seconds=seconds,
        aliases=tuple(sorted(entry.aliases)),
        concurrency=DEFAULTS.concurrency,
        timeout=(engine.connection.timeout if engine is not None else None) or DEFAULTS.timeout,
    )


def _key(url: str, model: str, key_env: str | None) -> tuple:
    return ("server", url, model, key_env)


def _cached(url: str, model: str | None, key_env: str | None) -> LoadedModel | None:
    """The cached entry for this request, found without asking the server."""
    if model is not None:
        return MODEL_CACHE.get(_key(url, model, key_env))
    same = [
        e
        for e in MODEL_CACHE.entries()
        if isinstance(e.key, tuple)
        and e.key[:1] == ("server",)
        and e.key[1] == url
        and e.key[3] == key_env
    ]
    if len(same) == 1:  # MODEL left out: the one model of this server loaded before
        MODEL_CACHE.touch(same[0])
        return same[0]
    return None


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
    return ServerInfo(
        model, url, served, server, latency, time.perf_counter() - started, connection.api_key_env
    ), connection


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


def as_dict(info: ServerInfo) -> dict[str, Any]:
    """The facts a notebook may keep (no key)."""
    return {
        "model": info.name,
        "url": info.url,
        "server": info.server,
        "served": list(info.served),
        "latency": info.latency,
        "api_key_env": info.api_key_env,
    }
