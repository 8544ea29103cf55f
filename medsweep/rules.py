"""The one-line range checks every config group's `check()` uses, and the constants they check against
(medsweep/config.py imports them; medsweep/checks.py uses `require` for the rules that join groups)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medsweep.errors import ConfigError


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise the one-line ConfigError `<key>=<value> is invalid: <allowed>` unless `ok` (checks.py uses it too)."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _one_of(key: str, value: Any, allowed: Sequence[Any]) -> None:
    require(value in allowed, key, value, "allowed: " + ", ".join(map(str, allowed)))


def _seed(key: str, value: int) -> None:
    require(0 <= value <= SEED_MAX, key, value, f"must be in [0, {SEED_MAX}] (what numpy and torch accept)")


# transformers' SchedulerType values, listed here so the pre-flight need not import transformers (and torch) to
# refuse a typo; tests/test_config.py checks the list against the installed transformers.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
SEED_MAX = 2**32 - 1  # numpy's limit (transformers' set_seed seeds numpy too); torch takes up to 2**64 - 1
# A value Hydra writes into a path (the sweep directory) must stay a single plain directory name.
_PLAIN_NAME = r"[A-Za-z0-9][A-Za-z0-9._=+,-]{0,99}"
