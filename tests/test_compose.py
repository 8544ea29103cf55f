"""The plan's composition cache (medsweep/compose.py) and medsweep's sweeper: each job's config and run directory are
exactly Hydra's own composition's, the safety net falls back to Hydra when the fast config differs, and a sweep's
jobs are composed once per structure, not twice per job."""

from __future__ import annotations

import dataclasses

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import OmegaConf

from medsweep import compose as compose_mod
from medsweep import launcher
from medsweep.compose import ComposeCache
from tests.conftest import CONF_DIR
from tests.test_launcher import multirun

# jobs of two structures (model x profile tied), their values of every kind: int, float given as an int, null, a
# string with spaces, a list, an interpolation
VALUES = [("lora.r=4", "lora.dropout=0", "eval.num_examples=null", "data.instruction='answer briefly, please'",
           "lora.target_modules=[c_attn,c_proj]", "train.seed=1"),
          ("lora.r=8", "lora.dropout=0.1", "eval.num_examples=5", "data.instruction='say it plainly'",
           "lora.target_modules=null", "train.seed=${lora.r}"),
          ("lora.r=16", "lora.dropout=0.25", "eval.num_examples=null", "data.instruction=plain",
           "lora.target_modules=[c_attn]", "train.seed=${lora.alpha}")]
STRUCTURES = [("model=distilgpt2", "profile=1cpu_1a100"), ("model=smollm2_135m", "profile=local_cpu")]
JOBS = [[*s, *v] for s in STRUCTURES for v in VALUES]


def as_written(cfg) -> str:
    """Every key and value with its type, Hydra's node included, and the run directory resolved."""
    return repr((OmegaConf.to_container(cfg, resolve=False), str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir)))


@pytest.mark.parametrize("master", [
    ["output_root=/tmp/medsweep-compose"],
    # Hydra's own settings: the run dir named by the job's overrides, Hydra's way, with their own separator
    ["output_root=/tmp/medsweep-compose", "hydra.sweep.subdir=${hydra.job.override_dirname}",
     "hydra.job.config.override_dirname.kv_sep=_", "hydra.job.name=other"]])
def test_the_fast_path_gives_hydras_configs_and_run_dirs(hydra_loader, master):
    loader, cfg = hydra_loader(*master)
    cache = ComposeCache(loader, cfg)
    fast = [as_written(cache.compose(job)) for job in JOBS]
    assert cache.fast == 4 and cache.full == 4  # per structure: one base, one check against Hydra, two fast
    reference = [as_written(loader.load_sweep_config(cfg, job)) for job in JOBS]
    assert fast == reference
    assert len({r for r in reference}) == len(JOBS)  # every job its own config
    subdirs = [eval(r)[2] for r in reference]  # noqa: S307 - our own repr
    assert len(set(subdirs)) == len(JOBS)
    if "hydra.job.name=other" in master:
        assert subdirs[1].startswith("data.instruction_'say it plainly',eval.num_examples_5,")


def test_values_of_another_type_are_hydras_too(hydra_loader):
    """A float field given an int, an int field given a float string: the schema's conversion, as Hydra does it."""
    loader, cfg = hydra_loader("output_root=/tmp/medsweep-compose")
    jobs = [["lora.dropout=0.5", "train.lr=1"], ["lora.dropout=0", "train.lr=3e-4"], ["lora.dropout=1", "train.lr=0"]]
    cache = ComposeCache(loader, cfg)
    assert [as_written(cache.compose(j)) for j in jobs] == [as_written(loader.load_sweep_config(cfg, j)) for j in jobs]
    assert cache.fast == 2
    assert repr(cache.compose(["lora.dropout=0", "train.lr=1"]).lora.dropout) == "0.0"


def test_a_value_hydra_refuses_is_refused_by_hydra(hydra_loader):
    from hydra.errors import ConfigCompositionException

    loader, cfg = hydra_loader("output_root=/tmp/medsweep-compose")
    cache = ComposeCache(loader, cfg)
    cache.compose(["lora.r=4"])
    for bad in (["lora.r=four"], ["lora.rank=4"]):  # wrong type; a key the schema lacks
        with pytest.raises(ConfigCompositionException):
            cache.compose(bad)
        with pytest.raises(ConfigCompositionException):
            loader.load_sweep_config(cfg, bad)


def test_the_safety_net_falls_back_to_hydra_when_the_fast_config_differs(hydra_loader, monkeypatch, caplog):
    loader, cfg = hydra_loader("output_root=/tmp/medsweep-compose")
    reference = [as_written(loader.load_sweep_config(cfg, job)) for job in JOBS]
    apply = ComposeCache._apply

    def off_by_one(self, base, parsed, values):
        out = apply(self, base, parsed, values)
        out.lora.alpha += 1
        return out

    monkeypatch.setattr(ComposeCache, "_apply", off_by_one)
    cache = ComposeCache(loader, cfg)
    with caplog.at_level("DEBUG", logger="medsweep.compose"):
        assert [as_written(cache.compose(job)) for job in JOBS] == reference
    assert cache.fast == 0 and cache.full == 2 + len(JOBS)  # the two bases, then every job by Hydra
    assert sum("differs from Hydra's" in r.getMessage() for r in caplog.records) == 2

    def broken(self, base, parsed, values):
        raise RuntimeError("fast path broken")

    monkeypatch.setattr(ComposeCache, "_apply", broken)
    cache = ComposeCache(loader, cfg)
    assert [as_written(cache.compose(job)) for job in JOBS] == reference
    assert cache.fast == 0


