"""A guard that keeps the test session's traffic on this machine.

While installed it wraps `socket.socket.connect`/`connect_ex` and the name lookups
(`socket.getaddrinfo`, `gethostbyname`, `gethostbyname_ex`): a target that is not loopback
(127.0.0.0/8, ::1, `localhost`) is refused before the real call, so no packet and no DNS
query leaves, and the attempt is recorded with the test that made it. Unix and other
non-IP sockets pass, and so does a lookup of the wildcard a server binds (0.0.0.0, ::).
The guard raises `NetworkGuardError`, and because code under test may swallow that (a probe
thread, an `except Exception`), tests/conftest.py also fails the test at teardown for every
attempt recorded during it.

Subprocesses (kernels started by nbclient, `python -c` checks, the benchmark's workers)
inherit the environment: `cover_subprocesses` puts a `sitecustomize` on their PYTHONPATH
that installs the same guard there, writing what it refuses to a log file the session reads.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from pathlib import Path

LOG_VARIABLE = "LLM_MAGIC_NETWORK_GUARD_LOG"  # set: subprocesses install the guard and log here
TEST_VARIABLE = "LLM_MAGIC_NETWORK_GUARD_TEST"  # the test running, for subprocesses' messages
SITE_DIR = Path(__file__).with_name("network_guard_site")
_LOCAL_NAMES = frozenset({"localhost", "localhost."})  # answered from /etc/hosts, never DNS


class NetworkGuardError(AssertionError):
    """A test tried to reach a machine other than this one."""


def is_loopback(host) -> bool:
    """Whether `host` (an address, `localhost`, or None/"" for the local wildcard that a
    server binds) stays on this machine."""
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    host = str(host).strip().strip("[]").split("%", 1)[0].lower()  # "%eth0": an IPv6 zone
    if host == "" or host in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other name needs a lookup, which may leave the machine
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _is_wildcard(host) -> bool:
    """0.0.0.0 or ::, which a server resolves to bind every local interface."""
    try:
        return ipaddress.ip_address(str(host)).is_unspecified
    except ValueError:
        return False


class NetworkGuard:
    """Install once per process; `begin(test)` names the test now running, `take()`
    returns (and forgets) what was refused since the last call."""

    def __init__(self, log_path: str | Path | None = None, *, writes_log: bool = False) -> None:
        self.test = "<outside any test>"
        # The session reads the log its subprocesses write; the session itself keeps its
        # refusals in memory.
        self.log_path = Path(log_path) if log_path else None
        self.writes_log = writes_log
        self._refused: list[str] = []
        self._log_offset = 0
        self._lock = threading.Lock()
        self._saved: dict[tuple[object, str], object] = {}
        # What the wrappers call once a target is allowed: the real functions while
        # installed. The guard's own test swaps these for recorders.
        self.real_connect = socket.socket.connect
        self.real_connect_ex = socket.socket.connect_ex
        self.real_getaddrinfo = socket.getaddrinfo
        self.real_gethostbyname = socket.gethostbyname
        self.real_gethostbyname_ex = socket.gethostbyname_ex

    # -------------------------------------------------------------- install

    def install(self) -> None:
        if self._saved:
            return
        guard = self

        def connect(sock, address):
            guard._check_socket(sock, address, "connect")
            return guard.real_connect(sock, address)

        def connect_ex(sock, address):
            guard._check_socket(sock, address, "connect_ex")
            return guard.real_connect_ex(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            guard._check_host(host, "getaddrinfo")
            return guard.real_getaddrinfo(host, *args, **kwargs)

        def gethostbyname(host):
            guard._check_host(host, "gethostbyname")
            return guard.real_gethostbyname(host)

        def gethostbyname_ex(host):
            guard._check_host(host, "gethostbyname_ex")
            return guard.real_gethostbyname_ex(host)

        for owner, name, wrapper in (
            (socket.socket, "connect", connect),
            (socket.socket, "connect_ex", connect_ex),
            (socket, "getaddrinfo", getaddrinfo),
            (socket, "gethostbyname", gethostbyname),
            (socket, "gethostbyname_ex", gethostbyname_ex),
        ):
            self._saved[(owner, name)] = getattr(owner, name)
            setattr(owner, name, wrapper)

    def uninstall(self) -> None:
        for (owner, name), original in self._saved.items():
            setattr(owner, name, original)
        self._saved.clear()

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    # ---------------------------------------------------------------- checks

    def _check_socket(self, sock, address, call: str) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # a unix socket, netlink...: this machine
        host = address[0] if isinstance(address, tuple) and address else address
        if not is_loopback(host):
            self._refuse(f"{call} {address!r}")

    def _check_host(self, host, call: str) -> None:
        if not (is_loopback(host) or _is_wildcard(host)):
            self._refuse(f"{call} {host!r}")

    def _refuse(self, attempt: str) -> None:
        message = (
            f"network guard: {self.test} tried to reach a non-loopback address ({attempt}); "
            "tests may only reach 127.0.0.0/8, ::1 and localhost (see tests/support/loopback.py)"
        )
        with self._lock:
            self._refused.append(message)
        if self.writes_log and self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(message.replace("\n", " ") + "\n")
        raise NetworkGuardError(message)

    # ------------------------------------------------------------ reporting

    def begin(self, test: str) -> None:
        self.test = test
        os.environ[TEST_VARIABLE] = test  # subprocesses started from now on name it too

    def take(self) -> list[str]:
        """What was refused since the last call, here or in a subprocess."""
        with self._lock:
            found, self._refused = self._refused, []
        if self.log_path is not None and self.log_path.exists():
            with open(self.log_path, encoding="utf-8") as log:
                log.seek(self._log_offset)
                lines = log.read().splitlines()
                self._log_offset = log.tell()
            found += lines
        return found


def cover_subprocesses(env: dict, log_path: str | Path) -> None:
    """Make Python subprocesses started with `env` install the guard at start-up (through
    the `sitecustomize` in tests/support/network_guard_site) and log what they refuse to
    `log_path`."""
    env[LOG_VARIABLE] = str(log_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE_DIR), env.get("PYTHONPATH")]))


SUBPROCESS_GUARD: NetworkGuard | None = (
    None  # in a subprocess: the guard its sitecustomize installed
)


def install_in_subprocess() -> NetworkGuard | None:
    """Called by the sitecustomize of a subprocess: the guard, named after the test that
    started the process, logging to the session's file."""
    log_path = os.environ.get(LOG_VARIABLE)
    if not log_path:
        return None
    global SUBPROCESS_GUARD
    guard = SUBPROCESS_GUARD = NetworkGuard(log_path, writes_log=True)
    command = " ".join(getattr(sys, "argv", None) or ["python"])[:120]
    test = os.environ.get(TEST_VARIABLE, "<outside any test>")
    guard.test = f"{test} (subprocess {os.getpid()}: {command})"
    guard.install()
    return guard
