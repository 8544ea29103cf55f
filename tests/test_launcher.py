"""The sweep launcher in-process: the resources each job asks submitit for, the plan table, grouping into arrays,
local GPU waves, skip-if-complete, refusal before submission, and failures. Hydra's multirun runs here in the test
process with submitit's AutoExecutor replaced by a recorder: what the launcher would submit is checked, nothing is
submitted, no SLURM is needed. Also the plan of the published grid (5 models x 9 VM profiles: what is refused for
its fit, and each job's layout), and two sweeps end to end through the console script (a refused job stops the
sweep; a failing local job fails it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from medsweep import launcher, record, submit
from medsweep.packjob import PackJob
from medsweep.sweep import JOBS_FILE
from tests.conftest import CONF_DIR, SECRET_ENV, assert_no_secret, run_medsweep

SLURM_DEFAULTS = {"nodes": 1, "slurm_array_parallelism": 64}


def multirun(*overrides: str):
    """`medsweep -m <overrides>` in this process (Hydra's multirun: sweeper, launcher, end-of-multirun callback)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medsweep.run import config_schema  # noqa: F401  registers schemas and resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return GlobalHydra.instance().hydra.multirun("config", task_function=lambda cfg: None,
                                                     overrides=list(overrides), with_log_configuration=False)


class Handle:
    def __init__(self, log, job_id, fail=None):
        self.job_id, self.log, self.fail = job_id, log, fail

    state = "RUNNING"

    def done(self):  # the wait's poll: a fake job has ended once it is asked
        return True

    def results(self):
        self.log.append(("results", self.job_id))
        if self.fail:
            raise RuntimeError(f"Job {self.job_id} failed\nTraceback (most recent call last):\n  ...\n{self.fail}\n")
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=self.job_id)]


@pytest.fixture
def executors(monkeypatch):
    """Replace submitit.AutoExecutor; returns the list of executors created, each with its calls."""
    import submitit

    made, counter = [], iter(range(1000, 2000))
    failing: dict[int, str] = {}  # sweep job index -> error line its task raises

    class FakeExecutor:
        def __init__(self, folder, cluster=None, **kwargs):
            self.folder, self.cluster, self.init = folder, cluster, kwargs
            self.params: dict = {}
            self.calls: list = []
            self.log = made_log
            made.append(self)

        def update_parameters(self, **kwargs):
            self.params.update(kwargs)
            self.calls.append(("update", kwargs))

        def submit(self, fn, *args):
            if fn is submit.report_job:  # a detached sweep's report job
                handle = Handle(self.log, str(next(counter)))
                self.calls.append(("report", args, dict(self.params)))
                return handle
            if isinstance(fn, PackJob):  # a pack: one job whose one argument is each member's Hydra job arguments
                assert isinstance(fn.launcher, launcher.SweepLauncherMixin)
                (members,) = args
                idxs = [m[2] for m in members]
                self.calls.append(("submit_pack", idxs, dict(self.params)))
                self.log.append(("submit_pack", idxs, self.params.get("local_setup")))
                return Handle(self.log, str(next(counter)), next(filter(None, map(failing.get, idxs)), None))
            assert isinstance(fn, launcher.SweepLauncherMixin)  # the job runs the launcher's __call__ (Hydra's job)
            handle = Handle(self.log, str(next(counter)), failing.get(args[2]))
            self.calls.append(("submit", args[2], dict(self.params)))
            self.log.append(("submit", args[2], self.params.get("local_setup")))
            return handle

        def map_array(self, fn, *arrays):
            if isinstance(fn, PackJob):  # an array of packs: one task per pack
                assert isinstance(fn.launcher, launcher.SweepLauncherMixin)
                (packs,) = arrays
                idxs = [[m[2] for m in members] for members in packs]
                assert all(m[1] == "hydra.sweep.dir" and m[3] == f"job_id_for_{m[2]}" for ms in packs for m in ms)
                self.calls.append(("map_array_packs", idxs, [[list(m[0]) for m in ms] for ms in packs],
                                   dict(self.params)))
                self.log.append(("map_array_packs", idxs))
                return [Handle(self.log, str(next(counter))) for _ in packs]
            assert isinstance(fn, launcher.SweepLauncherMixin)
            overrides, keys, idxs, names, states = arrays
            assert all(k == "hydra.sweep.dir" for k in keys) and list(names) == [f"job_id_for_{i}" for i in idxs]
            self.calls.append(("map_array", list(idxs), [list(o) for o in overrides], dict(self.params)))
            self.log.append(("map_array", list(idxs)))
            return [Handle(self.log, str(next(counter)), failing.get(i)) for i in idxs]

    made_log: list = []
    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    # the cluster's limits (tests of the split set site.max_array_size / max_submit_jobs)
    monkeypatch.setattr(launcher, "cluster_limits", lambda site: (site.max_array_size, site.max_submit_jobs))
    FakeExecutor.made, FakeExecutor.log, FakeExecutor.failing = made, made_log, failing
    return FakeExecutor


def jobs_file(root: Path, sweep: str = "sweep") -> list[dict]:
    return json.loads((root / "sweeps" / sweep / JOBS_FILE).read_text())


def pack_column(out: str) -> list[str]:
    """The plan table's pack column: its header, then one cell per job."""
    return [line.split("|")[4].strip() for line in out.splitlines() if line.startswith("|   ")]


def flushes(monkeypatch) -> list:
    """The flush= argument of each of the launcher's prints, from now on (the lines are still printed)."""
    seen: list = []
    monkeypatch.setattr(launcher, "print", lambda *a, **kw: seen.append(kw.get("flush")) or print(*a, **kw),
                        raising=False)
    return seen


# --- resources(): what each job asks for -------------------------------------------------------------------------

def test_slurm_resources_of_a_v100_profile_with_default_site(compose):
    cfg = compose(["profile=1cpu_1v100"])
    assert launcher.resources(cfg, "slurm") == {
        "timeout_min": 240, "cpus_per_task": 1, "mem_gb": 16, "nodes": 1, "tasks_per_node": 1,
        "slurm_gres": "gpu:v100:1", "slurm_array_parallelism": 64}


def test_slurm_resources_carry_every_site_setting(compose):
    cfg = compose(["profile=4cpu_2a100", "site.partition=gpu", "site.account=mylab", "site.qos=high",
                   "site.setup=[module load cuda/12.4,source .venv/bin/activate]",
                   "+site.additional_parameters.mail-type=END", "site.max_parallel=8", "profile.constraint=ib",
                   "profile.time_limit_min=90", "profile.memory_gb=48"])
    assert launcher.resources(cfg, "slurm", 2) == {
        "timeout_min": 90, "cpus_per_task": 2, "mem_gb": 48, "nodes": 1, "tasks_per_node": 2,
        "slurm_partition": "gpu", "slurm_account": "mylab", "slurm_qos": "high", "slurm_constraint": "ib",
        "slurm_gres": "gpu:a100:2", "slurm_setup": ["module load cuda/12.4", "source .venv/bin/activate"],
        "slurm_additional_parameters": {"mail-type": "END"}, "slurm_array_parallelism": 8,
        "slurm_srun_args": ["--kill-on-bad-exit=1"]}


