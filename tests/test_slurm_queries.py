"""medsweep/slurm.py against pretend sacct / squeue / scontrol / sacctmgr printing what the real ones printed
(tests/fake_slurm.py); the same queries against the live SLURM are in tests/test_status.py."""

from __future__ import annotations

import time

import pytest

from medsweep import slurm
from medsweep.errors import MedsweepError
from medsweep.slurm import SlurmJob
from tests import fake_slurm

IDS = ["17", "18", "19", "20_0", "20_1", "20_2", "20_3", "20_4", "20_5", "21"]


def test_one_sacct_and_one_squeue_call_give_every_kind_of_job(tmp_path, monkeypatch):
    calls = fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT, squeue=fake_slurm.SQUEUE)
    states = slurm.job_states([*IDS, "999"])
    assert states == {
        # requeued: sacct's newest record (submitted again at 19:09:18) and squeue's restart count
        "17": SlurmJob("17", "PENDING", "BeginTime", "0:0", 0, 1),
        "18": SlurmJob("18", "FAILED", "", "3:0", 0, 0, "vm", "2026-12-02T19:09:15", "2026-12-02T19:09:15"),
        "19": SlurmJob("19", "CANCELLED", "", "0:0", 2, 0, "vm", "2026-12-02T19:09:16", "2026-12-02T19:09:18"),
        "20_0": SlurmJob("20_0", "COMPLETED", "", "0:0", 5, 0, "vm", "2026-12-02T19:09:18", "2026-12-02T19:09:23"),
        "20_1": SlurmJob("20_1", "FAILED", "", "1:0", 5, 0, "vm", "2026-12-02T19:09:18", "2026-12-02T19:09:23"),
        # still in sacct's pending range, already running for squeue
        "20_2": SlurmJob("20_2", "RUNNING", "", "0:0", 0, 0, "vm"),
        "20_3": SlurmJob("20_3", "RUNNING", "", "0:0", 0, 0, "vm"),
        "20_4": SlurmJob("20_4", "PENDING", "JobArrayTaskLimit", "0:0", 0, 0),
        "20_5": SlurmJob("20_5", "PENDING", "JobArrayTaskLimit", "0:0", 0, 0),
        "21": SlurmJob("21", "PENDING", "DependencyNeverSatisfied", "0:0", 0, 0),
    }  # 999: unknown to both, left out
    sacct, squeue = calls.read_text().splitlines()
    assert sacct.startswith("sacct -X -P -n --duplicates -j 17,18,19,20,21,999 -o JobID,JobIDRaw,State,")
    assert squeue.startswith("squeue -h -r -j 17,18,19,20,21,999 -O JobArrayID:40|,State:24|,Reason:200|")
    assert [states[i].active for i in IDS] == [True, False, False, False, False, True, True, True, True, True]
    assert [states[i].failed for i in IDS] == [False, True, True, False, True, False, False, False, False, False]


def test_ended_jobs_come_from_sacct_alone(tmp_path, monkeypatch):
    fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT_ENDED, squeue=fake_slurm.SQUEUE_GONE)
    states = slurm.job_states(IDS)
    assert (states["17"].state, states["17"].requeues, states["17"].elapsed_s) == ("COMPLETED", 1, 30)
    assert states["17"].reason == ""  # BeginTime: why it waited after the requeue, not how it ended
    assert (states["21"].state, states["21"].reason, states["21"].start) == ("CANCELLED", "Dependency", None)
    assert (states["20_2"].state, states["20_2"].reason, states["20_2"].exit_code) == ("FAILED", "", "2:0")
    assert all(s.terminal for s in states.values()) and "20_3" not in states


@pytest.mark.parametrize("listed, tasks", [
    ("20_[2-5%2]", ["20_2", "20_3", "20_4", "20_5"]), ("7_[1,3-4]", ["7_1", "7_3", "7_4"]),
    ("7_[0-6:3]", ["7_0", "7_3", "7_6"]), ("7_9", ["7_9"]), ("12", ["12"])])
def test_array_ranges(listed, tasks):
    assert slurm._tasks(listed) == tasks


