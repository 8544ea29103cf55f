"""Device checks at job start, with torch.cuda mocked (no GPU here): the build's kernels against each GPU's compute
capability, native bf16, the distributed fields, peak memory per GPU."""

from types import SimpleNamespace

import pytest
import torch

from medsweep import hardware
from medsweep.errors import ConfigError
from medsweep.hardware import Hardware

# a cu128 / cu130-like wheel: no sm_70 since torch 2.11
NO_VOLTA = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
GPUS = {"v100": ("Tesla V100-SXM2-16GB", (7, 0)), "t4": ("Tesla T4", (7, 5)), "rtx8000": ("Quadro RTX 8000", (7, 5)),
        "a100": ("NVIDIA A100-SXM4-40GB", (8, 0)), "a6000": ("NVIDIA RTX A6000", (8, 6))}


@pytest.fixture
def fake_cuda(monkeypatch):
    """fake_cuda(gpus, arch_list): torch.cuda sees these GPUs (names from GPUS) and this build's arch list."""
    def install(gpus: list[str], arch_list: list[str], cuda_version: str = "13.0"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: GPUS[gpus[i]][0])
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: GPUS[gpus[i]][1])
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # says yes on V100 too (emulated)
        monkeypatch.setattr(torch.version, "cuda", cuda_version)
    return install


def profile(device="cuda", precision="auto", cpus=4):
    return SimpleNamespace(name="test", device=device, precision=precision, cpus=cpus)


def test_v100_refused_by_a_build_without_sm70(fake_cuda):
    fake_cuda(["v100"], NO_VOLTA)
    with pytest.raises(ConfigError) as err:
        hardware.resolve(profile(precision="fp16"))
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("Tesla V100-SXM2-16GB", "sm_70", torch.__version__, "CUDA 13.0", "sm_75 sm_80",
                 "make install TORCH_INDEX=https://download.pytorch.org/whl/cu126"):
        assert part in msg


@pytest.mark.parametrize("gpu, arch_list, ok", [
    ("a100", NO_VOLTA, True),
    ("a6000", ["sm_80", "sm_90"], True),  # sm_86 runs the sm_80 cubin (same major, lower minor)
    ("t4", ["sm_70", "sm_80"], True),
    ("t4", ["sm_80", "sm_90"], False),  # no 7.x cubin, no PTX
    ("t4", ["sm_80", "compute_70"], True),  # PTX compute_70 is JIT-compiled for 7.5
    ("v100", ["sm_75", "compute_75"], False),  # PTX only runs forward, never on an older GPU
    ("v100", CU126, True),
    ("a100", ["sm_90a", "sm_90"], False),
])
def test_arch_compatibility(fake_cuda, gpu, arch_list, ok):
    fake_cuda([gpu], arch_list)
    if ok:
        hardware.check_cuda_arch()
    else:
        with pytest.raises(ConfigError, match="cannot run this torch build"):
            hardware.check_cuda_arch()


def test_every_gpu_used_is_checked(fake_cuda):
    fake_cuda(["a100", "v100"], NO_VOLTA)
    hardware.resolve(profile(), mode="data_parallel", world_size=2, local_rank=0)  # rank 0 owns the A100 only
    with pytest.raises(ConfigError, match=r"GPU 1 \(Tesla V100"):
        hardware.resolve(profile(precision="fp16"), mode="data_parallel", world_size=2, rank=1, local_rank=1)
    with pytest.raises(ConfigError, match=r"GPU 1 \(Tesla V100"):
        hardware.resolve(profile(precision="fp16"), mode="model_split")  # split: both GPUs
    with pytest.raises(ConfigError, match="GPU 2 is invalid: this process sees 2 GPU"):
        hardware.resolve(profile(), mode="data_parallel", world_size=3, local_rank=2)


def test_bf16_only_where_native(fake_cuda):
    fake_cuda(["v100"], CU126)
    assert hardware.resolve(profile()).precision == "fp16"  # is_bf16_supported() says yes: emulation
    with pytest.raises(ConfigError,
                       match=r"precision=bf16 is invalid: GPU 0 \(Tesla V100-SXM2-16GB, sm_70\).*use fp16"):
        hardware.resolve(profile(precision="bf16"))
    fake_cuda(["rtx8000"], CU126)
    assert hardware.resolve(profile()).precision == "fp16"
    fake_cuda(["a100"], CU126)
    assert hardware.resolve(profile()).precision == "bf16"
    assert hardware.resolve(profile(precision="bf16")).precision == "bf16"
    fake_cuda(["a100", "rtx8000"], CU126)
    assert hardware.resolve(profile(), mode="model_split").precision == "fp16"  # every GPU of the split


def test_distributed_fields_and_threads(fake_cuda, monkeypatch):
    monkeypatch.setattr(hardware, "usable_cores", lambda: 16)
    cpu = hardware.resolve(profile(device="cpu", precision="fp32", cpus=8))
    assert (cpu.mode, cpu.world_size, cpu.rank, cpu.local_rank, cpu.threads) == ("single", 1, 0, 0, 8)
    assert cpu.torch_device == torch.device("cpu") and cpu.gpus == []
    fake_cuda(["a100"] * 4, NO_VOLTA)
    hw = hardware.resolve(profile(cpus=8), mode="data_parallel", world_size=4, rank=3, local_rank=3)
    assert (hw.mode, hw.world_size, hw.rank, hw.local_rank) == ("data_parallel", 4, 3, 3)
    assert hw.threads == 2 and hw.torch_device == torch.device("cuda", 3) and hw.gpus == [3]
    assert hardware.resolve(profile(cpus=2), mode="data_parallel", world_size=4).threads == 1
    assert hardware.resolve(profile(), mode="model_split").gpus == [0, 1, 2, 3]
    assert Hardware("cpu", "fp32", 2).mode == "single"  # existing callers keep working


