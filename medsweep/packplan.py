"""Which runs of a sweep may train as one pack (pack.py), and the packs a sweep's jobs form. No torch import: the
launcher's plan uses it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from medsweep import record

if TYPE_CHECKING:
    from medsweep.sweep import PlannedJob

# What the runs of one pack may differ in: everything else (base model, data, sequence length, batch size, schedule
# length, evaluation, profile) is shared.
PACKABLE = ("lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "train.lr", "train.seed")


def pack_key(cfg: dict[str, Any]) -> str:
    """The part of a resolved run configuration (record.run_config) that the runs of one pack share. A random
    model's weights are drawn from train.seed, so its runs share a pack only with the same seed."""
    packable = set(PACKABLE)
    if cfg["model"].get("source") == "random":
        packable.discard("train.seed")
    body = {group: ({k: v for k, v in values.items() if f"{group}.{k}" not in packable}
                    if isinstance(values, dict) else values)
            for group, values in cfg.items() if group != "pack"}
    return json.dumps(record.identity(body), sort_keys=True, default=str)


def units(jobs: list[PlannedJob], keys: dict[int, tuple[str, int]]) -> list[list[PlannedJob]]:
    """The jobs to submit, as submitit jobs: packs of at most K jobs of one key, in job order (`keys`: job idx ->
    its pack key, with its resources, and the K its config asks for), and the other jobs alone. A pack's jobs
    learn their pack (PlannedJob.pack)."""
    by_key: dict[tuple[str, int], list[PlannedJob]] = {}
    out = []
    for job in jobs:
        if job.idx in keys and keys[job.idx][1] > 1:
            by_key.setdefault(keys[job.idx], []).append(job)
        else:
            out.append([job])
    for (_, size), members in by_key.items():
        for start in range(0, len(members), size):
            unit = members[start:start + size]
            if len(unit) > 1:
                for job in unit:
                    job.pack = [m.idx for m in unit]
            out.append(unit)
    return sorted(out, key=lambda u: u[0].idx)
