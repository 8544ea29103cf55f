"""Mixes of datasets, such as the paper's 1,000 MedQuAD + 1,000 WikiDoc pairs.

Reads nothing itself: each part names a dataset loader with its ``path`` or ``hub`` (and options) and
the number ``n`` of pairs to draw; :func:`load_mixture` (the ``mix`` loader) loads and cleans every part
and :func:`load_mix` draws from them with one seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medsweep.errors import DataError
from medsweep.loaders.registry import DATASETS
from medsweep.loaders.tables import Record

Cleaner = Callable[[list[Record]], tuple[list[Record], dict[str, int]]]


def load_mix(parts: list[tuple[list[Record], int]], seed: int) -> list[Record]:
    """Draw ``n`` records without replacement from each ``(records, n)`` part, concatenate and
    shuffle, all with ``random.Random(seed)`` (same inputs and seed, same output).
    Records are copied, so the inputs are not aliased.
    """
    rng = random.Random(seed)
    mixed: list[Record] = []
    for index, (records, n) in enumerate(parts, start=1):
        if n < 0 or n > len(records):
            raise DataError(f"mix part {index}: asked for {n} records but it has {len(records)}")
        mixed.extend(dict(r) for r in rng.sample(records, n))
    rng.shuffle(mixed)
    return mixed


def load_mixture(
    clean: Cleaner, *, parts: Sequence[Mapping[str, Any]] = (), seed: int = 0
) -> tuple[list[Record], dict[str, Any]]:
    """The ``mix`` loader: ``parts`` = ``[{loader, path|hub, n, ...options}, ...]`` drawn with ``seed``.

    Each part is loaded by its dataset loader and cleaned with ``clean`` (the data group's cleaning)
    before the draw, so ``n`` counts usable pairs and the mix has exactly ``sum(n)`` (barring questions
    shared across parts, dropped later as duplicates). The stats hold ``read`` (all parts) and, per part,
    ``part<i>_<loader>``: its loader's counts, its cleaning counts (``clean``) and ``drawn``.
    """
    drawn_from: list[tuple[list[Record], int]] = []
    stats: dict[str, Any] = {"read": 0}
    for index, part in enumerate(parts, start=1):
        part = dict(part)
        kind, n = part.pop("loader"), part.pop("n")
        if kind not in DATASETS:
            raise DataError(f"data.options.parts[{index - 1}].loader={kind!r} is unknown; "
                            f"allowed: {', '.join(DATASETS)}")
        path = part.pop("path", None)
        given = {k: v for k, v in part.items() if v is not None}  # unset: the loader's own default (its hub)
        records, counts = DATASETS[kind](path, **given)
        part_stats: dict[str, Any] = counts  # the loader's counts, plus the nested counts of clean()
        records, part_stats["clean"] = clean(records)
        stats[f"part{index}_{kind}"] = {**part_stats, "drawn": int(n)}
        stats["read"] += part_stats.get("read", len(records))
        drawn_from.append((records, int(n)))
    if not drawn_from:
        raise DataError("data.options.parts is empty: a mix needs at least one {loader, path|hub, n} part")
    return load_mix(drawn_from, seed=int(seed)), stats