def test_the_cache_can_be_turned_off(hydra_loader, monkeypatch):
    loader, cfg = hydra_loader("output_root=/tmp/medsweep-compose")
    monkeypatch.setenv(compose_mod.ENV, "0")
    cache = ComposeCache(loader, cfg)
    for job in JOBS:
        cache.compose(job)
    assert (cache.fast, cache.full) == (0, len(JOBS))


def test_a_loader_without_a_repository_takes_conf_groups_as_structure():
    calls: list = []

    class Loader:  # tests/test_launcher.py's kind: a load_sweep_config and nothing else
        def load_sweep_config(self, master, overrides):
            calls.append(list(overrides))
            r = next((int(o[7:]) for o in overrides if o.startswith("lora.r=")), 0)
            return OmegaConf.create({"lora": {"r": r}, "x": None})

    cache = ComposeCache(Loader(), None)
    assert cache._is_group("model") and cache._is_group("hydra/launcher") and not cache._is_group("lora.r")
    cache.compose(["model=distilgpt2", "profile=local_cpu"])  # groups only: that job's own composition
    assert calls == [["model=distilgpt2", "profile=local_cpu"]]
    assert cache.compose(["model=distilgpt2", "lora.r=4"]).lora.r == 4
    assert calls[1:] == [["model=distilgpt2"], ["model=distilgpt2", "lora.r=4"]]  # base, then the check
    assert cache.compose(["model=distilgpt2", "lora.r=8"]).lora.r == 8 and len(calls) == 3 and cache.fast == 1


def plan(loader, cfg, jobs):
    fake = type("Launcher", (), {"config": cfg, "hydra_context": type("Ctx", (), {"config_loader": loader})()})()
    return [dataclasses.asdict(j) for j in launcher.plan_jobs(fake, jobs, 0, "slurm")]


def test_the_plan_is_the_same_with_and_without_the_cache(hydra_loader, monkeypatch, tmp_path):
    """Statuses, reasons, resources and run dirs; an unknown `+` key and an out-of-range value are invalid alike."""
    loader, cfg = hydra_loader(f"output_root={tmp_path}")
    jobs = [*JOBS, ["model=distilgpt2", "profile=1cpu_1a100", "+lora.extra=1", "lora.r=4"],
            ["model=distilgpt2", "profile=1cpu_1a100", "+lora.extra=1", "lora.r=8"],
            ["model=distilgpt2", "profile=1cpu_1a100", "lora.r=0", "lora.dropout=0", "eval.num_examples=null",
             "data.instruction=x", "lora.target_modules=null", "train.seed=1"]]
    fast = plan(loader, cfg, jobs)
    monkeypatch.setenv(compose_mod.ENV, "0")
    assert fast == plan(loader, cfg, jobs)
    assert [j["status"] for j in fast] == ["submit"] * len(JOBS) + ["invalid"] * 3
    assert "lora.extra is invalid: nothing reads it" in fast[-2]["reason"] and "lora.r" in fast[-1]["reason"]
    assert not list(tmp_path.rglob("*"))


@pytest.fixture
def count_compositions(monkeypatch):
    calls: list = []
    real = ConfigLoaderImpl.load_sweep_config

    def counted(self, master_config, sweep_overrides):
        calls.append(list(sweep_overrides))
        return real(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)
    return calls


@pytest.mark.parametrize("sweeper, cache, expected", [
    ("medsweep", "1", 2),  # the base and the first job's check, for 4 jobs of one structure
    ("medsweep", "0", 4),  # the launcher's own composition of each job
    ("basic", "0", 8),     # before: Hydra's sweeper composed every job too
])
def test_a_plan_composes_each_job_once_at_most(tmp_path, capsys, monkeypatch, count_compositions, sweeper, cache,
                                               expected):
    monkeypatch.setenv(compose_mod.ENV, cache)
    multirun(f"hydra/sweeper={sweeper}", "hydra/launcher=slurm", "experiment=smoke", "lora.r=4,8", "lora.alpha=8,16",
             f"output_root={tmp_path}", "plan=true")
    assert len(count_compositions) == expected
    assert "4 jobs: 4 to run" in capsys.readouterr().out


def test_the_sweeper_still_batches_and_validates_for_other_launchers(tmp_path, count_compositions, monkeypatch):
    """max_batch_size keeps its meaning; a launcher other than medsweep's gets the basic sweeper's check of each
    batch before anything runs."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    from medsweep.run import config_schema  # noqa: F401

    monkeypatch.chdir(tmp_path)
    ran: list = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        batches = hydra.multirun("config", task_function=lambda cfg: ran.append(cfg.lora.r),
                                 with_log_configuration=False,
                                 overrides=["hydra/launcher=basic", "lora.r=4,8,16", f"output_root={tmp_path}",
                                            "hydra.sweeper.max_batch_size=2"])
        assert [len(b) for b in batches] == [2, 1] and ran == [4, 8, 16]
        assert len(count_compositions) == 6  # the sweeper's check and the basic launcher's composition, per job
        with pytest.raises(ConfigCompositionException):
            hydra.multirun("config", task_function=lambda cfg: ran.append(cfg.lora.r), with_log_configuration=False,
                           overrides=["hydra/launcher=basic", "lora.r=32,four", f"output_root={tmp_path}"])
    assert ran == [4, 8, 16]  # the bad job stopped the batch before its first job ran


def test_the_plan_says_how_many_configs_hydra_composed(hydra_loader, tmp_path, caplog):
    loader, cfg = hydra_loader(f"output_root={tmp_path}")
    with caplog.at_level("DEBUG", logger="medsweep.launcher"):
        plan(loader, cfg, JOBS)
    assert f"plan: {len(JOBS)} job configs, " in caplog.text and " composed by Hydra" in caplog.text
