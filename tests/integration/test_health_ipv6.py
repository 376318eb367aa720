"""HEALTH_ADDR is dual-stack (issue 20, point 5): probes on an IPv6-only cluster reach
/healthz, /readyz and /metrics. With no host the listener takes IPv6 and IPv4 alike;
"[::1]:port" listens on IPv6 loopback only. Against the real operator (kube-apiserver
and PostgreSQL behind it), probed over real sockets."""

from __future__ import annotations

import http.client
import socket

import pytest


def get(host: str, port: int, path: str) -> int:
    c = http.client.HTTPConnection(host, port, timeout=5)
    try:
        c.request("GET", path)
        return c.getresponse().status
    finally:
        c.close()


@pytest.fixture(scope="module", autouse=True)
def loopback_v6():
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))  # fails loudly if the machine has no IPv6 loopback: not skipped


def test_default_form_listens_on_ipv6_and_ipv4(operator_factory):
    op = operator_factory({"HEALTH_ADDR": ":0"})
    op.wait_ready()
    for host in ("::1", "127.0.0.1"):
        assert get(host, op.port, "/healthz") == 200, host
        assert get(host, op.port, "/readyz") == 200, host
        assert get(host, op.port, "/metrics") == 200, host


def test_ipv6_address_only(operator_factory):
    op = operator_factory({"HEALTH_ADDR": "[::1]:0"})
    assert get("::1", op.port, "/healthz") == 200
    with pytest.raises(OSError):
        get("127.0.0.1", op.port, "/healthz")
