"""Whether a tracker's server can be reached, asked before training: MLflow retries an
unreachable server for minutes and wandb waits 90 s, where one line in seconds says it all."""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request

PROBE_SECONDS = 5.0


def _address(url: urllib.parse.SplitResult) -> tuple[str, int]:
    """Where a connection to `url` goes: its proxy where one applies."""
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or 80
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def unreachable(uri: str) -> str | None:
    """Why no TCP connection to the http(s) server of `uri` opens within PROBE_SECONDS (None:
    it opens, or `uri` names no http(s) server)."""
    url = urllib.parse.urlsplit(uri)
    if url.scheme not in ("http", "https"):
        return None
    try:
        socket.create_connection(_address(url), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None
