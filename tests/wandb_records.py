"""Read an offline W&B run (``wandb/offline-run-*/run-*.wandb``) without the service: its records as dicts.

The file is W&B's datastore log: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of LevelDB-log
records (crc32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last), each a ``wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768
HEADER = 7


def raw_records(path: str | Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"'{path}' is not a W&B run file")
    out, buf, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        if pos + HEADER + length > len(data):  # a record still being written
            break
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            buf = payload
        elif kind == 3:
            buf += payload
        elif kind == 4:
            out.append(buf + payload)
    return out


def _nested(items, out: dict) -> dict:
    """Apply W&B's key/value updates (``key`` or ``nested_key`` path, ``value_json``) to the nested dict ``out``."""
    for it in items:
        path = list(it.nested_key) or [it.key]
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = json.loads(it.value_json)
    return out


def read_run(run_dir: str | Path, timeout_s: float = 30.0) -> dict:
    """{"run": {group, job_type, tags, name}, "config", "history": [rows], "summary", "artifacts": [{type, name,
    files}], "files": [paths], "exit_code"} of one offline run folder, once its exit record is written (W&B's
    service writes the file after ``finish()`` returns)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = _read(run_dir)
        if run["exit_code"] is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def _read(run_dir: str | Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    run: dict = {"run": {}, "config": {}, "history": [], "summary": {}, "artifacts": [], "files": [], "exit_code": None}
    for raw in raw_records(path):
        r = pb.Record()
        r.ParseFromString(raw)
        kind = r.WhichOneof("record_type")
        if kind == "run":
            if not run["run"]:  # the first one holds the config; later ones (new tags) resend it without additions
                _nested(r.run.config.update, run["config"])
            run["run"] = {"group": r.run.run_group, "job_type": r.run.job_type, "tags": list(r.run.tags),
                          "name": r.run.display_name}
        elif kind == "config":
            _nested(r.config.update, run["config"])
        elif kind == "history":
            run["history"].append(_nested(r.history.item, {}))
        elif kind == "summary":
            _nested(r.summary.update, run["summary"])
        elif kind == "artifact":
            run["artifacts"].append({"type": r.artifact.type, "name": r.artifact.name,
                                     "files": [c.path for c in r.artifact.manifest.contents]})
        elif kind == "files":
            run["files"] += [f.path for f in r.files.files]
        elif kind == "exit":
            run["exit_code"] = r.exit.exit_code
    return run
