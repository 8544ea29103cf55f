"""Which runs of a sweep may train as one pack (pack.py), and the packs a sweep's jobs form. No torch import: the
launcher's plan uses it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from medsweep import record

# What the runs of one pack may differ in: everything else (base model, data, sequence length, batch size, schedule
# length, evaluation, profile) is shared.
PACKABLE = ("lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "train.lr", "train.seed")
AUTO_CPU_MAX = 8  # pack=auto on a CPU profile: the base model's forward is shared, the adapters' work is not


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


def packs(keys: Sequence[str], size: int) -> list[list[int]]:
    """The jobs (indices into `keys`, their pack keys) in packs of at most `size` jobs of one key, in job order."""
    by_key: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        by_key.setdefault(key, []).append(index)
    out: list[list[int]] = []
    for members in by_key.values():
        out.extend(members[i:i + size] for i in range(0, len(members), size))
    return sorted(out, key=lambda p: p[0])