def test_usable_cores_is_the_affinity_mask_not_the_machines_count(monkeypatch):
    """A SLURM job with cpus_per_task=1 (or a pinned test worker) sees every core of the node in os.cpu_count()."""
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 64)
    assert hardware.usable_cores() == 1
    monkeypatch.delattr(hardware.os, "sched_getaffinity")  # not Linux
    assert hardware.usable_cores() == 64
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: None)  # a platform Python cannot tell
    assert hardware.usable_cores() == 1


def test_peak_memory_per_gpu(fake_cuda, monkeypatch):
    fake_cuda(["a100"] * 3, NO_VOLTA)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i=None: (i + 1) * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda i=None: (i + 1) * 2**31)
    split = hardware.peak_memory(Hardware("cuda", "bf16", 1, mode="model_split"))
    assert split["peak_memory_mb"] == (1 + 2 + 3) * 1024 and split["peak_reserved_mb"] == (1 + 2 + 3) * 2048
    assert [g["gpu"] for g in split["per_gpu"]] == [0, 1, 2] and split["per_gpu"][2]["max_allocated_mb"] == 3072
    own = hardware.peak_memory(Hardware("cuda", "bf16", 1, mode="data_parallel", world_size=3, rank=2, local_rank=2))
    assert own["peak_memory_mb"] == 3072 and [g["gpu"] for g in own["per_gpu"]] == [2]
    assert hardware.peak_memory(Hardware("cuda", "bf16", 1, local_rank=1))["peak_reserved_mb"] == 4096


def test_peak_memory_on_cpu_is_rss():
    mem = hardware.peak_memory(Hardware("cpu", "fp32", 1))
    assert set(mem) == {"peak_memory_mb"} and mem["peak_memory_mb"] > 10
    assert hardware.peak_memory_mb("cpu") >= mem["peak_memory_mb"]


@pytest.mark.parametrize("device, precision, has_bf16, expected", [
    ("auto", "auto", False, ("cpu", "fp32")),  # no CUDA: the CPU; bf16 would be emulated there, so fp32
    ("auto", "auto", True, ("cpu", "bf16")),  # AVX512-BF16 / AMX: native bf16 on the CPU
    ("cpu", "auto", False, ("cpu", "fp32")),
    ("cpu", "bf16", False, ("cpu", "bf16")),  # asked for explicitly: granted (emulated, the user's choice)
    ("cpu", "fp32", True, ("cpu", "fp32")),
])
def test_resolve_without_cuda(monkeypatch, device, precision, has_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: has_bf16)
    hw = hardware.resolve(profile(device=device, precision=precision))
    assert (hw.device, hw.precision) == expected and hw.gpus == []


def test_resolve_errors_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^profile.device=cuda is invalid: no CUDA GPU is visible on this machine "
                                          r"\(profile test\); use profile=local_cpu"):
        hardware.resolve(profile(device="cuda"))
    with pytest.raises(ConfigError, match=r"^profile.precision=fp16 is invalid on the CPU: allowed fp32, bf16, auto"):
        hardware.resolve(profile(device="cpu", precision="fp16"))


@pytest.mark.parametrize("device, precision, gpu, expected", [
    ("auto", "auto", "a100", ("cuda", "bf16", torch.bfloat16)),  # CUDA visible: auto picks it
    ("cuda", "fp16", "a100", ("cuda", "fp16", torch.float16)),
    ("cuda", "fp32", "v100", ("cuda", "fp32", torch.float32)),
    ("cpu", "auto", "a100", ("cpu", "fp32", torch.float32)),  # a CPU profile on a GPU node stays on the CPU
])
def test_resolve_with_cuda(fake_cuda, monkeypatch, device, precision, gpu, expected):
    fake_cuda([gpu], CU126)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    hw = hardware.resolve(profile(device=device, precision=precision))
    assert (hw.device, hw.precision, hw.weight_dtype) == expected


def test_resolve_checks_the_build_before_anything_else(fake_cuda):
    fake_cuda(["v100"], NO_VOLTA)
    with pytest.raises(ConfigError, match=r"GPU 0 \(Tesla V100-SXM2-16GB, sm_70\) cannot run this torch build"):
        hardware.resolve(profile(precision="fp16"))
    fake_cuda(["a100"], NO_VOLTA)  # the GPU a data-parallel rank owns must exist
    with pytest.raises(ConfigError, match=r"GPU 1 is invalid: this process sees 1 GPU\(s\)"):
        hardware.resolve(profile(), mode="data_parallel", world_size=2, rank=1, local_rank=1)


def test_cpu_weights_stay_fp32_whatever_the_precision():
    # bf16 on the CPU runs through autocast; the weights themselves stay fp32 there
    assert Hardware("cpu", "bf16", 2).weight_dtype == torch.float32
    assert Hardware("cuda", "bf16", 2).weight_dtype == torch.bfloat16
