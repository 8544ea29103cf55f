"""Pretend SLURM commands on PATH: `install(tmp_path, monkeypatch, sacct=..., squeue=...)` writes executables that
print canned output (captured from the real slurm-wlm 22.05 commands of scripts/slurm_start.sh) and log each call's
arguments, so the parsing of medsweep/slurm.py is tested without a cluster. A command left out is missing from
PATH; one given as (text, exit code) prints the text on stderr and exits with that code."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

# Captured here, all at one moment (-o JobID,JobIDRaw,State,ExitCode,ElapsedRaw,Submit,Start,End,Reason,NodeList):
#   77 `sleep 30`, `scontrol requeue`d once running; 78 `exit 3`; 79 `sleep 60`, scancel'ed while running;
#   80 an array 0-5%2 of tasks exiting with their index; 81 waiting on 79 (afterok); 82 an array 0-3%1 of
#   `sleep 4` whose task 3 was scancel'ed while pending.
# sacct still lists 80_2-3 in the pending range that squeue already shows running, and lists no 82_3.
SACCT = """\
77|77|REQUEUED|0:0|3|2026-12-02T19:41:09|2026-12-02T19:41:09|2026-12-02T19:41:12|None|vm
78|78|FAILED|3:0|0|2026-12-02T19:41:09|2026-12-02T19:41:09|2026-12-02T19:41:09|None|vm
79|79|CANCELLED by 0|0:0|2|2026-12-02T19:41:09|2026-12-02T19:41:10|2026-12-02T19:41:12|None|vm
81|81|PENDING|0:0|0|2026-12-02T19:41:09|Unknown|Unknown|DependencyNeverSatisfied|None assigned
80_0|83|COMPLETED|0:0|5|2026-12-02T19:41:09|2026-12-02T19:41:12|2026-12-02T19:41:17|None|vm
80_1|84|FAILED|1:0|5|2026-12-02T19:41:09|2026-12-02T19:41:12|2026-12-02T19:41:17|None|vm
80_[2-5%2]|80|PENDING|0:0|0|2026-12-02T19:41:09|Unknown|Unknown|JobArrayTaskLimit|None assigned
82_[0-2%1]|82|PENDING|0:0|0|2026-12-02T19:41:09|Unknown|Unknown|None|None assigned
77|77|PENDING|0:0|0|2026-12-02T19:41:12|Unknown|Unknown|BeginTime|None assigned
"""
# `squeue -h -r -j 77,78,79,80,81,82 -O 'JobArrayID:40|,State:24|,Reason:200|,RestartCnt:8|,TimeUsed:16|,
# NodeList:400|'` at the same moment; squeue pads each field to its width, here shortened (on the first line) or cut
SQUEUE = """\
77      |PENDING      |BeginTime      |1      |0:00      |      |
80_4|PENDING|JobArrayTaskLimit|0|0:00||
80_5|PENDING|JobArrayTaskLimit|0|0:00||
81|PENDING|DependencyNeverSatisfied|0|0:00||
82_0|PENDING|Resources|0|0:00||
82_1|PENDING|Resources|0|0:00||
82_2|PENDING|Resources|0|0:00||
80_2|RUNNING|None|0|0:00|vm|
80_3|RUNNING|None|0|0:00|vm|
"""
# the same jobs 70 s later, 81 scancel'ed while waiting; squeue lists none of them (and says nothing)
SACCT_ENDED = """\
77|77|REQUEUED|0:0|3|2026-12-02T19:41:09|2026-12-02T19:41:09|2026-12-02T19:41:12|None|vm
78|78|FAILED|3:0|0|2026-12-02T19:41:09|2026-12-02T19:41:09|2026-12-02T19:41:09|None|vm
79|79|CANCELLED by 0|0:0|2|2026-12-02T19:41:09|2026-12-02T19:41:10|2026-12-02T19:41:12|None|vm
81|81|CANCELLED by 0|0:0|0|2026-12-02T19:41:09|None|2026-12-02T19:42:17|DependencyNeverSatisfied|None assigned
80_0|83|COMPLETED|0:0|5|2026-12-02T19:41:09|2026-12-02T19:41:12|2026-12-02T19:41:17|None|vm
80_1|84|FAILED|1:0|5|2026-12-02T19:41:09|2026-12-02T19:41:12|2026-12-02T19:41:17|None|vm
80_2|85|FAILED|2:0|5|2026-12-02T19:41:09|2026-12-02T19:41:18|2026-12-02T19:41:23|JobArrayTaskLimit|vm
80_3|86|FAILED|3:0|5|2026-12-02T19:41:09|2026-12-02T19:41:18|2026-12-02T19:41:23|JobArrayTaskLimit|vm
80_4|87|FAILED|4:0|5|2026-12-02T19:41:09|2026-12-02T19:41:23|2026-12-02T19:41:28|JobArrayTaskLimit|vm
80_5|80|FAILED|5:0|5|2026-12-02T19:41:09|2026-12-02T19:41:29|2026-12-02T19:41:34|JobArrayTaskLimit|vm
82_0|88|COMPLETED|0:0|4|2026-12-02T19:41:09|2026-12-02T19:41:35|2026-12-02T19:41:39|None|vm
82_1|89|COMPLETED|0:0|4|2026-12-02T19:41:09|2026-12-02T19:41:40|2026-12-02T19:41:44|JobArrayTaskLimit|vm
82_2|82|COMPLETED|0:0|4|2026-12-02T19:41:09|2026-12-02T19:41:44|2026-12-02T19:41:48|JobArrayTaskLimit|vm
77|77|COMPLETED|0:0|30|2026-12-02T19:41:12|2026-12-02T19:41:23|2026-12-02T19:41:53|BeginTime|vm
"""
# sacct 1 s after the three tasks of array 90 (`exit $SLURM_ARRAY_TASK_ID`) ended: for 3.5 s it listed the last
# task alone, then all three (90_0 COMPLETED, 90_1 FAILED 1:0); squeue listed none
SACCT_ARRAY_ENDING = """\
90_2|90|FAILED|2:0|0|2026-12-02T19:42:43|2026-12-02T19:42:44|2026-12-02T19:42:44|None|vm
"""
# squeue -j when every job asked for has left slurmctld's memory (MinJobAge)
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