def test_the_site_partition_wins_over_the_profiles(compose):
    assert launcher.resources(compose(["profile=1cpu_1a100", "profile.partition=short"]),
                              "slurm")["slurm_partition"] == "short"
    assert launcher.resources(compose(["profile=1cpu_1a100", "profile.partition=short", "site.partition=long"]),
                              "slurm")["slurm_partition"] == "long"


def test_constraint_style_gpu_request(compose):
    cfg = compose(["profile=4cpu_2rtx8000", "site.gpu_request=constraint", "profile.constraint=ib"])
    assert launcher.resources(cfg, "slurm", 1) == {
        "timeout_min": 240, "cpus_per_task": 4, "mem_gb": 64, "tasks_per_node": 1, "gpus_per_node": 2,
        "slurm_constraint": "rtx8000&ib", **SLURM_DEFAULTS}
    only_type = compose(["profile=1cpu_1v100", "site.gpu_request=constraint"])
    assert launcher.resources(only_type, "slurm")["slurm_constraint"] == "v100"


def test_a_gpu_without_a_type_asks_for_gpus_and_no_constraint(compose):
    # local_gpu has no gpu_type: no gres type to name, so --gpus-per-node, and no empty --constraint= line
    res = launcher.resources(compose(["profile=local_gpu"]), "slurm")
    assert res == {"timeout_min": 240, "cpus_per_task": 4, "mem_gb": 32, "tasks_per_node": 1, "gpus_per_node": 1,
                   **SLURM_DEFAULTS}


def test_a_cpu_profile_on_slurm_asks_for_no_gpu(compose):
    assert launcher.resources(compose(["profile=local_cpu"]), "slurm") == {
        "timeout_min": 60, "cpus_per_task": 2, "mem_gb": 16, "tasks_per_node": 1, **SLURM_DEFAULTS}


def test_data_parallel_processes_share_the_cpus(compose):
    cfg = compose(["profile=local_cpu", "profile.processes=2", "profile.cpus=5"])
    assert launcher.resources(cfg, "slurm", 2)["cpus_per_task"] == 2  # 5 cores over 2 tasks: 2 each
    assert launcher.resources(cfg, "slurm", 2)["tasks_per_node"] == 2
    few = compose(["profile=local_cpu", "profile.processes=4", "profile.cpus=2"])
    assert launcher.resources(few, "local", 4)["cpus_per_task"] == 1  # never 0


def test_local_resources(compose):
    assert launcher.resources(compose(["profile=4cpu_2a100", "site.partition=gpu"]), "local", 2) == {
        "timeout_min": 240, "cpus_per_task": 2, "mem_gb": 64, "nodes": 1, "tasks_per_node": 2, "gpus_per_node": 2}
    assert launcher.resources(compose(["profile=local_cpu"]), "local") == {
        "timeout_min": 60, "cpus_per_task": 2, "mem_gb": 16, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0}


# --- the launch, in-process ----------------------------------------------------------------------------------------

def test_slurm_sweep_submits_one_array_per_resource_group(tmp_path, executors, capsys, caplog, monkeypatch):
    printed = []
    monkeypatch.setattr(launcher, "print", lambda *a, **kw: printed.append(kw) or print(*a, **kw), raising=False)
    with caplog.at_level(logging.INFO, logger="medsweep.launcher"):
        multirun("hydra/launcher=slurm", "detach=false", "experiment=smoke", "profile.cpus=1,2", "lora.r=4,8",
                 f"output_root={tmp_path}", "site.account=mylab")
    assert printed == [{"flush": True}]  # the plan table is out before the wait for the jobs begins
    assert [r.getMessage() for r in caplog.records if r.name == "medsweep.launcher"] == [
        f"#0 submitted as 1000: experiment=smoke profile.cpus=1 lora.r=4 output_root={tmp_path} site.account=mylab",
        f"#1 submitted as 1001: experiment=smoke profile.cpus=1 lora.r=8 output_root={tmp_path} site.account=mylab",
        f"#2 submitted as 1002: experiment=smoke profile.cpus=2 lora.r=4 output_root={tmp_path} site.account=mylab",
        f"#3 submitted as 1003: experiment=smoke profile.cpus=2 lora.r=8 output_root={tmp_path} site.account=mylab"]
    ex = executors.made
    assert len(ex) == 2  # cpus=1 and cpus=2 differ: two arrays of two jobs
    for e, cpus in zip(ex, (1, 2), strict=True):
        assert e.cluster == "slurm" and e.folder == str(tmp_path / "sweeps" / "sweep" / ".submitit" / "%j")
        assert e.init == {"slurm_max_num_timeout": 5}
        assert e.calls[0] == ("update", {"timeout_min": 60, "cpus_per_task": cpus, "mem_gb": 16, "nodes": 1,
                                         "tasks_per_node": 1, "slurm_account": "mylab",
                                         "slurm_array_parallelism": 64, "name": "medsweep",
                                         "slurm_signal_delay_s": 120})
    # Hydra's order: profile.cpus varies slowest; each array gets its jobs' own overrides
    assert [c[1] for e in ex for c in e.calls if c[0] == "map_array"] == [[0, 1], [2, 3]]
    assert ex[0].calls[1][2] == [["detach=False", "experiment=smoke", "profile.cpus=1", "lora.r=4",
                                  f"output_root={tmp_path}", "site.account=mylab"],
                                 ["detach=False", "experiment=smoke", "profile.cpus=1", "lora.r=8",
                                  f"output_root={tmp_path}", "site.account=mylab"]]
    jobs = jobs_file(tmp_path)
    assert [(j["idx"], j["status"], j["outcome"], j["job_id"]) for j in jobs] == [
        (0, "submit", "completed", "1000"), (1, "submit", "completed", "1001"),
        (2, "submit", "completed", "1002"), (3, "submit", "completed", "1003")]
    assert [Path(j["run_dir"]).name for j in jobs] == [
        "tiny_random_sample_r4_a16_d0.05_L128_s0_local_cpu-" + jobs[0]["run_dir"][-8:],
        "tiny_random_sample_r8_a16_d0.05_L128_s0_local_cpu-" + jobs[1]["run_dir"][-8:],
        "tiny_random_sample_r4_a16_d0.05_L128_s0_local_cpu-" + jobs[2]["run_dir"][-8:],
        "tiny_random_sample_r8_a16_d0.05_L128_s0_local_cpu-" + jobs[3]["run_dir"][-8:]]
    assert len({j["run_dir"] for j in jobs}) == 4 and all(Path(j["run_dir"]).parent == tmp_path / "sweeps" / "sweep"
                                                          for j in jobs)
    assert jobs[0]["resources"]["cpus_per_task"] == 1 and jobs[3]["resources"]["cpus_per_task"] == 2
    assert [(j["axes"]["lora.r"], j["axes"]["model"]) for j in jobs] == [(4, "tiny_random"), (8, "tiny_random")] * 2
    assert [j["mode"] for j in jobs] == ["cpu"] * 4 and [j["processes"] for j in jobs] == [1] * 4
    assert "4 jobs: 4 to run, 0 complete (skipped), 0 refused (do not fit), 0 invalid" in capsys.readouterr().out


