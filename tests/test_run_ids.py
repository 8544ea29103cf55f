"""Run ids are stable across schema changes: a key added later is left out of the hash at its default, a key
removed is hashed at the value it always had, so a sweep re-run after an upgrade still finds its complete jobs.
The ids below were computed by the code before profile.parallel / profile.processes / model.kv_width /
model.tie_word_embeddings were added and model.dtype removed. Whatever names a config holds, a run's name stays one
bounded directory name."""

import hashlib
import json

import pytest
from omegaconf import OmegaConf

from medsweep.record import run_id

SMOKE = "tiny_random_sample_r8_a16_d0.05_L128_s0_local_cpu"
SMOKE_ID = f"{SMOKE}-477ee657"


@pytest.mark.parametrize("overrides, expected", [
    ([], "smollm2_135m_sample_r8_a16_d0.05_L512_s0_local_cpu-e8788746"),
    (["model=llama3_8b", "profile=4cpu_2a100"], "llama3_8b_sample_r8_a16_d0.05_L512_s0_4cpu_2a100-b13cde08"),
    (["experiment=smoke"], SMOKE_ID),
    (["model=gemma_1.1_7b", "lora.r=16", "profile=1cpu_1v100"],
     "gemma_1.1_7b_sample_r16_a16_d0.05_L512_s0_1cpu_1v100-bdfef580"),
])
def test_run_ids_of_earlier_runs_are_kept(compose, overrides, expected):
    assert run_id(compose(overrides)) == expected


def test_a_new_key_away_from_its_default_makes_a_new_run(compose):
    base = run_id(compose(["experiment=smoke"]))
    assert base == SMOKE_ID
    processes = run_id(compose(["experiment=smoke", "profile.processes=2"]))
    assert processes != base and processes.startswith(f"{SMOKE}-")
    model = run_id(compose(["model=llama3_8b", "profile=4cpu_2a100", "profile.parallel=model"]))
    assert model.startswith("llama3_8b_sample_r8_a16_d0.05_L512_s0_4cpu_2a100-") and not model.endswith("-b13cde08")
    # at their defaults, given or not, they leave the id alone
    assert run_id(compose(["experiment=smoke", "profile.processes=0", "profile.parallel=auto"])) == SMOKE_ID


def test_the_run_directory_is_named_by_the_run_id(compose):
    cfg = compose(["experiment=smoke", "output_root=/data/out", "sweep_name=grid"], return_hydra_config=True)
    assert str(cfg.hydra.run.dir) == f"/data/out/runs/{SMOKE_ID}"
    assert str(cfg.hydra.sweep.dir) == "/data/out/sweeps/grid" and str(cfg.hydra.sweep.subdir) == SMOKE_ID


def test_attempt_reruns_a_complete_config_into_a_new_directory(compose):
    """attempt is part of the configuration's identity (the hash), not of the readable name: attempt=1 gives the same
    readable name with another hash, so a new run directory next to the complete one."""
    dirs = {}
    for attempt in (0, 1, 2):
        cfg = compose(["experiment=smoke", f"attempt={attempt}", "output_root=/o"], return_hydra_config=True)
        dirs[attempt] = str(cfg.hydra.run.dir)
    assert dirs[0] == f"/o/runs/{SMOKE_ID}"
    assert dirs[1] == f"/o/runs/{SMOKE}-5ebf654d"
    assert dirs[2] == f"/o/runs/{SMOKE}-5c3db607"


