"""The guard of tests/support/network_guard.py refuses every non-loopback target before the real
call, so no packet can leave; loopback passes through. The real `connect` and lookups are
replaced by recorders here, so even a guard bug could not send anything.

The non-loopback targets below are data, never connected to: an address from TEST-NET-1
(RFC 5737, reserved for documentation, routed nowhere), built from its number so no
literal address sits in the source, the IPv6 documentation prefix, and the Hub's name.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.network_guard import NetworkGuardError, is_loopback

DOC_ADDRESS = str(
    ipaddress.IPv4Address((192 << 24) | (0 << 16) | (2 << 8) | 1)
)  # TEST-NET-1's first host
DOC_ADDRESS_V6 = "2001:db8::1"
HUB_NAME = "huggingface.co"


@pytest.fixture
def recorders(network_guard_on, monkeypatch):
    """The session guard with its real calls replaced by recorders; what it refused in
    this test is taken back at the end (refusing is what this test asks of it)."""
    calls: list[tuple] = []

    def recorder(name):
        def record(*args):
            calls.append((name, *(args[1:] if name.startswith("connect") else args)))
            return 0 if name == "connect_ex" else None

        return record

    for name in ("connect", "connect_ex", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(network_guard_on, f"real_{name}", recorder(name))
    yield calls
    network_guard_on.take()


def test_the_guard_is_on_for_every_test(network_guard_on):
    assert network_guard_on.installed
    assert socket.socket.connect is not network_guard_on.real_connect


@pytest.mark.parametrize(
    "target",
    [(DOC_ADDRESS, 443), ("::ffff:" + DOC_ADDRESS, 443), (DOC_ADDRESS_V6, 443), (HUB_NAME, 443)],
)
def test_a_non_loopback_connect_is_refused_before_the_real_call(recorders, request, target):
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkGuardError) as info:
            sock.connect(target)
        with pytest.raises(NetworkGuardError):
            sock.connect_ex(target)
    assert recorders == []  # the real connect was never called: nothing could have left
    message = str(info.value)
    assert request.node.nodeid in message and repr(target) in message


@pytest.mark.parametrize("lookup", ["getaddrinfo", "gethostbyname", "gethostbyname_ex"])
def test_a_non_loopback_name_lookup_is_refused(recorders, request, lookup):
    args = (HUB_NAME, 443) if lookup == "getaddrinfo" else (HUB_NAME,)
    with pytest.raises(NetworkGuardError) as info:
        getattr(socket, lookup)(*args)
    assert recorders == []
    assert request.node.nodeid in str(info.value) and HUB_NAME in str(info.value)


def test_urls_to_other_machines_are_refused_on_the_way_out(recorders):
    """Through the layers a library uses (urllib → create_connection → getaddrinfo)."""
    import urllib.request

    for url in ("https://" + HUB_NAME, "http://" + DOC_ADDRESS):
        with pytest.raises(NetworkGuardError):
            urllib.request.urlopen(url, timeout=1)
    assert recorders == []


def test_loopback_and_unix_sockets_pass_through(recorders, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.connect(("127.0.0.1", 9))
        assert sock.connect_ex(("127.8.9.10", 9)) == 0  # the recorder's answer
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.connect(("::1", 9))
    socket.getaddrinfo("localhost", 9)
    socket.getaddrinfo(None, 9)  # a server's wildcard bind, spelled three ways
    socket.getaddrinfo("0.0.0.0", 9)
    socket.getaddrinfo("::", 9)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tmp_path / "sock"))
    assert [c[0] for c in recorders] == ["connect", "connect_ex", "connect"] + [
        "getaddrinfo"
    ] * 4 + ["connect"]
    assert recorders[0][1] == ("127.0.0.1", 9)


def test_a_refusal_fails_the_test_even_when_swallowed(network_guard_on, recorders):
    """Code under test may catch the guard's error (a probe thread, `except Exception`):
    the attempt is still recorded, and conftest fails the test with it at teardown."""
    try:
        socket.create_connection((DOC_ADDRESS, 80), timeout=1)
    except Exception:
        pass
    refused = network_guard_on.take()
    assert len(refused) == 1 and DOC_ADDRESS in refused[0]


def test_is_loopback():
    assert all(
        is_loopback(h)
        for h in (
            "127.0.0.1",
            "127.255.0.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "localhost",
            None,
            "",
        )
    )
    assert not any(
        is_loopback(h) for h in (DOC_ADDRESS, DOC_ADDRESS_V6, HUB_NAME, "localhost.example")
    )


# Run first in a subprocess: the real lookups of the guard installed there (and only
# there: without it, this fails before any lookup) become recorders.
RECORD_IN_SUBPROCESS = (
    "import os, socket, sys\n"
    "guard = sys.modules['_llm_magic_network_guard'].SUBPROCESS_GUARD\n"
    "lookups = []\n"
    "guard.real_getaddrinfo = guard.real_gethostbyname = lambda *args: lookups.append(args)\n"
)


def test_subprocesses_are_guarded_and_reported(network_guard_on, request):
    """A Python subprocess of a test installs the guard at start-up (sitecustomize) and
    logs its refusals where the session reads them, naming the test."""
    script = RECORD_IN_SUBPROCESS + (
        "try:\n"
        f"    socket.getaddrinfo({HUB_NAME!r}, 443)\n"
        "except AssertionError as e:\n"
        "    print('REFUSED', type(e).__name__)\n"
        "socket.getaddrinfo('localhost', 443)\n"
        "print('LOOKUPS', lookups)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (
        "REFUSED NetworkGuardError" in out.stdout and "LOOKUPS [('localhost', 443)]" in out.stdout
    )
    refused = network_guard_on.take()
    assert len(refused) == 1 and request.node.nodeid in refused[0] and "subprocess" in refused[0]


def test_the_session_hub_is_on_loopback():
    from huggingface_hub import constants

    assert is_loopback(constants.ENDPOINT.split("//", 1)[1].rsplit(":", 1)[0])
    assert not any(
        os.environ.get(v)
        for v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
    )


def test_notebook_kernels_get_the_loopback_hub_and_the_guard(network_guard_on, tmp_path):
    """Kernels started by nbclient (as the example notebooks are run) inherit the loopback
    HF_ENDPOINT, no proxy, and the guard."""
    import nbformat

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from run_notebook import cell_text, run

    source = RECORD_IN_SUBPROCESS + (
        "print('ENDPOINT', os.environ['HF_ENDPOINT'])\n"
        "print('PROXY', [v for v in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy') "
        "if os.environ.get(v)])\n"
        "print('GUARD', '_llm_magic_network_guard' in sys.modules)\n"
        "try:\n"
        f"    socket.gethostbyname({HUB_NAME!r})\n"
        "except AssertionError as e:\n"
        "    print('REFUSED', type(e).__name__)\n"
        "print('LOOKUPS', lookups)\n"
    )
    path = tmp_path / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)]), path)
    text = cell_text(run(path, timeout=120).cells[0])
    assert f"ENDPOINT {os.environ['HF_ENDPOINT']}" in text and is_loopback(
        os.environ["HF_ENDPOINT"].split("//")[1].rsplit(":", 1)[0]
    )
    assert (
        "PROXY []" in text
        and "GUARD True" in text
        and "REFUSED NetworkGuardError" in text
        and "LOOKUPS []" in text
    )
    assert any(HUB_NAME in line and "subprocess" in line for line in network_guard_on.take())