def test_plan_submits_nothing_and_prints_every_job(tmp_path, executors, capsys):
    multirun("hydra/launcher=slurm", "model=distilgpt2,llama3_8b", "profile=1cpu_1a100,4cpu_2v100",
             f"output_root={tmp_path}", "plan=true")
    out = capsys.readouterr().out
    assert executors.made == [] and not (tmp_path / "sweeps" / "sweep" / JOBS_FILE).exists()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("|  ")]
    header = [c.strip() for c in next(line for line in out.splitlines() if line.startswith("|   #")).split("|")[1:-1]]
    assert header == ["#", "overrides", "status", "cpus", "gpus", "time_min", "mode", "need/have GiB", "est_gpu_h",
                      "run_dir", "reason"]
    table = {r[1]: r for r in rows}
    split = table[f"model=llama3_8b profile=4cpu_2v100 output_root={tmp_path}"]
    # 20.605 GiB per fp16 Llama-3-8B replica + 1.5 on the second GPU; 2 x 0.20831 GPU-hours (see test_fit)
    assert split[2:10] == ["submit", "4", "gpu:v100:2", "240", "model_split", "22.1/30.4", "0.42",
                           split[9]] and split[9].startswith("llama3_8b_sample_r8_a16_d0.05_L512_s0_4cpu_2v100-")
    dp = table[f"model=distilgpt2 profile=4cpu_2v100 output_root={tmp_path}"]
    assert dp[2:7] == ["submit", "2", "gpu:v100:2", "240", "data_parallel x2"]
    a100 = table[f"model=llama3_8b profile=1cpu_1a100 output_root={tmp_path}"]
    # 6 x 8.03e9 x 1900 x 307.2 tokens at 312 TFLOPs x 0.3: 0.0835 h
    assert a100[2:9] == ["submit", "1", "gpu:a100:1", "240", "single", "20.6/76.0", "0.08"]
    # distilgpt2 (0.082B): 6 x 0.082e9 x 583,680 FLOPs / 9.36e13 / 3600 = 0.00085 h on an A100, / 3.75e13 = 0.00213 h
    # on the V100s (data parallel: one GPU's hours); in all 0.08346 + 0.41662 + 0.00085 + 0.00213 = 0.50306 h
    assert "4 jobs: 4 to run, 0 complete (skipped), 0 refused (do not fit), 0 invalid; estimated 0.50 GPU-hours " \
           "to run" in out


def test_a_refused_job_stops_the_sweep_before_anything_is_submitted(tmp_path, executors, capsys):
    with pytest.raises(SystemExit) as exit_:
        multirun("hydra/launcher=slurm", "model=distilgpt2,llama3_8b", "profile=1cpu_1v100", f"output_root={tmp_path}")
    assert exit_.value.code == 2 and executors.made == []
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "medsweep: error: 1 job(s) refused before submission, nothing submitted: #1 does not fit: llama3_8b (8.03B, "
        "fp16) on 1cpu_1v100 (1 GPU): needs 20.6 GiB")
    assert "1 refused (do not fit)" in captured.out
    assert not (tmp_path / "sweeps" / "sweep" / JOBS_FILE).exists()


def test_an_invalid_value_is_refused_and_named(tmp_path, executors, capsys):
    with pytest.raises(SystemExit) as exit_:
        multirun("experiment=smoke", "train.eval_split=8,0", f"output_root={tmp_path}")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and executors.made == []
    assert "1 job(s) refused before submission, nothing submitted: #1 train.eval_split=0 is invalid: must be > 0" \
        in err
    # an invalid job first: the jobs after it are still planned and checked
    with pytest.raises(SystemExit):
        multirun("experiment=smoke", "train.eval_split=0,8,-1", f"output_root={tmp_path}")
    out, err = capsys.readouterr()
    assert "2 job(s) refused before submission, nothing submitted: #0 train.eval_split=0 is invalid: must be > 0; " \
           "#2 train.eval_split=-1 is invalid: must be > 0" in err and "3 jobs: 1 to run" in out


def test_a_complete_job_is_skipped_and_the_others_run(tmp_path, executors, capsys):
    multirun("experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}", "plan=true")
    capsys.readouterr()
    first = run_dir_of(tmp_path, "lora.r=4")
    record.atomic_write_json(first / "metrics.json", {"status": "complete"})
    running = run_dir_of(tmp_path, "lora.r=8")
    record.atomic_write_json(running / "metrics.json", {"status": "running"})  # interrupted: resumed, not skipped
    multirun("experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}")
    out = capsys.readouterr().out
    assert "2 jobs: 1 to run, 1 complete (skipped), 0 refused" in out
    (ex,) = executors.made
    assert [c[1] for c in ex.calls if c[0] == "map_array"] == [[1]]
    jobs = jobs_file(tmp_path)
    assert [(j["status"], j["outcome"], j["reason"], j["job_id"]) for j in jobs] == [
        ("complete", "skipped", "record complete: skipped", ""), ("submit", "completed", "", "1000")]


def run_dir_of(root: Path, override: str) -> Path:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", override, f"output_root={root}"],
                      return_hydra_config=True)
    return Path(str(cfg.hydra.sweep.dir)) / record.run_id(cfg)


def test_failed_jobs_are_named_and_the_others_finish(tmp_path, executors, capsys, caplog):
    executors.failing[1] = "FileNotFoundError: missing.jsonl not found"
    with pytest.raises(SystemExit) as exit_, caplog.at_level(logging.ERROR, logger="medsweep.launcher"):
        multirun("hydra/launcher=slurm", "detach=false", "experiment=smoke", "lora.r=4,8,16",
                 f"output_root={tmp_path}", "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=2")
    assert [r.getMessage() for r in caplog.records if r.name == "medsweep.launcher"] == [
        "#1 failed (job 1001): RuntimeError: FileNotFoundError: missing.jsonl not found"]
    (ex,) = executors.made
    assert ex.init == {"slurm_max_num_timeout": 2} and ex.params["slurm_signal_delay_s"] == 30
    captured = capsys.readouterr()
    assert exit_.value.code == 1
    assert captured.err.splitlines()[-1] == (
        f"medsweep: error: 1 of 3 job(s) failed: #1 (experiment=smoke lora.r=8 output_root={tmp_path}): "
        "RuntimeError: FileNotFoundError: missing.jsonl not found")
    jobs = jobs_file(tmp_path)
    assert [(j["outcome"], j["error"]) for j in jobs] == [
        ("completed", ""), ("failed", "RuntimeError: FileNotFoundError: missing.jsonl not found"), ("completed", "")]
    # every job was waited for, the failed one in the middle included
    assert [e[1] for e in executors.log if e[0] == "results"] == ["1000", "1001", "1002"]
    assert "  #1   failed     record=missing   experiment=smoke lora.r=8" in captured.out


def test_a_packed_slurm_sweep_submits_an_array_of_packs_and_its_members_share_a_job(tmp_path, executors, caplog):
    with caplog.at_level(logging.INFO, logger="medsweep.launcher"):
        multirun("hydra/launcher=slurm", "detach=false", "experiment=smoke", "lora.r=4,8,16,32,64", "pack=2",
                 f"output_root={tmp_path}")
    (ex,) = executors.made  # one resource group
    # the packs (#0, #1) and (#2, #3) are the two tasks of an array of packs; #4, alone, goes as an ordinary array
    # task first
    assert [c[:2] for c in ex.calls if c[0].startswith("map_array")] == [("map_array", [4]),
                                                                          ("map_array_packs", [[0, 1], [2, 3]])]
    (packs,) = [c[2] for c in ex.calls if c[0] == "map_array_packs"]
    assert packs == [[["detach=False", "experiment=smoke", f"lora.r={r}", "pack=2", f"output_root={tmp_path}"]
                      for r in pair] for pair in ((4, 8), (16, 32))]
    jobs = jobs_file(tmp_path)
    assert [(j["idx"], j["job_id"], j["outcome"]) for j in jobs] == [
        (0, "1001", "completed"), (1, "1001", "completed"), (2, "1002", "completed"), (3, "1002", "completed"),
        (4, "1000", "completed")]
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "medsweep.launcher"] == [
        "#4 submitted as 1000", "#0 submitted as 1001", "#1 submitted as 1001", "#2 submitted as 1002",
        "#3 submitted as 1002"]


