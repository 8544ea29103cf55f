"""Test helper: read back what a W&B offline run holds (`read_offline_run`), without a W&B server.

wandb 0.31 writes no files/config.yaml or wandb-summary.json for an offline run: everything is in
`<run_dir>/wandb/offline-run-*/run-<id>.wandb`, a LevelDB-style log (32 KiB blocks of records with a
(crc32, length, type) header) of `wandb_internal_pb2.Record` protobufs. `_log_records` reassembles the records,
`read_offline_run` decodes the run, config, summary, history, environment and exit records.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc32, length, type) records


def _log_records(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            parts = chunk
        elif kind == 3:  # middle
            parts += chunk
        elif kind == 4:  # last
            yield parts + chunk
            parts = b""


def _set(target: dict[str, Any], item) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = json.loads(item.value_json)


def read_offline_run(offline_dir: Path) -> dict[str, Any]:
    """What a W&B offline run holds, read from its `run-<id>.wandb` file (wandb 0.31 writes no
    files/config.yaml or wandb-summary.json offline): id, group, job_type, name, tags, config,
    summary (the final values), history (one dict per logged step), args (the command line W&B kept),
    exit_code. For checks and tests without a W&B server."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(offline_dir).glob("run-*.wandb")
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "args": [], "exit_code": None}
    for raw in _log_records(path):
        rec = pb.Record()  # protobuf builds the message classes at import: no stubs
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.update(id=r.run_id, project=r.project, group=r.run_group, job_type=r.job_type,
                       name=r.display_name, tags=list(r.tags))
            for item in r.config.update:
                _set(out["config"], item)
        elif kind == "config":
            for item in rec.config.update:
                _set(out["config"], item)
        elif kind == "summary":
            for item in rec.summary.update:
                _set(out["summary"], item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                row[".".join(item.nested_key) or item.key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "environment" and rec.environment.args:
            out["args"] = list(rec.environment.args)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    out["config"].pop("_wandb", None)
    return out
