# Scraping srsd's /metrics: the samples by name and labels.
"""Two readers of srsd's ``/metrics``: :func:`metric_samples` (a raw HTTP/1.0 GET, samples by
their name with labels as one string) and :func:`scrape` with :func:`samples` (urllib, and
prometheus_client's own parser: samples by name and label set).
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 10.0  # the bound on a scrape


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    """GET the metrics endpoint; (content type, body)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape by (name, labels), parsed by prometheus_client itself."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(**items: str) -> frozenset[tuple[str, str]]:
    return frozenset(items.items())


def metric_samples(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> dict[str, float]:
    """Every sample of srsd's ``/metrics`` on ``port``, by its name with labels."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    samples = {}
    for line in data.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