def test_pack_auto_takes_each_jobs_pack_size_from_the_memory_estimate(tmp_path, executors, monkeypatch, capsys):
    from medsweep import fit

    sized = []
    monkeypatch.setattr(fit, "pack_size", lambda run: sized.append(run.lora.r) or 2)
    multirun("hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8,16", "pack=auto", f"output_root={tmp_path}",
             "plan=true")
    assert sized == [4, 8, 16]  # each job's own config
    packs = pack_column(capsys.readouterr().out)
    assert packs == ["pack", "#0+#1", "#0+#1", ""]  # the header, then one row per job


def test_a_plans_overrides_column_shows_what_each_job_runs_not_how_the_sweep_runs(tmp_path, executors, capsys):
    # plan=, detach= and pack= say how the sweep is launched, not what a job computes: a row's overrides leave them out
    multirun("hydra/launcher=slurm", "detach=true", "experiment=smoke", "lora.r=4,8", "pack=2",
             f"output_root={tmp_path}", "plan=true")
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if "| submit " in line]
    assert [row[2].strip() for row in rows] == [f"experiment=smoke lora.r={r} output_root={tmp_path}" for r in (4, 8)]


def test_jobs_that_ask_for_different_resources_never_share_a_pack(tmp_path, executors, capsys):
    # the time limit is not part of what a run is (not in its id), but a pack is one job with one time limit
    multirun("hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8", "profile.time_limit_min=60,120", "pack=2",
             f"output_root={tmp_path}", "plan=true")
    packs = pack_column(capsys.readouterr().out)
    assert packs == ["pack", "#0+#2", "#1+#3", "#0+#2", "#1+#3"]


def test_a_plan_logs_how_many_job_configs_hydra_composed_and_how_many_were_typed_from_a_structure(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="medsweep.launcher"):
        multirun("hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8,16", "lora.alpha=8,16",
                 f"output_root={tmp_path}", "plan=true")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan: ")]
    # Hydra composes the sweep's structure and the first job (the check that the typed path gives Hydra's config);
    # the other 5 jobs are typed from the structure
    assert line == "plan: 6 job configs, 2 composed by Hydra, 5 typed from their structure's"


def test_a_pack_member_that_diverged_fails_alone_and_fails_the_sweep(tmp_path, executors, capsys, caplog,
                                                                      monkeypatch):
    from medsweep.runrecord import RunRecord

    # the pack's job (#0-#2) ended well, but the records of its lora.r=8 and lora.r=16 runs say they diverged (the
    # second with no error line); #3 ran alone and ended well, so a failed record of it is not the job's outcome
    records = {"_r8_": RunRecord(status="failed", error="TrainingDiverged: loss nan"),
               "_r16_": RunRecord(status="failed"), "_r32_": RunRecord(status="failed", error="an older attempt")}
    read = launcher.RunRecord.load
    monkeypatch.setattr(launcher.RunRecord, "load", classmethod(
        lambda cls, d: next((r for k, r in records.items() if k in str(d)), None) or read(d)))
    with pytest.raises(SystemExit) as exit_, caplog.at_level(logging.ERROR, logger="medsweep.launcher"):
        multirun("hydra/launcher=slurm", "detach=false", "experiment=smoke", "lora.r=4,8,16,32", "pack=3",
                 f"output_root={tmp_path}")
    assert exit_.value.code == 1
    assert [r.getMessage() for r in caplog.records if r.name == "medsweep.launcher"] == [
        "#1 failed (pack job 1001): TrainingDiverged: loss nan", "#2 failed (pack job 1001): failed"]
    assert [(j["job_id"], j["outcome"], j["error"]) for j in jobs_file(tmp_path)] == [
        ("1001", "completed", ""), ("1001", "failed", "TrainingDiverged: loss nan"), ("1001", "failed", "failed"),
        ("1000", "completed", "")]
    assert capsys.readouterr().err.splitlines()[-1].startswith("medsweep: error: 2 of 4 job(s) failed: #1 (")


