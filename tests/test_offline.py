"""The tests' offline machine (tests/offline.py) refuses the network as a machine without
one does, in this process and in a child Python, and leaves loopback working."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from offline import is_loopback, offline_env


def test_names_and_addresses_of_this_machine_are_loopback():
    for host in ("localhost", "127.0.0.1", "::1", "[::1]", b"127.0.0.2", "0.0.0.0", None):
        assert is_loopback(host), host
    for host in ("pypi.org", "8.8.8.8", "2001:4860:4860::8888", "10.0.0.1", "huggingface.co"):
        assert not is_loopback(host), host


def test_offline_refuses_the_network_and_keeps_loopback(offline):
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen("https://download.pytorch.org/models/", timeout=5)
    with socket.socket() as s, pytest.raises(OSError, match="unreachable"):
        s.connect(("93.184.216.34", 80))
    with socket.socket() as s:
        assert s.connect_ex(("93.184.216.34", 80)) != 0
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted = threading.Thread(target=lambda: server.accept()[0].close())
        accepted.start()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
        accepted.join(5)


def test_a_child_python_started_offline_has_no_network():
    code = ("import socket\n"
            "try:\n    socket.getaddrinfo('pypi.org', 443)\nexcept socket.gaierror:\n"
            "    print('refused')\n"
            "print(socket.getaddrinfo('localhost', 80)[0][0].name)")
    done = subprocess.run([sys.executable, "-c", code], env=offline_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "refused"
    assert done.stdout.splitlines()[1].startswith("AF_INET")
