"""Real OpenAI-compatible servers for the tests, as subprocesses on free 127.0.0.1 ports:
`transformers serve --continuous-batching`, llama.cpp's server (`python -m
llama_cpp.server`), a plain `python -m http.server` (not an OpenAI API), and a tiny proxy
that checks an API key before forwarding. Started with a start-up timeout, ready when
`/v1/models` answers, stopped with terminate then kill. Loopback only.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    return free_port()


class ServerProcess:
    """One server subprocess; its output goes to a log file shown when start-up fails."""

    def __init__(
        self, name: str, cmd: list[str], port: int, base: str = "/v1", env: dict | None = None
    ):
        self.name, self.port = name, port
        self.url = f"http://{HOST}:{port}{base}"
        self.log = Path(tempfile.mkstemp(prefix=f"llm_magic_{name}_", suffix=".log")[1])
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    def wait_ready(self, path: str = "/models", timeout: float = 300.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)

    def kill(self) -> None:
        """As a crash: SIGKILL, no goodbye to connected clients."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def served_ids(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/models", timeout=10) as reply:
        return [m["id"] for m in json.load(reply)["data"]]


def _transformers_cli() -> list[str]:
    script = Path(sys.executable).with_name("transformers")
    if script.is_file():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from transformers.cli.transformers import main; sys.exit(main())",
    ]


def transformers_serve(
    model_dir: str | Path,
    dtype: str = "bfloat16",
    continuous_batching: bool = True,
    timeout: float = 300.0,
    threads: int | None = None,
    cache_blocks: int = 256,
) -> ServerProcess:
    """`transformers serve` pinned to a local folder. The paged KV cache is kept small:
    by default it takes a share of the machine's memory. `threads` sets OMP_NUM_THREADS;
    `cache_blocks` blocks of 32 tokens make the paged cache (256: 8,192 tokens)."""
    # The CLI asks pypi.org for a newer version unless told not to: loopback only here.
    env = {
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
    }
    port = free_port()
    cmd = _transformers_cli() + [
        "serve",
        str(model_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    if continuous_batching:
        cmd += ["--continuous-batching", "--cb-block-size", "32"]
        cmd += ["--cb-num-blocks", str(cache_blocks)]
    return ServerProcess("transformers-serve", cmd, port, env=env).wait_ready(timeout=timeout)


def llama_cpp_server(
    gguf: str | Path, api_key: str | None = None, n_ctx: int = 512, timeout: float = 180.0
) -> ServerProcess:
    """llama-cpp-python's OpenAI-compatible server on a .gguf file."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        "2",
        "--verbose",
        "False",
    ]
    if api_key:
        cmd += ["--api_key", api_key]
    server = ServerProcess("llama-cpp-server", cmd, port)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # readiness, with the key when one is needed
        if server.process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited:\n{server.tail()}")
        try:
            with urllib.request.urlopen(
                urllib.request.Request(server.url + "/models", headers=headers), timeout=5
            ):
                return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"llama.cpp server not ready:\n{server.tail()}")


def llama_cpp_models_server(models: dict[str, dict], timeout: float = 180.0) -> ServerProcess:
    """llama-cpp-python's server on several models at once, from a config file: {alias:
    its settings (model, lora_path, n_ctx, ...)}. Each alias is a model id it serves (the
    server opens one at a time, on request)."""
    port = free_port()
    config = {
        "host": HOST,
        "port": port,
        "models": [
            {"model_alias": alias, "n_threads": 2, "verbose": False, **settings}
            for alias, settings in models.items()
        ],
    }
    path = Path(tempfile.mkstemp(prefix="llm_magic_llama_models_", suffix=".json")[1])
    path.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "llama_cpp.server", "--config_file", str(path)]
    return ServerProcess("llama-cpp-models", cmd, port).wait_ready(timeout=timeout)


def static_http_server() -> ServerProcess:
    """`python -m http.server`: a web server, not an OpenAI API (404 HTML pages)."""
    folder = tempfile.mkdtemp(prefix="llm_magic_static_")
    Path(folder, "index.html").write_text("<html><body>not an API</body></html>")
    port = free_port()
    server = ServerProcess(
        "http.server",
        [sys.executable, "-m", "http.server", str(port), "--bind", HOST, "--directory", folder],
        port,
        base="",
    )
    return server.wait_ready(path="/", timeout=60)


class KeyProxy:
    """A tiny real HTTP proxy on loopback that forwards to `upstream` only requests whose
    `Authorization: Bearer KEY` matches, and answers 401 otherwise (as OpenAI does).
    With `busy=N` (and no key), the first N POSTs get 429 "busy" with Retry-After: 0."""

    def __init__(self, upstream: str, key: str | None = None, busy: int = 0):
        upstream = upstream.rstrip("/")
        expected = f"Bearer {key}" if key else None
        proxy = self
        self.busy_left = busy
        self.refused = 0
        self.requests = 0  # every request that reached the proxy, whatever its answer
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: bytes, headers: dict) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self):
                with lock:
                    proxy.requests += 1
                if self.command == "POST":
                    with lock:
                        busy = proxy.busy_left > 0
                        proxy.busy_left -= busy
                        proxy.refused += busy
                    if busy:
                        self.rfile.read(int(self.headers.get("Content-Length") or 0))
                        body = json.dumps(
                            {"error": {"message": "Server busy, try again.", "type": "rate_limit"}}
                        ).encode()
                        self._reply(
                            429, body, {"Content-Type": "application/json", "Retry-After": "0"}
                        )
                        return
                if expected is not None and self.headers.get("Authorization") != expected:
                    body = json.dumps(
                        {
                            "error": {
                                "message": "Incorrect API key provided.",
                                "type": "invalid_request_error",
                                "code": "invalid_api_key",
                            }
                        }
                    ).encode()
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                target = upstream + self.path.removeprefix("/v1")
                request = urllib.request.Request(
                    target,
                    data=data,
                    method=self.command,
                    headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                )
                try:
                    reply = urllib.request.urlopen(request, timeout=120)
                except urllib.error.HTTPError as e:
                    reply = e
                body = reply.read()
                self.send_response(reply.status if hasattr(reply, "status") else reply.code)
                self.send_header(
                    "Content-Type", reply.headers.get("Content-Type", "application/json")
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _forward

        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def smoke_request(server: ServerProcess, timeout: float = 120.0) -> None:
    """One tiny completion: raises RuntimeError (with the log) if the server dies on it."""
    body = json.dumps(
        {
            "model": served_ids(server.url)[0],
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        }
    ).encode()
    request = urllib.request.Request(
        server.url + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read()
    except (urllib.error.URLError, OSError) as e:
        time.sleep(0.5)
        state = (
            f"exit code {server.process.poll()}"
            if server.process.poll() is not None
            else "still running"
        )
        raise RuntimeError(
            f"{type(e).__name__}: {e} ({state}); log tail:\n{server.tail(600)}"
        ) from e