def test_local_packs_are_one_process_on_one_gpu_each_beside_a_solo_job(tmp_path, executors, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    multirun(*LOCAL_GPU, "lora.r=4,8,16,32,64", "pack=2", f"output_root={tmp_path}")
    assert executors.log == [  # three GPUs: the packs (#0, #1) and (#2, #3) on GPUs 3 and 5, #4 on GPU 7, one wave
        ("submit_pack", [0, 1], ["export CUDA_VISIBLE_DEVICES=3"]),
        ("submit_pack", [2, 3], ["export CUDA_VISIBLE_DEVICES=5"]), ("submit", 4, ["export CUDA_VISIBLE_DEVICES=7"]),
        ("results", "1000"), ("results", "1000"), ("results", "1001"), ("results", "1001"),  # each member from its
        ("results", "1002")]                                                                # pack's job
    assert [(j["job_id"], j["outcome"]) for j in jobs_file(tmp_path)] == [
        ("1000", "completed"), ("1000", "completed"), ("1001", "completed"), ("1001", "completed"),
        ("1002", "completed")]


# --- local launches: GPUs and waves ------------------------------------------------------------------------------

LOCAL_GPU = ["experiment=smoke", "profile=local_gpu", "profile.device=cpu", "profile.precision=fp32",
             "site.max_parallel=4"]


def test_local_jobs_get_disjoint_visible_gpus_in_waves(tmp_path, executors, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    (returns,) = multirun(*LOCAL_GPU, "lora.r=4,8,16", f"output_root={tmp_path}")
    assert [r.return_value for r in returns] == ["1000", "1001", "1002"]  # every wave's results reach Hydra
    (ex,) = executors.made
    assert ex.cluster == "local" and ex.init == {}
    assert ex.calls[0] == ("update", {"timeout_min": 240, "cpus_per_task": 4, "mem_gb": 32, "nodes": 1,
                                      "tasks_per_node": 1, "gpus_per_node": 1, "name": "medsweep"})
    # two GPUs: jobs 0 and 1 together on GPUs 3 and 5; job 2 only after both finished, on GPU 3
    assert executors.log == [
        ("submit", 0, ["export CUDA_VISIBLE_DEVICES=3"]), ("submit", 1, ["export CUDA_VISIBLE_DEVICES=5"]),
        ("results", "1000"), ("results", "1001"),
        ("submit", 2, ["export CUDA_VISIBLE_DEVICES=3"]), ("results", "1002")]
    assert [j["outcome"] for j in jobs_file(tmp_path)] == ["completed"] * 3


def test_local_waves_follow_max_parallel_and_gpus_per_job(tmp_path, executors, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    multirun(*LOCAL_GPU, "profile.gpus=2", "profile.parallel=model", "lora.r=4,8,16", f"output_root={tmp_path}")
    assert executors.log == [  # 5 GPUs, 2 per job: 2 jobs at once, GPUs 0,1 and 2,3
        ("submit", 0, ["export CUDA_VISIBLE_DEVICES=0,1"]), ("submit", 1, ["export CUDA_VISIBLE_DEVICES=2,3"]),
        ("results", "1000"), ("results", "1001"),
        ("submit", 2, ["export CUDA_VISIBLE_DEVICES=0,1"]), ("results", "1002")]
    executors.log.clear()
    multirun(*LOCAL_GPU, "site.max_parallel=1", "lora.r=4,8", f"output_root={tmp_path / 'b'}")
    assert executors.log == [("submit", 0, ["export CUDA_VISIBLE_DEVICES=0"]), ("results", "1003"),
                             ("submit", 1, ["export CUDA_VISIBLE_DEVICES=0"]), ("results", "1004")]


def test_local_cpu_jobs_run_in_waves_of_max_parallel(tmp_path, executors, capsys):
    (returns,) = multirun("experiment=smoke", "site.max_parallel=2", "lora.r=4,8,16", f"output_root={tmp_path}")
    assert [r.return_value for r in returns] == ["1000", "1001", "1002"]
    assert executors.log == [("map_array", [0, 1]), ("results", "1000"), ("results", "1001"),
                             ("map_array", [2]), ("results", "1002")]
    (ex,) = executors.made
    assert "local_setup" not in ex.params and ex.params["gpus_per_node"] == 0


def test_local_gpu_jobs_need_visible_gpus_but_a_plan_does_not(tmp_path, executors, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(SystemExit) as exit_:
        multirun(*LOCAL_GPU, "profile.gpus=2", "profile.parallel=model", "lora.r=4,8", f"output_root={tmp_path}")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and executors.made == []
    assert ("2 job(s) refused before submission, nothing submitted: #0 needs 2 GPU(s), 1 visible on this machine; "
            "#1 needs 2 GPU(s), 1 visible on this machine") in err
    multirun(*LOCAL_GPU, "profile.gpus=2", "profile.parallel=model", "lora.r=4,8", f"output_root={tmp_path}",
             "plan=true")
    assert "2 jobs: 2 to run" in capsys.readouterr().out  # the plan may be meant for the cluster


def test_only_a_local_launch_of_gpu_jobs_asks_which_gpus_are_visible(tmp_path, executors, monkeypatch, capsys):
    asked = []  # the question may import torch and look for CUDA: a plan, a SLURM sweep or CPU jobs need neither
    monkeypatch.setattr(launcher, "_visible_gpus", lambda: asked.append(True) or [0, 1])
    multirun(*LOCAL_GPU, "lora.r=4,8", f"output_root={tmp_path}", "plan=true")
    multirun("hydra/launcher=slurm", "detach=false", "experiment=smoke", "profile=1cpu_1a100", "lora.r=4,8",
             f"output_root={tmp_path}", "sweep_name=slurm")
    multirun("experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}", "sweep_name=cpu")
    assert asked == []
    multirun(*LOCAL_GPU, "lora.r=4,8", f"output_root={tmp_path}", "sweep_name=gpu")
    assert asked == [True]


# --- pieces --------------------------------------------------------------------------------------------------------

def test_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", " 2, 0 ,")
    assert launcher._visible_gpus() == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launcher._visible_gpus() == []
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b,GPU-3c4d")  # UUIDs: ask torch
    assert launcher._visible_gpus() == [0, 1, 2]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launcher._visible_gpus() == [0, 1, 2]


def test_chunks():
    assert submit.chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert submit.chunks([1, 2], 5) == [[1, 2]]
    assert submit.chunks([1, 2, 3], None) == [[1, 2, 3]]  # no limit: one array
    assert submit.chunks([], 3) == [] and submit.chunks([], None) == []


def test_one_line_keeps_the_error_line():
    text = "Job 12 failed\nTraceback (most recent call last):\n  File x\nValueError: lora.r bad\n  during handling\n"
    assert submit.error_line(RuntimeError(text)) == "RuntimeError: ValueError: lora.r bad"
    assert submit.error_line(OSError("first\n\n  last line  \n")) == "OSError: last line"
    assert submit.error_line(KeyError()) == "KeyError: "
    # the last line that names an error, lower case included, rather than the last line
    assert submit.error_line(RuntimeError("submitted\nsrun: error: node lost\ncleanup done")) == \
        "RuntimeError: srun: error: node lost"
    assert submit.error_line(RuntimeError("an error: " + "x" * 600)) == ("RuntimeError: an error: " + "x" * 600)[:500]


def test_wait_records_failures_and_goes_on():
    log = []
    a, b = launcher.PlannedJob(0, ["a"], "d0", "submit"), launcher.PlannedJob(1, ["b"], "d1", "submit")
    returns = submit.wait([(a, Handle(log, "7", fail="ValueError: boom")), (b, Handle(log, "8"))])
    assert [r.return_value for r in returns] == ["8"]
    assert (a.outcome, a.error, b.outcome, b.error) == ("failed", "RuntimeError: ValueError: boom", "completed", "")


def test_write_jobs_merges_with_the_previous_batches(tmp_path):
    launcher.write_jobs(tmp_path, [launcher.PlannedJob(0, ["x=1"], "d0", "submit"),
                                   launcher.PlannedJob(2, ["x=3"], "d2", "submit")])
    launcher.write_jobs(tmp_path, [launcher.PlannedJob(1, ["x=2"], "d1", "submit"),
                                   launcher.PlannedJob(2, ["x=3"], "d2", "complete", outcome="skipped")])
    jobs = json.loads((tmp_path / JOBS_FILE).read_text())
    assert [(j["idx"], j["status"], j["outcome"]) for j in jobs] == [(0, "submit", ""), (1, "submit", ""),
                                                                     (2, "complete", "skipped")]


def test_plan_table_cells_and_summary():
    jobs = [launcher.PlannedJob(0, ["a=1"], "/x/run-a", "submit", resources={"cpus_per_task": 2, "timeout_min": 60},
                                have_gib=float("inf"), need_gib=1.0, mode="cpu"),
            launcher.PlannedJob(1, ["a=2"], "/x/run-b", "submit", resources={"gpus_per_node": 2, "cpus_per_task": 1},
                                need_gib=20.04, have_gib=30.4, mode="model_split", gpu_hours=0.125),
            launcher.PlannedJob(2, ["a=3", "b=4"], "/x/run-c", "refused", reason="does not fit",
                                resources={"slurm_gres": "gpu:v100:2"}, need_gib=40.0, have_gib=15.2,
                                mode="data_parallel", processes=2, gpu_hours=7.0),
            launcher.PlannedJob(3, ["a=4"], "/x/run-d", "complete", gpu_hours=1.0),
            launcher.PlannedJob(4, ["a=5"], "/x/run-e", "invalid", reason="lora.r=0 is invalid")]
    lines = launcher.plan_table(jobs).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:-1]]
    assert cells[0] == ["0", "a=1", "submit", "2", "0", "60", "cpu", "cpu", "0", "run-a", ""]
    assert cells[1] == ["1", "a=2", "submit", "1", "2", "nan", "model_split", "20.0/30.4", "0.12", "run-b", ""]
    assert cells[2] == ["2", "a=3 b=4", "refused", "nan", "gpu:v100:2", "nan", "data_parallel x2", "40.0/15.2", "7",
                        "run-c", "does not fit"]
    assert cells[3][7] == "cpu"  # nothing known (have 0): no figures
    assert lines[-1] == ("5 jobs: 2 to run, 1 complete (skipped), 1 refused (do not fit), 1 invalid; estimated 0.12 "
                         "GPU-hours to run")


# --- on the compute node: SweepLauncherMixin.__call__ --------------------------------------------------------------

@pytest.fixture
def node_call(monkeypatch):
    """The mixin's __call__ over a stand-in for hydra-submitit-launcher's, at a given submitit rank."""
    import submitit

    from hydra_plugins.medsweep_launcher import MedsweepSlurmLauncher

    # the class after the mixin (Hydra's plugin scan may have loaded hydra-submitit-launcher's module twice)
    base = MedsweepSlurmLauncher.__mro__[MedsweepSlurmLauncher.__mro__.index(launcher.SweepLauncherMixin) + 1]

    seen = []

    def call(rank: int, status: JobStatus, value=None):
        monkeypatch.setattr(submitit, "JobEnvironment", lambda: type("Env", (), {"global_rank": rank})())

        def base_call(self, *args, **kwargs):
            seen.append(args)
            return JobReturn(status=status, _return_value=value)

        monkeypatch.setattr(base, "__call__", base_call)
        return MedsweepSlurmLauncher()(["lora.r=4"], "hydra.sweep.dir", 0, "job_id_for_0", {})

    call.seen = seen
    return call


def test_rank_0_writes_hydras_files_the_others_do_not(node_call):
    assert node_call(0, JobStatus.COMPLETED, "rec").return_value == "rec"
    assert node_call(1, JobStatus.COMPLETED).status == JobStatus.COMPLETED
    assert node_call.seen == [(["lora.r=4"], "hydra.sweep.dir", 0, "job_id_for_0", {}),
                              (["lora.r=4", "hydra.output_subdir=null"], "hydra.sweep.dir", 0, "job_id_for_0", {})]


def test_a_failed_task_raises_so_slurm_marks_the_job_failed(node_call):
    with pytest.raises(ValueError, match="boom"):
        node_call(0, JobStatus.FAILED, ValueError("boom"))


# --- end to end: a failing job under the local launcher ----------------------------------------------------------

@pytest.mark.slow
def test_a_failed_local_job_fails_the_sweep_and_its_record(tmp_path, embedded_dir):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"question": f"What is condition {i}?", "answer": f"Condition {i} is a "
                                        f"disorder of organ {i}."}) + "\n" for i in range(16)))
    missing = tmp_path / "missing.jsonl"
    proc = run_medsweep("experiment=smoke", "data=local", f"data.path={good},{missing}", "train.max_steps=2",
                        "eval.num_examples=2", "eval.perplexity=false", f"output_root={tmp_path / 'out'}",
                        "sweep_name=fail", multirun=True, env=SECRET_ENV)
    assert proc.returncode == 1
    assert "1 of 2 job(s) failed: #1 (" in proc.stderr and "missing.jsonl" in proc.stderr
    # the sweep ends with its summary, not with Hydra's stack
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("medsweep: error: 1 of 2 job(s) failed: #1") and "missing.jsonl" in last, last
    # no secret of the environment in submitit's pickles and logs, the records, Hydra's files, the console
    assert list(tmp_path.rglob("*_submitted.pkl")) and list(tmp_path.rglob("*_log.err"))
    assert_no_secret(tmp_path, proc.stdout + proc.stderr)
    jobs = jobs_file(tmp_path / "out", "fail")
    assert [j["outcome"] for j in jobs] == ["completed", "failed"]
    assert "missing.jsonl" in jobs[1]["error"]
    good_rec = json.loads((Path(jobs[0]["run_dir"]) / "metrics.json").read_text())
    failed_rec = json.loads((Path(jobs[1]["run_dir"]) / "metrics.json").read_text())
    assert good_rec["status"] == "complete"
    assert failed_rec["status"] == "failed" and "missing.jsonl" in failed_rec["error"]
    assert "  #1   failed     record=failed" in proc.stdout  # the status list printed before the exit


