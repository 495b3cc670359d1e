"""Reading the records of a wandb offline run file (run-<id>.wandb): the steps a killed
process already logged. The format is LevelDB's log format (32 KiB blocks of chunks, each with a
7-byte header) after a 7-byte file header, holding wandb's protobuf `Record`s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FILE_HEADER = 7  # ":W&B", 2 magic bytes, a version byte
CHUNK_HEADER = 7  # crc32, length (little-endian uint16), type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_chunks(path: Path) -> Iterator[bytes]:
    """The payloads of the records, reassembled; a torn last record (a kill) is dropped."""
    data = path.read_bytes()
    pos, pending = FILE_HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # zero padding at a block's end
            pos += left_in_block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if len(payload) < length or kind == 0:
            return
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""


def records(path: Path) -> Iterator[Any]:
    """wandb's protobuf Records of `path`."""
    from wandb.proto import wandb_internal_pb2

    for payload in read_chunks(path):
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated protobuf
        record.ParseFromString(payload)
        yield record


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def history(path: Path) -> list[dict[str, Any]]:
    """The logged rows of `path`, each a dict with its `_step`."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({_key(i): json.loads(i.value_json) for i in record.history.item})
    return rows


def config(path: Path) -> dict[str, Any]:
    """The run config of `path`: the run record's, updated by later config records."""
    found: dict[str, Any] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        node = record.run.config if kind == "run" else record.config if kind == "config" else None
        if node is not None:
            found.update({_key(i): json.loads(i.value_json) for i in node.update})
    return found


def offline_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """Every offline segment of run `run_id` (one per process that logged to it)."""
    return sorted(wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def written_steps(wandb_dir: Path, run_id: str) -> dict[str, int]:
    """The last step logged per key by the earlier segments of run `run_id`."""
    last: dict[str, int] = {}
    for path in offline_files(wandb_dir, run_id):
        for row in history(path):
            step = int(row.get("_step", 0))
            for key in row:
                if not key.startswith("_"):
                    last[key] = max(last.get(key, 0), step)
    return last
