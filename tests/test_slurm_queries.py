"""medsweep/slurm.py against pretend sacct / squeue / scontrol / sacctmgr printing what the real ones printed
(tests/fake_slurm.py); the same queries against the live SLURM are in tests/test_status.py."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from medsweep import slurm
from medsweep.errors import MedsweepError
from medsweep.slurm import SlurmJob
from tests import fake_slurm

IDS = ["77", "78", "79", *(f"80_{i}" for i in range(6)), "81", *(f"82_{i}" for i in range(4))]
LATER = datetime(2026, 12, 2, 19, 45)  # 3 min after the last of these jobs ended


@pytest.fixture(autouse=True)
def now(monkeypatch):
    """sacct's times are from the capture: the clock is that day's."""
    clock = {"now": LATER}
    monkeypatch.setattr(slurm, "_now", lambda: clock["now"])
    return clock


def test_one_sacct_and_one_squeue_call_give_every_kind_of_job(tmp_path, monkeypatch):
    calls = fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT, squeue=fake_slurm.SQUEUE)
    states = slurm.job_states([*IDS, "999"])
    t = "2026-12-02T19:41:"
    assert states == {
        # requeued: sacct's newest record (submitted again at 19:41:12) and squeue's restart count
        "77": SlurmJob("77", "PENDING", "BeginTime", "0:0", 0, 1),
        "78": SlurmJob("78", "FAILED", "", "3:0", 0, 0, "vm", t + "09", t + "09"),
        "79": SlurmJob("79", "CANCELLED", "", "0:0", 2, 0, "vm", t + "10", t + "12"),  # sacct: CANCELLED by 0
        "80_0": SlurmJob("80_0", "COMPLETED", "", "0:0", 5, 0, "vm", t + "12", t + "17"),
        "80_1": SlurmJob("80_1", "FAILED", "", "1:0", 5, 0, "vm", t + "12", t + "17"),
        # still in sacct's pending range, already running for squeue
        "80_2": SlurmJob("80_2", "RUNNING", "", "0:0", 0, 0, "vm"),
        "80_3": SlurmJob("80_3", "RUNNING", "", "0:0", 0, 0, "vm"),
        "80_4": SlurmJob("80_4", "PENDING", "JobArrayTaskLimit", "0:0", 0, 0),
        "80_5": SlurmJob("80_5", "PENDING", "JobArrayTaskLimit", "0:0", 0, 0),
        "81": SlurmJob("81", "PENDING", "DependencyNeverSatisfied", "0:0", 0, 0),
        "82_0": SlurmJob("82_0", "PENDING", "Resources", "0:0", 0, 0),
        "82_1": SlurmJob("82_1", "PENDING", "Resources", "0:0", 0, 0),
        "82_2": SlurmJob("82_2", "PENDING", "Resources", "0:0", 0, 0),
    }  # 82_3 (cancelled while pending, its array still queued) and 999: unknown to both, left out
    sacct, squeue = calls.read_text().splitlines()
    assert sacct.startswith("sacct -X -P -n --duplicates -j 77,78,79,80,81,82,999 -o JobID,JobIDRaw,State,")
    assert squeue.startswith("squeue -h -r -j 77,78,79,80,81,82,999 -O JobArrayID:40|,State:24|,Reason:200|")
    known = [i for i in IDS if i in states]
    assert [i for i in known if states[i].active] == ["77", "80_2", "80_3", "80_4", "80_5", "81", "82_0", "82_1",
                                                      "82_2"]
    assert [i for i in known if states[i].failed] == ["78", "79", "80_1"]


def test_ended_jobs_come_from_sacct_alone(tmp_path, monkeypatch, now):
    fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT_ENDED, squeue="")
    states = slurm.job_states(IDS)
    assert (states["77"].state, states["77"].requeues, states["77"].elapsed_s) == ("COMPLETED", 1, 30)
    assert states["77"].reason == ""  # BeginTime: why it waited after the requeue, not how it ended
    # cancelled while waiting: Start "None", and the reason it waited is kept
    assert (states["81"].state, states["81"].reason, states["81"].start) == (
        "CANCELLED", "DependencyNeverSatisfied", None)
    assert (states["80_2"].state, states["80_2"].reason, states["80_2"].exit_code) == ("FAILED", "", "2:0")
    assert [states[f"80_{i}"].exit_code for i in range(6)] == [f"{i}:0" for i in range(6)]
    assert all(s.terminal for s in states.values()) and len(states) == len(IDS)
    # the task cancelled while pending has no record: SLURM's silence about it, once its array has long ended
    assert states["82_3"] == SlurmJob("82_3", "CANCELLED", slurm.VANISHED_REASON)
    now["now"] = datetime(2026, 12, 2, 19, 42, 30)  # 42 s after array 82's last task ended: too soon to tell
    assert "82_3" not in slurm.job_states(IDS)


def test_an_array_that_has_just_ended_is_not_taken_for_cancelled_tasks(tmp_path, monkeypatch, now):
    fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT_ARRAY_ENDING, squeue=fake_slurm.SQUEUE_GONE)
    now["now"] = datetime(2026, 12, 2, 19, 42, 45)
    assert slurm.job_states(["90_0", "90_1", "90_2"]) == {
        "90_2": SlurmJob("90_2", "FAILED", "", "2:0", 0, 0, "vm", "2026-12-02T19:42:44", "2026-12-02T19:42:44")}


@pytest.mark.parametrize("listed, tasks", [
    ("20_[2-5%2]", ["20_2", "20_3", "20_4", "20_5"]), ("7_[1,3-4]", ["7_1", "7_3", "7_4"]),
    ("7_[0-6:3]", ["7_0", "7_3", "7_6"]), ("7_9", ["7_9"]), ("12", ["12"])])
def test_array_ranges(listed, tasks):
    assert slurm._tasks(listed) == tasks


@pytest.mark.parametrize("used, seconds", [("0:00", 0), ("1:02", 62), ("1:02:03", 3723), ("2-01:02:03", 176523),
                                           ("INVALID", None), ("", None)])
def test_squeues_time_used(used, seconds):
    assert slurm._seconds(used) == seconds


def test_a_thousand_array_tasks_take_two_calls_and_well_under_a_second(tmp_path, monkeypatch):
    pending = "100_[500-999%64]|100|PENDING|0:0|0|2026-12-02T19:09:15|Unknown|Unknown|JobArrayTaskLimit|None\n"
    done = "".join(f"100_{i}|{200 + i}|COMPLETED|0:0|5|2026-12-02T19:09:15|2026-12-02T19:09:18|"
                   f"2026-12-02T19:09:23|None|vm\n" for i in range(500))
    running = "".join(f"100_{i}|RUNNING|None|0|1:02|vm|\n" for i in range(500, 564))
    calls = fake_slurm.install(tmp_path, monkeypatch, sacct=done + pending, squeue=running)
    t0 = time.perf_counter()
    states = slurm.job_states(f"100_{i}" for i in range(1000))
    assert time.perf_counter() - t0 < 1.0
    assert len(states) == 1000 and len(calls.read_text().splitlines()) == 2
    assert [sum(s.state == k for s in states.values()) for k in ("COMPLETED", "RUNNING", "PENDING")] == [500, 64, 436]
    assert states["100_500"].elapsed_s == 62


def test_squeue_without_any_of_the_jobs_any_more(tmp_path, monkeypatch):
    fake_slurm.install(tmp_path, monkeypatch, sacct=fake_slurm.SACCT_ENDED, squeue=fake_slurm.SQUEUE_GONE)
    assert slurm.job_states(["78"]) == {
        "78": SlurmJob("78", "FAILED", "", "3:0", 0, 0, "vm", "2026-12-02T19:41:09", "2026-12-02T19:41:09")}


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


def test_limits_ask_about_the_user_of_the_environment(tmp_path, monkeypatch):
    calls = fake_slurm.install(tmp_path, monkeypatch, scontrol=CONFIG)
    fake_slurm.install_sacctmgr(tmp_path, "100|normal|normal\n", "normal|\n")
    monkeypatch.setenv("USER", "from_user")
    monkeypatch.setenv("LOGNAME", "from_logname")  # getpass.getuser() reads LOGNAME first
    assert slurm.limits() == slurm.SlurmLimits(1001, 100)
    monkeypatch.delenv("USER")
    slurm.limits()
    scontrol, assoc, _, _, assoc_logname, _ = calls.read_text().splitlines()
    assert scontrol == "scontrol show config"
    assert assoc == "sacctmgr -n -P show assoc user=from_user format=MaxSubmit,DefaultQOS,QOS"
    assert assoc_logname == "sacctmgr -n -P show assoc user=from_logname format=MaxSubmit,DefaultQOS,QOS"


@pytest.mark.parametrize("assoc, qos_asked, expected", [
    ("100||lab,normal\n", "lab", 50),  # no default QOS: the first allowed one
    ("100||\n", "normal", 100),  # neither: SLURM's default QOS, normal
    ("100\n", "normal", 100),  # a short line: the missing fields are empty
    ("100|a|a\n80|b|b\n", "a,b", 30),  # the user in two accounts: both QOS asked at once, the smallest cap
])
def test_limits_the_qos_to_ask_about(tmp_path, monkeypatch, assoc, qos_asked, expected):
    calls = fake_slurm.install(tmp_path, monkeypatch, scontrol="MaxArraySize=300\n")  # no padding around '='
    fake_slurm.install_sacctmgr(tmp_path, assoc, "lab|50\nnormal|\na|60\nb|30\n")
    assert slurm.limits(user="u") == slurm.SlurmLimits(300, expected)
    assert calls.read_text().splitlines()[2] == f"sacctmgr -n -P show qos {qos_asked} format=Name,MaxSubmitPU"


def test_limits_without_a_qos_name_ask_for_none(tmp_path, monkeypatch):
    calls = fake_slurm.install(tmp_path, monkeypatch, scontrol=CONFIG)
    fake_slurm.install_sacctmgr(tmp_path, "100||,lab\n", "lab|5\n")  # the allowed list's first name is empty
    assert slurm.limits(user="u") == slurm.SlurmLimits(1001, 100)
    assert len(calls.read_text().splitlines()) == 2


@pytest.mark.parametrize("slow", ["scontrol", "assoc", "qos"])
def test_each_limits_query_has_the_timeout(tmp_path, monkeypatch, slow):
    fake_slurm.install(tmp_path, monkeypatch, scontrol=CONFIG)
    fake_slurm.install_sacctmgr(tmp_path, "100|normal|normal\n", "normal|\n")
    bin_dir = tmp_path / "fake-slurm-bin"
    if slow == "scontrol":
        (bin_dir / "scontrol").write_text("#!/bin/sh\nexec /bin/sleep 5\n")
    else:  # sacctmgr sleeps when asked about `slow` only
        (bin_dir / "sacctmgr").write_text(f'#!/bin/sh\ncase "$*" in *"show {slow}"*) exec /bin/sleep 5;; esac\n'
                                          f'case "$*" in *assoc*) /bin/cat {bin_dir / "assoc.out"};; '
                                          f'*) /bin/cat {bin_dir / "qos.out"};; esac\n')
    t0 = time.perf_counter()
    with pytest.raises(MedsweepError, match=r"(scontrol|sacctmgr) did not answer within 0.3 s"):
        slurm.limits(user="u", timeout=0.3)
    assert time.perf_counter() - t0 < 3