def test_multirun_yaml_is_scrubbed_of_a_secret_from_a_config(tmp_path, executors, capsys):
    """A secret that reaches the composed config other than by a command-line literal (a site file's
    `additional_parameters`; the console script refuses literals) is masked in Hydra's multirun.yaml too."""
    multirun("hydra/launcher=slurm", "experiment=smoke", "+site.additional_parameters.api_token=sk-site-secret-9876",
             f"output_root={tmp_path}", "plan=true")
    saved = (tmp_path / "sweeps" / "sweep" / "multirun.yaml").read_text()
    assert "sk-site-secret-9876" not in saved and "api_token" in saved


def test_a_sweep_in_batches_submits_each_job_with_its_own_overrides(tmp_path, executors, capsys):
    """hydra.sweeper.max_batch_size splits a sweep into several launch() calls; the later ones number their jobs from
    initial_job_idx, and the jobs file keeps every batch's jobs."""
    batches = multirun("hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8,16", f"output_root={tmp_path}",
                       "hydra.sweeper.max_batch_size=2", "detach=false")
    assert [[r.return_value for r in batch] for batch in batches] == [["1000", "1001"], ["1002"]]
    arrays = [c for e in executors.made for c in e.calls if c[0] == "map_array"]
    assert [(idxs, [o[1] for o in overrides]) for _, idxs, overrides, _ in arrays] == [
        ([0, 1], ["lora.r=4", "lora.r=8"]), ([2], ["lora.r=16"])]
    assert [(j["idx"], j["overrides"][1], j["outcome"]) for j in jobs_file(tmp_path)] == [
        (0, "lora.r=4", "completed"), (1, "lora.r=8", "completed"), (2, "lora.r=16", "completed")]


# --- detached sweeps and the cluster's limits ------------------------------------------------------------------------

def test_a_detached_slurm_sweep_submits_a_report_job_after_its_jobs_and_returns(tmp_path, executors, capsys,
                                                                                monkeypatch):
    flushed = flushes(monkeypatch)  # the lines are out before the command returns to a shell that may pipe them
    batches = multirun("hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8,16", "site.max_array_size=2",
                       "site.partition=gpu", "site.account=lab", f"output_root={tmp_path}")  # detach: SLURM's default
    assert batches == [[]]  # nothing waited for
    sweep_dir = tmp_path / "sweeps" / "sweep"
    arrays = [c for e in executors.made for c in e.calls if c[0] == "map_array"]
    assert [idxs for _, idxs, _, _ in arrays] == [[0, 1], [2]]  # split at site.max_array_size
    assert not [e for e in executors.log if e[0] == "results"]
    (reporter,) = [e for e in executors.made if any(c[0] == "report" for c in e.calls)]
    assert reporter.cluster == "slurm" and reporter.folder == str(sweep_dir / ".submitit" / "%j")
    (report,) = [c for c in reporter.calls if c[0] == "report"]
    assert report[1] == (str(sweep_dir),)
    assert report[2] == {"timeout_min": 60, "cpus_per_task": 1, "mem_gb": 4, "nodes": 1, "tasks_per_node": 1,
                         "name": "medsweep-report", "slurm_partition": "gpu", "slurm_account": "lab",
                         "slurm_additional_parameters": {"dependency": "afterany:1000:1001:1002"}}
    jobs = jobs_file(tmp_path)
    assert [(j["status"], j["outcome"], j["job_id"]) for j in jobs] == [
        ("submit", "submitted", "1000"), ("submit", "submitted", "1001"), ("submit", "submitted", "1002")]
    out = capsys.readouterr().out
    assert "medsweep: submitted 3 job(s) as SLURM job(s) 1000, 1001, 1002; report job 1003 starts when they have " \
           "ended" in out
    assert f"  follow:  medsweep-status {sweep_dir} --watch\n  report:  {sweep_dir / 'report' / 'report.md'}\n" in out
    assert not (sweep_dir / "report").exists()  # the report job writes it, not Hydra's end-of-multirun hook
    assert flushed == [True, True]  # the plan table, then the submission


