"""Pretend SLURM commands on PATH: `install(tmp_path, monkeypatch, sacct=..., squeue=...)` writes executables that
print canned output (captured from the real slurm-wlm 22.05 commands of scripts/slurm_start.sh) and log each call's
arguments, so the parsing of medsweep/slurm.py is tested without a cluster. A command left out is missing from
PATH; one given as (text, exit code) prints the text on stderr and exits with that code."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

# `sacct -X -P -n --duplicates -j 17,18,19,20,21 -o JobID,JobIDRaw,State,ExitCode,ElapsedRaw,Submit,Start,End,
# Reason,NodeList`, 3 s after: 17 (sleep 30) requeued by scontrol requeue, 18 exited 3, 19 scancel'ed while running,
# 20 an array 0-5%2 of tasks exiting with their index, 21 waiting on 19 (afterok) — sacct still lists tasks 2-3 of
# 20 in the pending range that squeue already shows running
SACCT = """\
17|17|REQUEUED|0:0|3|2026-12-02T19:09:15|2026-12-02T19:09:15|2026-12-02T19:09:18|None|vm
18|18|FAILED|3:0|0|2026-12-02T19:09:15|2026-12-02T19:09:15|2026-12-02T19:09:15|None|vm
19|19|CANCELLED by 0|0:0|2|2026-12-02T19:09:15|2026-12-02T19:09:16|2026-12-02T19:09:18|None|vm
21|21|PENDING|0:0|0|2026-12-02T19:09:15|Unknown|Unknown|Dependency|None assigned
20_0|22|COMPLETED|0:0|5|2026-12-02T19:09:15|2026-12-02T19:09:18|2026-12-02T19:09:23|None|vm
20_1|23|FAILED|1:0|5|2026-12-02T19:09:15|2026-12-02T19:09:18|2026-12-02T19:09:23|None|vm
20_[2-5%2]|20|PENDING|0:0|0|2026-12-02T19:09:15|Unknown|Unknown|JobArrayTaskLimit|None assigned
17|17|PENDING|0:0|0|2026-12-02T19:09:18|Unknown|Unknown|BeginTime|None assigned
"""
# `squeue -h -r -j 17,18,19,20,21 -O 'JobArrayID:40|,State:24|,Reason:200|,RestartCnt:8|,NodeList:400|'` at the
# same moment (its padding shortened here; the first line keeps some)
SQUEUE = """\
17                                      |PENDING                 |BeginTime       |1       |        |
20_4|PENDING|JobArrayTaskLimit|0||
20_5|PENDING|JobArrayTaskLimit|0||
21|PENDING|DependencyNeverSatisfied|0||
20_2|RUNNING|None|0|vm|
20_3|RUNNING|None|0|vm|
"""
# the same jobs a minute later (21 scancel'ed while waiting; squeue lists none of them any more)
SACCT_ENDED = """\
17|17|REQUEUED|0:0|3|2026-12-02T19:09:15|2026-12-02T19:09:15|2026-12-02T19:09:18|None|vm
21|21|CANCELLED by 0|0:0|0|2026-12-02T19:09:15|None|2026-12-02T19:13:42|Dependency|None assigned
20_0|22|COMPLETED|0:0|5|2026-12-02T19:09:15|2026-12-02T19:09:18|2026-12-02T19:09:23|None|vm
20_1|23|FAILED|1:0|5|2026-12-02T19:09:15|2026-12-02T19:09:18|2026-12-02T19:09:23|None|vm
20_2|24|FAILED|2:0|5|2026-12-02T19:09:15|2026-12-02T19:09:23|2026-12-02T19:09:28|JobArrayTaskLimit|vm
17|17|COMPLETED|0:0|30|2026-12-02T19:09:18|2026-12-02T19:09:29|2026-12-02T19:09:59|BeginTime|vm
"""
SQUEUE_GONE = ("slurm_load_jobs error: Invalid job id specified\n", 1)


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **commands: str | tuple[str, int]) -> Path:
    """Fake commands on a PATH of their own; returns the log file (one line per call: the command and its args)."""
    bin_dir, calls = tmp_path / "fake-slurm-bin", tmp_path / "fake-slurm-calls.log"
    bin_dir.mkdir(exist_ok=True)
    for name, output in commands.items():
        text, code = output if isinstance(output, tuple) else (output, 0)
        (bin_dir / f"{name}.out").write_text(text)
        stream = ">&2" if code else ""
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {shlex.quote(str(calls))}\n'
                          f'/bin/cat {shlex.quote(str(bin_dir / f"{name}.out"))} {stream}\nexit {code}\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return calls


def install_sacctmgr(tmp_path: Path, assoc: str, qos: str) -> None:
    """sacctmgr answers `show assoc` and `show qos` differently (in the bin dir install made)."""
    bin_dir = tmp_path / "fake-slurm-bin"
    (bin_dir / "assoc.out").write_text(assoc)
    (bin_dir / "qos.out").write_text(qos)
    script = bin_dir / "sacctmgr"
    script.write_text(f'#!/bin/sh\necho "sacctmgr $*" >> {shlex.quote(str(tmp_path / "fake-slurm-calls.log"))}\n'
                      f'case "$*" in *assoc*) /bin/cat {shlex.quote(str(bin_dir / "assoc.out"))};; '
                      f'*) /bin/cat {shlex.quote(str(bin_dir / "qos.out"))};; esac\n')
    script.chmod(0o755)