def test_the_hash_is_sha256_of_the_identity_keys(compose):
    """The 8 hex digits: sha256 of the resolved config as sorted JSON, without the keys that do not change what a run
    computes, profile.parallel / profile.processes / train.fast_kernels left out at their defaults and model.dtype
    hashed at 'auto'."""
    cfg = compose(["experiment=smoke", "attempt=1"])
    body = OmegaConf.to_container(cfg, resolve=True)
    for key in ("logger", "output_root", "sweep_name", "resume", "plan", "detach", "pack", "pack_eval", "site",
                "judge"):
        del body[key]
    for group, key in [("model", "cache_dir"), ("train", "cache_tokenized"), ("eval", "cache_baseline"),
                       ("profile", "time_limit_min"), ("profile", "partition"), ("profile", "memory_gb"),
                       ("profile", "constraint"), ("profile", "dataloader_workers"), ("model", "kv_width"),
                       ("model", "tie_word_embeddings"), ("profile", "parallel"), ("profile", "processes"),
                       ("train", "fast_kernels"), ("eval", "semantic")]:
        del body[group][key]
    body["model"]["dtype"] = "auto"
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    assert digest == "5ebf654d" and run_id(cfg) == f"{SMOKE}-{digest}"


@pytest.mark.parametrize("override", [
    "output_root=/elsewhere", "sweep_name=other", "resume=false", "plan=true", "detach=true", "pack=4", "pack=auto",
    "pack_eval=mixed",
    "logger=wandb", "judge=local", "judge.max_new_tokens=64",
    "site.partition=gpu", "site.account=lab", "site.qos=high", "site.max_parallel=2", "site.mfu_assumed=0.5",
    "model.cache_dir=/tmp/cache", "train.cache_tokenized=false", "eval.cache_baseline=false",
    "profile.time_limit_min=5", "profile.partition=short", "profile.memory_gb=3", "profile.constraint=ib",
    "profile.dataloader_workers=1", "model.kv_width=64", "model.tie_word_embeddings=false",
])
def test_a_non_identity_key_keeps_the_id(compose, override):
    assert run_id(compose(["experiment=smoke", override])) == SMOKE_ID


@pytest.mark.parametrize("override, readable", [
    ("lora.r=4", "tiny_random_sample_r4_a16_d0.05_L128_s0_local_cpu"),
    ("lora.alpha=32", "tiny_random_sample_r8_a32_d0.05_L128_s0_local_cpu"),
    ("lora.dropout=0.1", "tiny_random_sample_r8_a16_d0.1_L128_s0_local_cpu"),
    ("train.max_seq_length=256", "tiny_random_sample_r8_a16_d0.05_L256_s0_local_cpu"),
    ("train.seed=3", "tiny_random_sample_r8_a16_d0.05_L128_s3_local_cpu"),
    ("profile=local_gpu", "tiny_random_sample_r8_a16_d0.05_L128_s0_local_gpu"),
    ("data=pubmedqa", "tiny_random_pubmedqa_r8_a16_d0.05_L128_s0_local_cpu"),
    ("train.lr=0.001", SMOKE), ("train.max_steps=7", SMOKE), ("data.split_seed=1", SMOKE),
    ("eval.max_new_tokens=9", SMOKE), ("profile.cpus=1", SMOKE), ("model.params_b=0.5", SMOKE),
])
def test_an_identity_key_changes_the_id(compose, override, readable):
    new = run_id(compose(["experiment=smoke", override]))
    assert new.rsplit("-", 1)[0] == readable and new != SMOKE_ID and len(new.rsplit("-", 1)[1]) == 8


def test_run_names_stay_one_bounded_directory_name(compose):
    from medsweep.record import NAME_MAX, run_id

    for overrides in (["data.name=../../etc"], ["model.name=a/b/c"], ["data.name=" + "x" * 400],
                      ["data.name=.hidden"]):
        name = run_id(compose(["experiment=smoke", *overrides], return_hydra_config=True))
        readable, digest = name.rsplit("-", 1)
        assert "/" not in name and not name.startswith(".") and len(readable) <= NAME_MAX and len(digest) == 8, name
    plain = run_id(compose(["experiment=smoke"], return_hydra_config=True))
    assert plain.startswith("tiny_random_sample_r8_a16_d0.05_L128_s0_local_cpu-")  # ordinary names unchanged