def test_a_thousand_array_tasks_take_two_calls_and_well_under_a_second(tmp_path, monkeypatch):
    pending = "100_[500-999%64]|100|PENDING|0:0|0|2026-12-02T19:09:15|Unknown|Unknown|JobArrayTaskLimit|None\n"
    done = "".join(f"100_{i}|{200 + i}|COMPLETED|0:0|5|2026-12-02T19:09:15|2026-12-02T19:09:18|"
                   f"2026-12-02T19:09:23|None|vm\n" for i in range(500))
    running = "".join(f"100_{i}|RUNNING|None|0|vm|\n" for i in range(500, 564))
    calls = fake_slurm.install(tmp_path, monkeypatch, sacct=done + pending, squeue=running)
    t0 = time.perf_counter()
    states = slurm.job_states(f"100_{i}" for i in range(1000))
    assert time.perf_counter() - t0 < 1.0
    assert len(states) == 1000 and len(calls.read_text().splitlines()) == 2
    assert [sum(s.state == k for s in states.values()) for k in ("COMPLETED", "RUNNING", "PENDING")] == [500, 64, 436]


def test_ids_slurm_never_gave_ask_nothing(tmp_path, monkeypatch):
    calls = fake_slurm.install(tmp_path, monkeypatch)  # no command at all: none may be called
    assert slurm.job_states(["", "abc", "12_x"]) == {} and not calls.exists()


def test_a_missing_failing_or_silent_command_is_one_clear_error(tmp_path, monkeypatch):
    fake_slurm.install(tmp_path, monkeypatch, squeue=fake_slurm.SQUEUE)
    with pytest.raises(MedsweepError, match="sacct is not installed or not on PATH"):
        slurm.job_states(IDS)
    fake_slurm.install(tmp_path, monkeypatch, squeue=fake_slurm.SQUEUE, sacct=(
        "sacct: error: Problem talking to the database: Connection refused\n", 1))
    with pytest.raises(MedsweepError, match=r"sacct failed \(exit 1\): sacct: error: Problem talking to the database"):
        slurm.job_states(IDS)
    fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT,
                       squeue=("squeue: error: slurm_receive_msg: Socket timed out on send/recv operation\n", 1))
    with pytest.raises(MedsweepError, match="squeue failed .*Socket timed out"):
        slurm.job_states(IDS)
    slow = tmp_path / "fake-slurm-bin" / "sacct"
    slow.write_text("#!/bin/sh\nexec /bin/sleep 5\n")
    t0 = time.perf_counter()
    with pytest.raises(MedsweepError, match=r"sacct did not answer within 0.3 s"):
        slurm.job_states(IDS, timeout=0.3)
    assert time.perf_counter() - t0 < 3


# `scontrol show config` (a few of its ~250 lines) and `sacctmgr -n -P show assoc/qos` for a user with MaxSubmit=100
# whose default QOS caps submissions at 50 per user (created for the capture, then deleted)
CONFIG = ("Configuration data as of 2026-12-02T19:20:01\nAccountingStorageType   = accounting_storage/slurmdbd\n"
          "MaxArraySize            = 1001\nMaxJobCount             = 10000\n")


@pytest.mark.parametrize("assoc, qos_table, qos, expected", [
    ("100|medsweep_probe|medsweep_probe,normal\n", "medsweep_probe|50\nnormal|\n", None, 50),
    ("100|medsweep_probe|medsweep_probe,normal\n", "medsweep_probe|50\nnormal|\n", "normal", 100),
    ("||normal\n", "normal|\n", None, None),  # this cluster's root: no limit anywhere
])
def test_limits(tmp_path, monkeypatch, assoc, qos_table, qos, expected):
    calls = fake_slurm.install(tmp_path, monkeypatch, scontrol=CONFIG)
    fake_slurm.install_sacctmgr(tmp_path, assoc, qos_table)
    assert slurm.limits(user="medsweep_probe", qos=qos) == slurm.SlurmLimits(1001, expected)
    asked = calls.read_text().splitlines()
    assert asked[1] == "sacctmgr -n -P show assoc user=medsweep_probe format=MaxSubmit,DefaultQOS,QOS"
    assert asked[2] == f"sacctmgr -n -P show qos {qos or ('medsweep_probe' if expected else 'normal')} " \
                       "format=Name,MaxSubmitPU"


def test_limits_unknown_array_size(tmp_path, monkeypatch):
    fake_slurm.install(tmp_path, monkeypatch, scontrol="MaxJobCount             = 10000\n")
    fake_slurm.install_sacctmgr(tmp_path, "", "")
    assert slurm.limits(user="nobody") == slurm.SlurmLimits(None, None)
