"""The plan's typed path (medsweep/typedjobs.py): every job it builds plans exactly as the job composed by Hydra does
(run directory, status and reason, resources, fit figures, axes), whatever the structure and the kind of value; it
steps aside where an interpolation of the structure reads a value, for Hydra's own run-directory templates and for
values it cannot take as written; its safety net sends a shape whose first job differs back to compose.py. Also the
plan table of a sweep too long to list job by job."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from medsweep import compose as compose_mod
from medsweep import launcher, record, typedjobs
from medsweep.compose import ComposeCache
from medsweep.sweep import PlannedJob
from medsweep.typedjobs import TypedJobs

# a fitting GPU model, a 7-8B model on one 16 GB V100 (refused), data parallel on two A100s (an odd batch there is
# invalid), and a group preset with interpolations (tiny_random's sizes read its random_config)
STRUCTURES = [("model=distilgpt2", "profile=1cpu_1a100"), ("model=llama3_8b", "profile=1cpu_1v100"),
              ("model=smollm2_135m", "profile=4cpu_2a100"), ("experiment=smoke",)]
# int, 0 for a float field, an int for a float field, null, a list, a string with spaces, a top-level key
VALUES = [("lora.r=4", "lora.dropout=0", "train.lr=1", "eval.num_examples=null", "lora.target_modules=[q_proj,v_proj]",
           "data.instruction='answer briefly, please'", "attempt=0"),
          ("lora.r=16", "lora.dropout=0.1", "train.lr=3e-4", "eval.num_examples=5", "lora.target_modules=null",
           "data.instruction=plain", "attempt=1"),
          ("lora.r=0", "lora.dropout=0.25", "train.lr=2e-4", "eval.num_examples=null", "lora.target_modules=null",
           "data.instruction=plain", "attempt=0"),  # invalid: lora.r
          ("lora.r=8", "lora.dropout=0", "train.lr=2e-4", "eval.num_examples=null", "lora.target_modules=null",
           "data.instruction=plain", "attempt=2")]


def plan(loader, cfg, jobs, executor="slurm"):
    fake = type("Launcher", (), {"config": cfg, "hydra_context": type("Ctx", (), {"config_loader": loader})()})()
    return [dataclasses.asdict(j) for j in launcher.plan_jobs(fake, jobs, 0, executor)]


def test_every_job_plans_as_hydras_composition_does(hydra_loader, monkeypatch, tmp_path, caplog):
    loader, cfg = hydra_loader(f"output_root={tmp_path}")
    jobs = [[*s, *v, f"output_root={tmp_path}"] for s in STRUCTURES for v in VALUES]
    jobs += [["model=smollm2_135m", "profile=4cpu_2a100", "train.batch_size=3", f"output_root={tmp_path}"],
             ["model=smollm2_135m", "profile=4cpu_2a100", "train.batch_size=6", f"output_root={tmp_path}"]]
    monkeypatch.setenv(compose_mod.ENV, "0")
    slow = plan(loader, cfg, jobs)
    record.atomic_write_json(Path(slow[1]["run_dir"]) / "metrics.json", {"status": "complete"})  # skipped
    slow = plan(loader, cfg, jobs)
    monkeypatch.setenv(compose_mod.ENV, "1")
    with caplog.at_level("DEBUG", logger="medsweep.launcher"):
        fast = plan(loader, cfg, jobs)
    assert fast == slow
    # the first job of each shape is Hydra's, the others typed: 3 of each structure's 4, and the second batch size
    assert "composed by Hydra, 13 typed from their structure's" in caplog.text
    status = [j["status"] for j in fast]
    assert status[:4] == ["submit", "complete", "invalid", "submit"] and status[4:8] == ["refused", "refused",
                                                                                        "invalid", "refused"]
    assert status[-2:] == ["invalid", "submit"] and "divisible by the 2 data-parallel" in fast[-2]["reason"]
    assert fast[2]["reason"].startswith("lora.r=0 is invalid") and fast[6]["reason"].startswith("lora.r=0 is invalid")
    assert fast[8]["mode"] == "data_parallel" and fast[8]["resources"]["tasks_per_node"] == 2
    assert fast[12]["axes"]["model"] == "tiny_random" and fast[13]["axes"]["lora.r"] == 16
    assert len({j["run_dir"] for j in fast}) == len(jobs)


def test_the_typed_run_id_is_records_own(compose):
    cfg = compose(["experiment=smoke", "lora.r=4"], return_hydra_config=True)
    assert record.run_id_of(record.run_config(cfg)) == record.run_id(cfg)


@pytest.mark.parametrize("master, jobs", [
    # an interpolation among the values
    ([], [["lora.r=4", "train.seed=${lora.r}"], ["lora.r=8", "train.seed=${lora.r}"]]),
    # a run directory of Hydra's making (the job's overrides), not the run id
    (["hydra.sweep.subdir=${hydra.job.override_dirname}"], [["lora.r=4"], ["lora.r=8"], ["lora.r=16"]]),
    # a key under a mapping, and data.loader (it decides which data.options the check accepts)
    ([], [["model=tiny_random", "model.random_config.hidden_size=32"],
          ["model=tiny_random", "model.random_config.hidden_size=128"]]),
    ([], [["data.loader=local", "data.path=x.jsonl"], ["data.loader=sample", "data.path=y.jsonl"]]),
])
def test_the_typed_path_steps_aside_and_the_plan_stays_hydras(hydra_loader, monkeypatch, tmp_path, master, jobs):
    loader, cfg = hydra_loader(f"output_root={tmp_path}", *master)
    typed = TypedJobs(ComposeCache(loader, cfg))
    for job in jobs:
        typed.job(job)
    assert typed.fast == 0
    fast = plan(loader, cfg, jobs)
    monkeypatch.setenv(compose_mod.ENV, "0")
    assert fast == plan(loader, cfg, jobs)


def test_an_interpolation_reading_a_value_is_followed_for_every_job(hydra_loader, monkeypatch, tmp_path):
    """data=synth's path reads output_root. The first job keeps the structure's output_root (so its check against
    Hydra cannot tell), the next ones move it: each job's data.path and run directory are still Hydra's."""
    loader, cfg = hydra_loader(f"output_root={tmp_path}")
    jobs = [["data=synth", f"lora.r={r}", f"output_root={root}"] for root in ("results", tmp_path / "b")
            for r in (4, 8)]

    def typed_jobs():
        typed = TypedJobs(ComposeCache(loader, cfg))
        return [(j.run_dir, repr(j.check()[0])) for j in map(typed.job, jobs)], typed.fast

    fast, typed = typed_jobs()
    assert typed == 0
    monkeypatch.setenv(compose_mod.ENV, "0")
    assert fast == typed_jobs()[0]
    assert f"path='{tmp_path}/b/synth/reviewed.jsonl'" in fast[-1][1]


def test_the_safety_net_sends_a_differing_shape_back_to_compose(hydra_loader, monkeypatch, tmp_path, caplog):
    loader, cfg = hydra_loader(f"output_root={tmp_path}")
    jobs = [[*s, f"lora.r={r}", f"output_root={tmp_path}"] for s in STRUCTURES[:2] for r in (4, 8, 16)]
    monkeypatch.setenv(compose_mod.ENV, "0")
    reference = plan(loader, cfg, jobs)
    monkeypatch.setenv(compose_mod.ENV, "1")
    fast = TypedJobs._fast

    def off_by_one(self, base_key, structure, values):
        job = fast(self, base_key, structure, values)
        job.run = dataclasses.replace(job.run, lora=dataclasses.replace(job.run.lora, alpha=job.run.lora.alpha + 1))
        return job

    monkeypatch.setattr(TypedJobs, "_fast", off_by_one)
    with caplog.at_level("DEBUG", logger="medsweep"):
        assert plan(loader, cfg, jobs) == reference
    assert sum("differs from Hydra's" in r.getMessage() and "typed" in r.getMessage() for r in caplog.records) == 2
    assert "0 typed from their structure's" in caplog.text

    def broken(self, base_key, structure, values):
        raise RuntimeError("typed path broken")

    monkeypatch.setattr(TypedJobs, "_fast", broken)
    assert plan(loader, cfg, jobs) == reference


def test_the_run_directory_follows_a_sweep_name_of_each_job(hydra_loader, monkeypatch, tmp_path):
    loader, cfg = hydra_loader(f"output_root={tmp_path}")
    jobs = [[f"sweep_name={name}", f"lora.r={r}"] for name, r in itertools.product(("a", "b"), (4, 8))]
    typed = TypedJobs(ComposeCache(loader, cfg))
    dirs = [typed.job(j).run_dir for j in jobs]
    assert typed.fast == 3
    assert [d.split("/")[-2] for d in dirs] == ["a", "a", "b", "b"]
    monkeypatch.setenv(compose_mod.ENV, "0")
    assert dirs == [TypedJobs(ComposeCache(loader, cfg)).job(j).run_dir for j in jobs]


def test_what_an_interpolation_reads():
    reads = typedjobs._reads
    assert reads("${oc.env:MEDSWEEP_CACHE,'~/.cache/medsweep'}", "model.cache_dir") == set()
    assert reads("${.random_config.hidden_size}", "model.hidden_size") == {"model.random_config.hidden_size"}
    assert reads("${..lr}", "train.x.y") == {"train.lr"}
    assert reads("${output_root}/synth/${oc.env:X,${data.name}}", "data.path") == {"output_root", "data.name"}
    assert reads("${run_id:}", "x") is None and reads("${oc.select:lora.r}", "x") is None  # may read anything
    assert reads("${a[0]}", "x") is None and reads("${...z}", "a.b") is None


def test_stale_follows_interpolations_through_each_other():
    found = {"model.hidden_size": {"model.random_config.hidden_size"}, "data.path": {"output_root"},
             "eval.x": {"data.path"}}
    assert not typedjobs._stale(found, ("lora.r", "model.hidden_size"))  # the value replaces the interpolation
    assert typedjobs._stale(found, ("lora.r", "model.random_config"))
    assert typedjobs._stale({"eval.x": {"data.path"}, "data.path": {"output_root"}}, ("output_root",))
    assert not typedjobs._stale({"data.path": {"output_root"}}, ("sweep_name",))


def test_dir_parts():
    assert typedjobs._dir_parts("${output_root}/sweeps/${sweep_name}") == [
        ("key", "output_root"), ("", "/sweeps/"), ("key", "sweep_name")]
    assert typedjobs._dir_parts("${run_id:}") == [("run_id", "")]
    for other in ("${hydra.job.override_dirname}", "${now:%H}", "${lora.r}", "a\\${x}", "${model}", None):
        assert typedjobs._dir_parts(other) is None


def test_a_long_plan_lists_its_refused_and_invalid_jobs_and_groups_the_others(monkeypatch):
    monkeypatch.setattr(launcher, "PLAN_ROWS", 4)
    axes = [{"model": "distilgpt2", "profile": "1cpu_1a100"}, {"model": "llama3_8b", "profile": "1cpu_1v100"}]
    jobs = [PlannedJob(i, [f"a={i}"], f"/x/run-{i}", "submit", resources={"cpus_per_task": 1, "timeout_min": 60,
                       "slurm_gres": "gpu:a100:1"}, need_gib=2.0 + i, have_gib=76.0, mode="single", gpu_hours=0.5,
                       axes=axes[0]) for i in range(5)]
    jobs.append(PlannedJob(5, ["a=5"], "/x/run-5", "refused", reason="does not fit: llama3_8b ...",
                           resources={"cpus_per_task": 1, "timeout_min": 60, "slurm_gres": "gpu:v100:1"},
                           need_gib=20.6, have_gib=15.2, mode="single", gpu_hours=0.1, axes=axes[1]))
    jobs.append(PlannedJob(6, ["lora.r=0"], "/x/run-6", "invalid", reason="lora.r=0 is invalid: must be > 0"))
    lines = launcher.plan_table(jobs).splitlines()
    assert lines[0].startswith("7 jobs in 3 groups") and lines[-1].startswith("7 jobs: 5 to run, 0 complete")
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("|")]
    assert ["submit", "distilgpt2", "1cpu_1a100", "single", "1", "gpu:a100:1", "60", "5", "6.0/76.0", "2.5"] in cells
    assert ["refused", "llama3_8b", "1cpu_1v100", "single", "1", "gpu:v100:1", "60", "1", "20.6/15.2", "0.1"] in cells
    listed = [c for c in cells if c and c[0] in ("5", "6")]
    assert [c[-1] for c in listed] == ["does not fit: llama3_8b ...", "lora.r=0 is invalid: must be > 0"]
    assert not any(f"a={i}" in c for i in range(5) for c in cells)  # the jobs to run are only counted


@pytest.mark.parametrize("rows, listed", [(3, False), (4, True)])
def test_a_plan_of_exactly_plan_rows_jobs_lists_them_all(monkeypatch, rows, listed):
    monkeypatch.setattr(launcher, "PLAN_ROWS", rows)
    jobs = [PlannedJob(i, [f"a={i}"], f"/x/run-{i}", "submit", resources={"cpus_per_task": 1, "timeout_min": 60},
                       mode="cpu", axes={"model": "tiny_random", "profile": "local_cpu"}) for i in range(4)]
    table = launcher.plan_table(jobs)
    assert all(f"a={i}" in table for i in range(4)) is listed
    assert table.startswith("4 jobs in 1 group") is not listed


def test_a_long_plans_group_of_jobs_without_axes_shows_empty_cells(monkeypatch):
    # an invalid job has no axes (its config did not check): its group names no model or profile
    monkeypatch.setattr(launcher, "PLAN_ROWS", 1)
    jobs = [PlannedJob(6, ["lora.r=0"], "/x/run-6", "invalid", reason="lora.r=0 is invalid: must be > 0"),
            PlannedJob(7, ["lora.r=1"], "/x/run-7", "submit", resources={"cpus_per_task": 1, "timeout_min": 60},
                       mode="cpu", axes={"model": "tiny_random", "profile": "local_cpu"}, gpu_hours=0.1234)]
    lines = launcher.plan_table(jobs).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[1:5] if line.startswith("|")]
    assert cells[0] == ["status", "model", "profile", "mode", "cpus", "gpus", "time_min", "jobs", "need/have GiB",
                        "est_gpu_h"]
    assert cells[2:] == [["invalid", "", "", "", "nan", "0", "nan", "1", "cpu", "0"],
                         ["submit", "tiny_random", "local_cpu", "cpu", "1", "0", "60", "1", "cpu", "0.12"]]
