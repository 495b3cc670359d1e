"""A digest of a checkpoint's content, stored in the checkpoint itself.

PyTorch's zip reader does not check its records' CRCs, so a changed byte in a tensor loads
without a word. The digest covers what `torch.load` returns (every tensor's dtype, shape and
bytes, and the plain Python around them), not the file's bytes: the file stays loadable with a
plain `torch.load`, and any change that loading does not already reject is caught.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

KEY = "content_sha256"


def content_digest(obj: Any) -> str:
    """sha256 of a canonical encoding of `obj` (tensors, dicts, lists, tuples, scalars)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"d{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'l' if isinstance(obj, list) else 't'}{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(f"s{len(data)}:".encode() + data)
    elif isinstance(obj, bytes):
        h.update(f"b{len(obj)}:".encode() + obj)
    elif isinstance(obj, bool) or obj is None:
        h.update(f"c{obj}:".encode())
    elif isinstance(obj, int):
        h.update(f"i{obj}:".encode())
    elif isinstance(obj, float):
        h.update(f"f{obj.hex()}:".encode())
    elif isinstance(obj, (set, frozenset)):  # iteration order varies between processes
        h.update(f"S{len(obj)}:".encode() + "".join(sorted(map(content_digest, obj))).encode())
    else:  # e.g. a torch.dtype: its repr names it
        h.update(f"o{type(obj).__qualname__}:{obj!r}:".encode())


def seal(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with the digest of its content added under KEY."""
    body = {k: v for k, v in state.items() if k != KEY}
    return {**body, KEY: content_digest(body)}


def matches(state: Any) -> bool | None:
    """True if the digest stored in `state` matches its content, False if it does not, None
    when there is none (a checkpoint written before checkpoints carried one)."""
    if not isinstance(state, dict) or KEY not in state:
        return None
    body = {k: v for k, v in state.items() if k != KEY}
    return state[KEY] == content_digest(body)
