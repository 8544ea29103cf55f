"""Load medical QA datasets into plain records: the loader contract and the one registry, :data:`LOADERS`.

Every loader returns ``(records, stats)``:

* ``records`` is a ``list[dict]`` with keys ``id``, ``question``, ``answer`` (all ``str``)
  and optionally ``context``, ``source``, ``label``. Values are only ``str()``-converted
  and stripped; cleaning, de-duplication and splitting happen elsewhere (medsweep/data.py).
* ``stats`` counts what was seen: ``read`` (rows or QA pairs seen), ``kept`` and one
  ``skipped_<reason>`` entry per reason a row can be dropped, so that
  ``kept + sum(skipped_*) == read`` and nothing is lost silently. (The ``mix`` loader
  returns ``read`` and the nested counts of each part instead.)

A loader's signature says where each argument comes from. Its ordinary parameters are
filled by ``data.load_records`` from the data group: each one named like a data-group field
(``path``, ``hub``, ``hub_config``, ``hub_split``, ``question_col`` ...) gets that field when it
is set, and ``clean`` gets the data group's cleaning. Its keyword-only parameters (after ``*``)
are its ``data.options`` (:func:`options`); the config check refuses any other option.
A dataset loader is ``load_<name>(path=None, hub=<its hub id>, hub_config=None,
hub_split="train", *, <options>)`` and overrides only what differs (its hub id and options).

``path`` (a local file or folder) wins over ``hub`` (a Hugging Face dataset id).
Every data problem raises :class:`~medsweep.errors.DataError` with a one-line message
that names the file (and the 1-based line for JSONL).

One file per family: ``tables`` (the generic readers, ``local`` and the bundled ``sample``),
``medquad``, ``pubmedqa``, ``meadow`` (``wikidoc``, ``medchat``), ``medal`` and ``mix``; ``registry`` names the
dataset loaders (what a ``mix`` part may name).
"""

from __future__ import annotations

import inspect

from medsweep.loaders.meadow import MEDCHAT_HUB, WIKIDOC_HUB, load_medchat, load_wikidoc
from medsweep.loaders.medal import MEDAL_HUB, load_medal
from medsweep.loaders.medquad import MEDQUAD_HUB, load_medquad
from medsweep.loaders.mix import load_mix, load_mixture
from medsweep.loaders.pubmedqa import PUBMEDQA_HUB, PUBMEDQA_SPLITS, load_pubmedqa
from medsweep.loaders.registry import DATASETS, Loader
from medsweep.loaders.tables import (
    TABLE_EXTENSIONS,
    Record,
    Row,
    Stats,
    existing,
    load_local,
    load_sample,
    map_rows,
    read_rows,
    read_table,
    sample_path,
)

# Every value of data.loader, in the order error messages list them.
LOADERS: dict[str, Loader] = {"sample": load_sample, **DATASETS, "mix": load_mixture}


def options(loader: Loader) -> set[str] | None:
    """The ``data.options`` a loader reads: its keyword-only parameters (None: it takes any)."""
    params = inspect.signature(loader).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY}


def data_params(loader: Loader) -> list[str]:
    """The parameters ``data.load_records`` fills from the data group: all but the keyword-only ones."""
    params = inspect.signature(loader).parameters.values()
    return [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]


__all__ = [
    "DATASETS", "LOADERS", "MEDAL_HUB", "MEDCHAT_HUB", "MEDQUAD_HUB", "PUBMEDQA_HUB", "PUBMEDQA_SPLITS",
    "TABLE_EXTENSIONS", "WIKIDOC_HUB", "Loader", "Record", "Row", "Stats", "data_params", "existing",
    "load_local", "load_medal", "load_medchat", "load_medquad", "load_mix", "load_mixture", "load_pubmedqa",
    "load_sample", "load_wikidoc", "map_rows", "options", "read_rows", "read_table", "sample_path",
]