def test_array_ids_of_a_split_array_become_one_dependency_each():
    assert submit.master_ids(["77_0", "77_1", "80_0", "", "9"]) == ["9", "77", "80"]
    jobs = [launcher.PlannedJob(0, [], "d", "submit", resources={"slurm_setup": ["module load x"],
                                                                 "slurm_additional_parameters": {"mail-type": "END"}})]
    params = submit.report_parameters(jobs, ["77_0", "77_1"], "sw")
    assert params["slurm_setup"] == ["module load x"] and params["name"] == "sw-report"
    assert params["slurm_additional_parameters"] == {"mail-type": "END", "dependency": "afterany:77"}
    assert jobs[0].resources["slurm_additional_parameters"] == {"mail-type": "END"}  # the jobs' own untouched


def test_more_jobs_than_the_cluster_lets_one_queue_are_refused(tmp_path, executors, capsys):
    with pytest.raises(SystemExit) as exit_:
        multirun("hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8", "site.max_submit_jobs=2",
                 f"output_root={tmp_path}")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and executors.made == []
    assert err == ["medsweep: error: 2 job(s) and the report job to submit, but at most 2 may be queued "
                   "(MaxSubmitJobs; site.max_submit_jobs): nothing submitted; submit the grid in parts (each part "
                   "skips what is complete or queued)"]
    multirun("hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8", "site.max_submit_jobs=2", "detach=false",
             f"output_root={tmp_path}")  # without the report job it fits
    assert [c[1] for e in executors.made for c in e.calls if c[0] == "map_array"] == [[0, 1]]
    with pytest.raises(SystemExit):
        multirun("hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8,16", "site.max_submit_jobs=2",
                 "detach=false", f"output_root={tmp_path}", "sweep_name=three")
    assert capsys.readouterr().err.splitlines()[-1] == (
        "medsweep: error: 3 job(s) to submit, but at most 2 may be queued (MaxSubmitJobs; site.max_submit_jobs): "
        "nothing submitted; submit the grid in parts (each part skips what is complete or queued)")


def test_only_a_slurm_launch_with_jobs_to_submit_asks_the_cluster_its_limits(tmp_path, executors, monkeypatch):
    asked = []  # scontrol and sacctmgr: absent where a sweep runs locally, needless when nothing is submitted
    monkeypatch.setattr(launcher, "cluster_limits", lambda site: asked.append(site) or (None, None))
    multirun("experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}", "sweep_name=local")
    assert asked == []
    slurm_sweep = ["hydra/launcher=slurm", "detach=false", "experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}"]
    multirun(*slurm_sweep)
    assert len(asked) == 1
    for job in jobs_file(tmp_path):
        record.atomic_write_json(Path(job["run_dir"]) / "metrics.json", {"status": "complete"})
    multirun(*slurm_sweep)
    assert len(asked) == 1


def test_a_waiting_slurm_sweep_has_slurm_asked_about_its_jobs_and_a_local_one_does_not(tmp_path, executors,
                                                                                       monkeypatch):
    asked = []  # submitit waits forever for an array task cancelled while pending: only SLURM itself can tell
    wait = submit.wait
    monkeypatch.setattr(submit, "wait", lambda pairs, **kw: (pairs and asked.append(kw.get("ask_slurm", False)))
                        or wait(pairs, **kw))
    multirun("hydra/launcher=slurm", "detach=false", "experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}")
    assert asked == [True]
    multirun("experiment=smoke", "lora.r=4,8", "site.max_parallel=2", f"output_root={tmp_path}", "sweep_name=local")
    assert asked == [True, False]  # one local wave


def test_a_local_rerun_never_asks_slurm_about_its_earlier_jobs(tmp_path, executors, monkeypatch):
    from medsweep import slurm

    sweep = ["experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}"]
    multirun(*sweep)
    sweep_dir = tmp_path / "sweeps" / "sweep"
    jobs = jobs_file(tmp_path)
    record.atomic_write_json(Path(jobs[1]["run_dir"]) / "metrics.json", {"status": "complete"})
    for job in jobs:  # as a local sweep killed while its jobs ran leaves them
        job["outcome"] = "submitted"
    (sweep_dir / JOBS_FILE).write_text(json.dumps(jobs))
    monkeypatch.setattr(slurm, "job_states", lambda ids: pytest.fail("a local sweep asked SLURM"))
    multirun(*sweep)
    assert [c[1] for e in executors.made for c in e.calls if c[0] == "map_array"] == [[0, 1], [0]]
    assert [(j["status"], j["job_id"]) for j in jobs_file(tmp_path)] == [("submit", "1002"), ("complete", "")]


def test_a_rerun_does_not_submit_again_what_slurm_still_runs(tmp_path, executors, capsys, monkeypatch):
    from medsweep import slurm

    sweep = ["hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8,16", f"output_root={tmp_path}"]
    multirun(*sweep)
    first = jobs_file(tmp_path)
    asked = []

    def states(ids):
        asked.append(sorted(ids))
        return {"1000": slurm.SlurmJob("1000", "RUNNING"), "1001": slurm.SlurmJob("1001", "FAILED")}

    monkeypatch.setattr(slurm, "job_states", states)
    record.atomic_write_json(Path(first[2]["run_dir"]) / "metrics.json", {"status": "complete"})
    capsys.readouterr()
    multirun(*sweep)
    assert asked == [["1000", "1001"]]  # one query for the earlier submission's unfinished jobs
    out = capsys.readouterr().out
    assert "3 jobs: 1 to run, 1 complete (skipped), 1 still queued in SLURM (not submitted again)" in out
    assert "medsweep: submitted 1 job(s) as SLURM job(s) 1004 (1 already queued); report job 1005 starts" in out
    again = [c for e in executors.made for c in e.calls if c[0] == "map_array"][1:]
    assert [c[1] for c in again] == [[1]]  # FAILED in SLURM: submitted again
    jobs = jobs_file(tmp_path)
    assert [(j["status"], j["job_id"], j["reason"]) for j in jobs] == [
        ("queued", "1000", "already in SLURM as job 1000 (RUNNING)"), ("submit", "1004", ""),
        ("complete", "1002", "record complete: skipped")]  # a skipped job keeps the id of the job that completed it
    (_, report) = [c for e in executors.made for c in e.calls if c[0] == "report"]
    assert report[2]["slurm_additional_parameters"] == {"dependency": "afterany:1000:1004"}
    assert first[0]["run_dir"] == jobs[0]["run_dir"]


