"""Sweeps on the live single-node SLURM of scripts/slurm_start.sh (started by .ci/run): completion, honest
failures, skip on re-run, a GPU profile's request, and a time limit survived by checkpoint + requeue."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import (
    MEDQUAD_JSONL,
    ROOT,
    SECRET_ENV,
    assert_no_secret,
    assert_same_trained_adapter,
    need_shared_data,
    run_medsweep,
    train_eval_in_process,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# small and quick on a 2-core node: 1 cpu and 3 GB per job so two jobs run at once
DETACHED = ["hydra/launcher=slurm", "experiment=smoke", "profile.cpus=1", "profile.memory_gb=3"]
JOB = [*DETACHED, "detach=false"]  # the command waits for its jobs (detached: SLURM's default)


@pytest.fixture(scope="module", autouse=True)
def live_slurm(embedded_dir):
    if not os.environ.get("SLURM_CONF") or shutil.which("sinfo") is None:
        pytest.skip("no live SLURM: run scripts/slurm_start.sh and export SLURM_CONF (as .ci/run does)")
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or "idle" not in out.stdout and "mix" not in out.stdout:
        pytest.skip(f"SLURM not ready: {out.stdout.strip()} {out.stderr.strip()}")


def sacct(job_ids: list[str], fields: str = "JobID,State") -> dict[str, list[str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", fields],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split("|") for line in out.strip().splitlines()]
    return {row[0]: row[1:] for row in rows}


def jobs_of(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / "sweep_jobs.json").read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    overrides = [*JOB, "lora.r=4,8", "train.seed=0,1", f"output_root={root}", "sweep_name=grid"]
    proc = run_medsweep(*overrides, multirun=True)
    return root / "sweeps" / "grid", overrides, proc


def test_multirun_of_four_jobs_completes(sweep):
    sweep_dir, _, proc = sweep
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    jobs = jobs_of(sweep_dir)
    assert len(jobs) == 4 and all(j["outcome"] == "completed" for j in jobs)
    states = sacct([j["job_id"] for j in jobs])
    assert all(states[j["job_id"]][0] == "COMPLETED" for j in jobs), states
    for j in jobs:
        rec = json.loads((Path(j["run_dir"]) / "metrics.json").read_text())
        assert rec["status"] == "complete" and rec["env"]["slurm"]["SLURM_JOB_ID"]
    assert (sweep_dir / "report" / "report.md").is_file()  # the end-of-multirun hook


def test_rerun_of_a_finished_sweep_submits_nothing(sweep):
    sweep_dir, overrides, _ = sweep
    before = [json.loads((Path(j["run_dir"]) / "metrics.json").read_text()) for j in jobs_of(sweep_dir)]
    proc = run_medsweep(*overrides, multirun=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 to run, 4 complete (skipped)" in proc.stdout
    assert "submitted as" not in proc.stdout + proc.stderr
    after = [json.loads((Path(j["run_dir"]) / "metrics.json").read_text()) for j in jobs_of(sweep_dir)]
    assert before == after


def test_failed_job_is_failed_everywhere_and_others_finish(tmp_path):
    need_shared_data()
    bad = tmp_path / "missing.jsonl"
    proc = run_medsweep(*JOB, "data=local", f"data.path={MEDQUAD_JSONL},{bad}", f"output_root={tmp_path}",
                        "sweep_name=fail", multirun=True, env=SECRET_ENV)
    assert proc.returncode != 0
    # no secret of the environment in submitit's pickles and logs, the records, Hydra's files, the console
    assert list(tmp_path.rglob("*_submitted.pkl")) and list(tmp_path.rglob("*_log.err"))
    assert_no_secret(tmp_path, proc.stdout + proc.stderr)
    assert "1 of 2 job(s) failed" in proc.stderr and "missing.jsonl" in proc.stderr
    jobs = {next(o for o in j["overrides"] if o.startswith("data.path=")).split("/")[-1]: j
            for j in jobs_of(tmp_path / "sweeps" / "fail")}
    good, failed = jobs[MEDQUAD_JSONL.name], jobs["missing.jsonl"]
    states = sacct([good["job_id"], failed["job_id"]])
    assert states[good["job_id"]][0] == "COMPLETED" and states[failed["job_id"]][0] == "FAILED", states
    rec = json.loads((Path(failed["run_dir"]) / "metrics.json").read_text())
    assert rec["status"] == "failed" and "missing.jsonl" in rec["error"]


@pytest.mark.parametrize("request_style, expect", [("gres", "gres/gpu"), ("constraint", "v100")])
def test_gpu_profile_request_reaches_slurm(tmp_path, request_style, expect):
    # the V100 profile's request, while the job itself trains on the CPU (no GPU here)
    proc = run_medsweep(*JOB, "profile=1cpu_1v100", "profile.device=cpu", "profile.precision=fp32",
                        "profile.memory_gb=3", f"site.gpu_request={request_style}", f"output_root={tmp_path}",
                        multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = jobs_of(tmp_path / "sweeps" / "sweep")
    rec = json.loads((Path(job["run_dir"]) / "metrics.json").read_text())
    assert rec["env"]["cuda_visible_devices"] not in (None, ""), rec["env"]
    alloc, constraints = sacct([job["job_id"]], "JobID,AllocTRES,Constraints")[job["job_id"]]
    assert expect in (alloc if request_style == "gres" else constraints), (alloc, constraints)


def test_preemption_signal_checkpoint_requeue_resume(tmp_path):
    """SLURM's warning signal (what it sends before a time limit or a preemption, submitit's SIGUSR2) in the
    middle of training: the job checkpoints at the step boundary, is requeued, resumes from the checkpoint
    and ends with exactly the adapter of an uninterrupted run."""
    long_run = ["train.max_steps=60", "train.save_steps=10000", "train.logging_steps=10", "eval.num_examples=4"]
    job, run_dir, rec = _signal_mid_training([*JOB, *long_run], tmp_path / "slurm")
    assert rec["status"] == "complete"
    assert int(rec["env"]["slurm"].get("SLURM_RESTART_COUNT", 0)) >= 1, "the job was never requeued"
    assert rec["train"]["resumed_from"], "the requeued job did not resume from its checkpoint"
    assert "checkpoint saved at step" in _stdout_of(job)

    ref_dir = train_eval_in_process(tmp_path / "ref", "experiment=smoke", "profile.cpus=1", *long_run)
    assert ref_dir.name == run_dir.name  # same configuration, same run id
    a = load_file(ref_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert all((a[k] == b[k]).all() for k in a), "requeued job's adapter differs from the uninterrupted run's"


def _signal_mid_training(overrides: list[str], out: Path) -> tuple[dict, Path, dict]:
    """A one-job SLURM sweep that gets SLURM's warning signal (submitit's SIGUSR2) once it is training; returns the
    job, its run directory and its final record after the sweep has ended successfully."""
    sweep = subprocess.Popen([sys.executable, "-m", "medsweep", "-m", *overrides, f"output_root={out}"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    job = None
    while time.time() < deadline:  # wait until the job is training, then send the signal
        jobs_file = out / "sweeps" / "sweep" / "sweep_jobs.json"
        if job is None and jobs_file.is_file():
            (job,) = json.loads(jobs_file.read_text())
        log = Path(job["run_dir"]) / "medsweep.log" if job else None
        if log and log.is_file() and "training: step" in log.read_text() + _stdout_of(job):  # medsweep.progress
            break
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR2", job["job_id"]], check=True, timeout=30)
    stdout, stderr = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, stdout[-2000:] + stderr[-3000:]
    run_dir = Path(job["run_dir"])
    return job, run_dir, json.loads((run_dir / "metrics.json").read_text())


def _stdout_of(job: dict) -> str:
    """The SLURM job's stdout (submitit writes <sweep>/.submitit/<id>/<id>_0_log.out)."""
    logs = list((Path(job["run_dir"]).parent / ".submitit").glob(f"{job['job_id']}*/*_log.out"))
    return "".join(p.read_text(errors="replace") for p in logs)


