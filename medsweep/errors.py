"""Errors that medsweep reports to the user as one line (exit code 2), not a traceback."""


class MedsweepError(Exception):
    """Base class: a problem the user can fix (bad config, bad data, missing package)."""

    exit_code = 2


class ConfigError(MedsweepError):
    """A config value is invalid: the message names the key, the value and what is allowed."""


class DataError(MedsweepError):
    """A dataset cannot be read or is empty after cleaning: the message names the file (and line)."""


class ModelError(MedsweepError):
    """A model cannot be loaded (missing package, unknown hub id offline, missing module)."""


class TrainingDiverged(MedsweepError):
    """Training produced a non-finite loss, or fp16's loss scaler skipped every step: the run fails with why."""

    exit_code = 1