def test_a_rerun_that_cannot_ask_slurm_submits_every_unfinished_job_and_says_why(tmp_path, executors, caplog,
                                                                                  monkeypatch):
    from medsweep import slurm
    from medsweep.errors import MedsweepError

    sweep = ["hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}"]
    multirun(*sweep)

    def unreachable(ids):
        raise MedsweepError("sacct: error: slurmdbd not reachable")

    monkeypatch.setattr(slurm, "job_states", unreachable)
    with caplog.at_level(logging.WARNING, logger="medsweep.launcher"):
        multirun(*sweep)
    assert [r.getMessage() for r in caplog.records if r.name == "medsweep.launcher"] == [
        "cannot ask SLURM about the earlier submission (sacct: error: slurmdbd not reachable): every unfinished job "
        "is submitted"]
    assert [c[1] for e in executors.made for c in e.calls if c[0] == "map_array"] == [[0, 1], [0, 1]]


def test_a_rerun_with_every_unfinished_job_still_queued_submits_nothing_and_leaves_the_report_to_its_job(
        tmp_path, executors, capsys, monkeypatch):
    from medsweep import slurm

    sweep = ["hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8,16", f"output_root={tmp_path}"]
    multirun(*sweep)
    record.atomic_write_json(Path(jobs_file(tmp_path)[2]["run_dir"]) / "metrics.json", {"status": "complete"})
    monkeypatch.setattr(slurm, "job_states", lambda ids: {i: slurm.SlurmJob(i, "PENDING") for i in ids})
    ended, flushed = [], flushes(monkeypatch)
    monkeypatch.setattr(launcher, "end", lambda *a, **kw: ended.append(a))
    capsys.readouterr()
    multirun(*sweep)
    assert flushed == [True, True]  # the plan table, then the line that nothing was submitted
    assert [c[0] for e in executors.made for c in e.calls if c[0] in ("map_array", "report")] == ["map_array",
                                                                                                 "report"]
    assert ended == []  # the first submission's report job writes the report
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "medsweep: nothing submitted: 2 job(s) still queued from an earlier submission, whose report job writes "
        "the report when they end", f"  follow:  medsweep-status {tmp_path / 'sweeps' / 'sweep'} --watch"]


def test_a_detached_rerun_of_a_complete_sweep_writes_its_report_now(tmp_path, executors, capsys, monkeypatch):
    sweep = ["hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8", f"output_root={tmp_path}"]
    multirun(*sweep)
    for job in jobs_file(tmp_path):
        record.atomic_write_json(Path(job["run_dir"]) / "metrics.json", {"status": "complete"})
    ended = []
    monkeypatch.setattr(launcher, "end", lambda *a, **kw: ended.append(a))
    multirun(*sweep)
    assert ended == [(tmp_path / "sweeps" / "sweep",)]  # no job to wait for: no report job, the report now
    assert len([c for e in executors.made for c in e.calls if c[0] == "report"]) == 1  # the first run's


def test_detach_needs_slurm(tmp_path, executors, capsys):
    with pytest.raises(SystemExit) as exit_:
        multirun("experiment=smoke", "lora.r=4,8", "detach=true", f"output_root={tmp_path}")
    assert exit_.value.code == 2 and executors.made == []
    assert capsys.readouterr().err.strip() == ("medsweep: error: detach=true needs hydra/launcher=slurm: a local "
                                               "sweep's jobs end with this command")


# --- the plan of the published grid: 5 models x 9 VM profiles ---------------------------------------------------------

MODELS = ["distilgpt2", "llama2_7b", "llama3_8b", "mistral_7b", "gemma_1.1_7b"]
PROFILES = [f"{c}cpu_{n}{g}" for g in ("v100", "a100", "rtx8000") for c, n in ((1, 1), (2, 1), (4, 2))]


class _Loader:
    """Hydra's config loader for plan_jobs, for `model=<m> profile=<p>` jobs: the composed base config with the
    composed model and profile groups put in, and the sweep's run-dir keys, so 1 + 5 + 9 compositions make the 45 job
    configs (one Hydra composition per job is most of the subprocess plan's minute)."""

    def __init__(self, compose, root):
        self.compose = compose
        base = compose([f"output_root={root}"], return_hydra_config=True)
        self.base = OmegaConf.to_container(base, resolve=False)
        self.base["hydra"] = {"sweep": {"dir": str(base.hydra.sweep.dir), "subdir": "${run_id:}"}}
        self.groups: dict = {}

    def load_sweep_config(self, config, overrides):
        cfg = dict(self.base)
        for override in overrides:
            key, _, _ = override.partition("=")
            if override not in self.groups:
                self.groups[override] = OmegaConf.to_container(self.compose([override])[key], resolve=True)
            cfg[key] = self.groups[override]
        return OmegaConf.create(cfg)


@pytest.mark.slow
def test_plan_of_the_published_grid_refuses_exactly_what_does_not_fit(compose, tmp_path):
    """The planning step of `medsweep -m model=... profile=... --plan` on the published grid, in-process (the launcher
    composes each job, checks its fit and plans its layout; the CLI's --plan is covered end to end below)."""
    grid = [[f"model={m}", f"profile={p}"] for m in MODELS for p in PROFILES]
    loader = type("Launcher", (), {"config": None, "hydra_context": type("Ctx", (), {"config_loader": None})()})()
    loader.hydra_context.config_loader = _Loader(compose, tmp_path)
    jobs = launcher.plan_jobs(loader, grid, 0, "slurm")
    assert len(jobs) == 45
    status = {(j.overrides[0][6:], j.overrides[1][8:]): j for j in jobs}
    refused = {k for k, j in status.items() if j.status == "refused"}
    # fp16 7-8B models need 19-27 GiB (weights + the evaluation KV cache of batch 32): more than one 16 GB V100;
    # the 2-V100 profile splits them across both (30.4 GiB usable), the others fit one GPU
    assert refused == {(m, p) for m in MODELS[1:] for p in ("1cpu_1v100", "2cpu_1v100")}
    assert {j.status for k, j in status.items() if k not in refused} == {"submit"}
    for (model, profile), job in status.items():
        assert job.reason.startswith(f"does not fit: {model} (") == ((model, profile) in refused)
        if profile.startswith("4cpu_2"):
            # distilgpt2 data parallel on every 2-GPU profile, the 7-8B models on 2 x A100 and 2 x RTX 8000 too, and
            # split across the two 16 GB V100s
            split = model != "distilgpt2" and profile == "4cpu_2v100"
            assert (job.mode, job.processes) == (("model_split", 1) if split else ("data_parallel", 2)), job
        else:
            assert (job.mode, job.processes) == ("single", 1)
        assert job.gpu_hours > 0 and job.resources["slurm_gres"] == f"gpu:{profile.split('_')[1][1:]}:{profile[5]}"
    summary = launcher.plan_table(jobs).splitlines()[-1]
    assert summary.startswith("45 jobs: 37 to run, 0 complete (skipped), 8 refused (do not fit), 0 invalid")
    assert not list(tmp_path.rglob("*"))  # nothing written


def test_sweep_with_a_refused_job_submits_nothing(tmp_path):
    proc = run_medsweep("model=distilgpt2,llama3_8b", "profile=1cpu_1v100", f"output_root={tmp_path}",
                        multirun=True, timeout=300)
    assert proc.returncode == 2
    assert "refused before submission, nothing submitted" in proc.stderr and "llama3_8b" in proc.stderr
    assert not list(tmp_path.rglob(".submitit"))
