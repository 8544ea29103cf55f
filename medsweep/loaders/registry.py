"""The dataset loaders by name: one dataset each, from a local file or the hub. A ``mix`` part names one of these
(medsweep/loaders/mix.py), and every one is also a value of ``data.loader`` (medsweep/loaders/__init__.py:LOADERS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medsweep.loaders.meadow import load_medchat, load_wikidoc
from medsweep.loaders.medal import load_medal
from medsweep.loaders.medquad import load_medquad
from medsweep.loaders.pubmedqa import load_pubmedqa
from medsweep.loaders.tables import Record, load_local

Loader = Callable[..., tuple[list[Record], dict[str, Any]]]

DATASETS: dict[str, Loader] = {
    "local": load_local,
    "medquad": load_medquad,
    "pubmedqa": load_pubmedqa,
    "wikidoc": load_wikidoc,
    "medchat": load_medchat,
    "medal": load_medal,
}