# fp32: on a CPU with native bf16, precision=auto picks bf16, whose sums differ with the number of processes
DATA_PARALLEL = ["profile.processes=2", "profile.cpus=2", "profile.memory_gb=6", "lora.dropout=0",
                 "profile.precision=fp32"]


def _single_process_reference(tmp_path: Path, *overrides: str) -> Path:
    """The same configuration trained by one process (a plain run: the same global batches)."""
    return train_eval_in_process(tmp_path / "ref", "experiment=smoke", "profile.cpus=2", "lora.dropout=0",
                                 "profile.precision=fp32", *overrides)


def test_data_parallel_job_runs_two_tasks_on_one_node(tmp_path):
    proc = run_medsweep(*JOB, *DATA_PARALLEL, f"output_root={tmp_path}", multirun=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (job,) = jobs_of(tmp_path / "sweeps" / "sweep")
    run_dir = Path(job["run_dir"])
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "complete" and rec["hardware"]["world_size"] == 2
    assert rec["env"]["slurm"]["SLURM_JOB_ID"]
    tasks = subprocess.run(["sacct", "-n", "-P", "-j", job["job_id"], "-o", "JobID,NTasks,State"],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    assert any(line.split("|")[1] == "2" and line.split("|")[2] == "COMPLETED" for line in tasks.splitlines()), tasks
    assert [p.parent for p in (tmp_path / "sweeps").rglob("metrics.json")] == [run_dir]
    assert_same_trained_adapter(run_dir, _single_process_reference(tmp_path))


def test_preempted_data_parallel_job_resumes_to_the_same_adapter(tmp_path):
    long_run = ["train.max_steps=40", "train.save_steps=10000", "train.logging_steps=5", "eval.num_examples=4"]
    job, run_dir, rec = _signal_mid_training([*JOB, *DATA_PARALLEL, *long_run], tmp_path / "slurm")
    assert rec["status"] == "complete" and rec["hardware"]["world_size"] == 2
    assert int(rec["env"]["slurm"].get("SLURM_RESTART_COUNT", 0)) >= 1, "the job was never requeued"
    assert rec["train"]["resumed_from"], "the requeued job did not resume from its checkpoint"
    ckpt = Path(rec["train"]["resumed_from"])
    assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert_same_trained_adapter(run_dir, _single_process_reference(tmp_path, *long_run))


# --- detached sweeps: submit and leave --------------------------------------------------------------------------------

def status_of(sweep_dir: Path) -> list[dict]:
    """`medsweep-status <sweep> --json`, as a script would read it."""
    proc = subprocess.run([sys.executable, "-m", "medsweep.status", str(sweep_dir), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)["jobs"]


def _own_experiments(root: Path) -> str:
    """A search path with two experiments of its own: `short` (the smoke run) and `long` (100,000 steps under a
    one-minute time limit: SLURM's time-limit signal arrives while it trains, and with max_num_timeout=0 there is
    no requeue left)."""
    smoke = (ROOT / "conf" / "experiment" / "smoke.yaml").read_text()
    (root / "experiment").mkdir(parents=True)
    (root / "experiment" / "short.yaml").write_text(smoke)
    (root / "experiment" / "long.yaml").write_text(smoke.replace("max_steps: 6 ", "max_steps: 100000 ")
                                                   + "profile:\n  time_limit_min: 1\n")
    return f"hydra.searchpath=[file://{root}]"


def _wait_for(what, timeout: float = 600, every: float = 2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what.__doc__ or what}")


def test_a_detached_sweep_returns_at_once_and_its_report_job_records_slurms_verdicts(tmp_path):
    overrides = [*DETACHED, _own_experiments(tmp_path / "conf"), "experiment=short,long", "train.seed=0,1",
                 "hydra.launcher.max_num_timeout=0", "hydra.launcher.signal_delay_s=30", f"output_root={tmp_path}"]
    proc = run_medsweep(*overrides, multirun=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    sweep_dir = tmp_path / "sweeps" / "sweep"
    report_job = re.search(r"report job (\d+) starts when they have ended", proc.stdout).group(1)
    assert f"follow:  medsweep-status {sweep_dir} --watch" in proc.stdout
    jobs = jobs_of(sweep_dir)
    assert [j["outcome"] for j in jobs] == ["submitted"] * 4
    assert len({j["job_id"].split("_")[0] for j in jobs}) == 2  # short and long differ in time limit: two arrays
    seen = [{r["idx"]: r["state"] for r in status_of(sweep_dir)}]
    assert "COMPLETED" not in seen[0].values(), seen  # the command returned before any job finished
    assert not (sweep_dir / "report").exists()

    def long_seed_1_runs():
        seen.append({r["idx"]: r["state"] for r in status_of(sweep_dir)})
        return seen[-1][3] == "RUNNING"
    _wait_for(long_seed_1_runs)
    subprocess.run(["scancel", jobs[3]["job_id"]], check=True, timeout=30)

    def report_job_ended():
        (state,) = sacct([report_job]).get(report_job, ["PENDING"])
        return state if state not in ("PENDING", "RUNNING") else None
    assert _wait_for(report_job_ended, every=5) == "COMPLETED"
    final = status_of(sweep_dir)
    assert [(r["state"], r["record"]) for r in final] == [
        ("COMPLETED", "complete"), ("COMPLETED", "complete"), ("FAILED", "failed"), ("CANCELLED", "failed")]
    assert {"PENDING", "RUNNING"} & {s for states in seen for s in states.values()}  # states followed as they changed
    timed_out, cancelled = (json.loads((Path(row["run_dir"]) / "metrics.json").read_text()) for row in final[2:])
    # the time-limit signal either reached the job's own handler (which, with no requeue left, fails the run and
    # writes its record) or came before it was installed (the job died without a record: SLURM's verdict)
    assert timed_out["status"] == "failed" and (
        timed_out["error"].startswith(f"SLURM FAILED: job {jobs[2]['job_id']}")
        or "Job not requeued because: timed-out too many times" in timed_out["error"]), timed_out
    assert cancelled["status"] == "failed"
    assert cancelled["error"].startswith(f"SLURM CANCELLED: job {jobs[3]['job_id']}")
    assert cancelled["axes"]["train.seed"] == 1 and cancelled["slurm"]["state"] == "CANCELLED"
    report = (sweep_dir / "report" / "report.md").read_text()
    assert timed_out["error"] in report and cancelled["error"] in report

    # the same command again submits only what failed: jobs 2 and 3 (cancelled at once: they would time out again)
    again = run_medsweep(*overrides, multirun=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 jobs: 2 to run, 2 complete (skipped)" in again.stdout
    new = jobs_of(sweep_dir)
    subprocess.run(["scancel", new[2]["job_id"].split("_")[0],
                    re.search(r"report job (\d+)", again.stdout).group(1)], check=True, timeout=30)
    assert [j["outcome"] for j in new] == ["skipped", "skipped", "submitted", "submitted"]
    assert [j["job_id"] for j in new[:2]] == [j["job_id"] for j in jobs[:2]]  # the jobs that completed them
    assert new[2]["job_id"] not in (jobs[2]["job_id"], jobs[3]["job_id"]) and new[:2] != jobs[:2]


def test_a_sweep_larger_than_max_array_size_goes_as_several_arrays(tmp_path):
    """The test cluster's MaxArraySize is 4 (scripts/slurm/slurm.conf.in): 10 jobs go as arrays of 4, 4 and 2."""
    proc = run_medsweep(*DETACHED, "train.seed=range(0,10)", f"output_root={tmp_path}", multirun=True)
    jobs = jobs_of(tmp_path / "sweeps" / "sweep")
    masters = [j["job_id"].split("_")[0] for j in jobs]
    report_job = re.search(r"report job (\d+)", proc.stdout)
    subprocess.run(["scancel", *set(masters), *([report_job.group(1)] if report_job else [])], timeout=30)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [masters.count(m) for m in dict.fromkeys(masters)] == [4, 4, 2]
    assert [j["job_id"].split("_")[1] for j in jobs] == ["0", "1", "2", "3"] * 2 + ["0", "1"]
    assert f"afterany:{':'.join(dict.fromkeys(masters))}" in (
        tmp_path / "sweeps" / "sweep" / ".submitit" / report_job.group(1) / f"{report_job.group(1)}_submission.sh"
    ).read_text()
