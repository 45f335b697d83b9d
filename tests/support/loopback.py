"""Stand-ins for the Hugging Face Hub on 127.0.0.1, so no test (and no benchmark row) aims
a packet at another machine. Three ways the Hub can fail to help:

- `ClosedPort`: nothing listens; a connection is refused at once (the Hub unreachable).
- `SilentServer`: accepts every connection and never says a word (a network that
  swallows traffic: a probe must give up on its own).
- `HubErrorServer`: answers every request as the Hub does for a missing repository, a
  gated one, or a missing revision (status + X-Error-Code).

Each holds its port for its whole life, so no other server can take it, and has `.url`
for HF_ENDPOINT. Plain sockets and the standard library only: bench/ imports this too.
"""

from __future__ import annotations

import http.server
import socket
import threading

LOOPBACK = "127.0.0.1"


class _Endpoint:
    url: str

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ClosedPort(_Endpoint):
    """A port bound but never listened on: the kernel refuses every connection to it
    (RST), and the binding keeps any other server off the port."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self._sock.close()


class SilentServer(_Endpoint):
    """Accepts every connection, reads nothing, answers nothing, and keeps the connection
    open until closed. `accepted` counts the connections, so a test can tell that a
    client really came here rather than giving up before trying."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._held: list[socket.socket] = []  # open and unanswered: that is the point
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="silent-endpoint", daemon=True).start()

    @property
    def accepted(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # the listening socket was closed
                return
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._sock.close()
        for conn in self._held:
            conn.close()


class HubErrorServer(_Endpoint):
    """A local HTTP server that answers every request the way the Hub answers for a
    missing repository, a gated one (`/org/gated/`), or a missing revision
    (`/org/model/` at `v9`): an error status and its X-Error-Code."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                path = self.path
                if "/org/gated/" in path:
                    status, code = 403, "GatedRepo"
                elif "/org/model/" in path and "/v9/" in path:
                    status, code = 404, "RevisionNotFound"
                else:
                    status, code = 404, "RepoNotFound"
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        threading.Thread(
            target=self.server.serve_forever, name="hub-error-endpoint", daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Proxy variables would send even a loopback request to a proxy elsewhere; the loopback
# endpoints are always reached directly.
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
NO_PROXY_VALUE = "127.0.0.1,localhost,::1"


def loopback_env(env: dict, endpoint: str) -> dict:
    """`env` with the Hub endpoint on loopback, reached directly (no proxy). For
    os.environ itself or a copy handed to a subprocess."""
    for name in PROXY_VARIABLES:
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY_VALUE
    env["HF_ENDPOINT"] = endpoint
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    return env
