"""The network as a user without one meets it: names do not resolve and connections are
refused, except to loopback (the tests' own Streamlit servers, Ray and the browser use it).

In this process: the `offline` fixture of conftest.py. In a child Python: run it with
`offline_env()`, whose PYTHONPATH puts tests/offline_site/sitecustomize.py first."""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path

SITE = Path(__file__).with_name("offline_site")
ENV_FLAG = "ROBUSTLENS_TEST_OFFLINE"


def is_loopback(host: object) -> bool:
    """Whether a host (a name, an address, bytes, None) names this machine."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def blocked_functions() -> dict[tuple[object, str], object]:
    """(owner, attribute) -> the replacement that refuses anything but loopback."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real_getaddrinfo(host, *args, **kwargs)

    def refused(sock: socket.socket, address) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0])

    def connect(self, address):
        if refused(self, address):
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        return real_connect(self, address)

    def connect_ex(self, address):
        return errno.ENETUNREACH if refused(self, address) else real_connect_ex(self, address)

    return {(socket, "getaddrinfo"): getaddrinfo, (socket.socket, "connect"): connect,
            (socket.socket, "connect_ex"): connect_ex}


def block_network() -> None:
    """For the rest of this process (a child started with offline_env())."""
    for (owner, name), replacement in blocked_functions().items():
        setattr(owner, name, replacement)


def offline_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a child Python that starts without the network."""
    env = dict(os.environ if env is None else env)
    env[ENV_FLAG] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH")) if p)
    return env
