"""Device, precision and threads for a run, from its profile and what this machine really has."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from medsweep.errors import ConfigError


def _skip_bitsandbytes_without_cuda() -> None:
    """bitsandbytes only serves QLoRA, which medsweep runs on CUDA only; on a machine without CUDA, peft still
    imports it if installed, and that import pulls in torch._inductor: ~1-3 s of every job's start-up for
    nothing. Marking it absent makes peft and transformers treat it as not installed (MEDSWEEP_IMPORT_BNB=1
    keeps it)."""
    if "bitsandbytes" not in sys.modules and not os.environ.get("MEDSWEEP_IMPORT_BNB") \
            and not torch.cuda.is_available():
        # `import bitsandbytes` raises ImportError, find_spec returns None; typeshed types sys.modules' values as
        # ModuleType, but None is the documented way to block an import (importlib docs, sys.modules)
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]


_skip_bitsandbytes_without_cuda()


# A build without kernels for a GPU fails at its first CUDA op ("no kernel image is available"); cu126 builds still
# carry sm_70 (Volta), which the default PyPI CUDA builds dropped with torch 2.11.
TORCH_INDEX_HINT = "make install TORCH_INDEX=https://download.pytorch.org/whl/cu126"


@dataclass(frozen=True)
class Hardware:
    device: str  # cpu | cuda
    precision: str  # fp32 | bf16 | fp16: the compute precision (autocast on CPU, weights+autocast on GPU)
    threads: int  # torch intra-op threads
    mode: str = "single"  # single | data_parallel | model_split | cpu ...: how the job uses its GPUs
    world_size: int = 1  # processes of the job (data parallelism)
    rank: int = 0  # this process among them
    local_rank: int = 0  # this process on its node: the GPU it owns (unless the model is split)

    @property
    def torch_device(self) -> torch.device:
        """This process's device: its own GPU (cuda:local_rank) on CUDA, the CPU otherwise."""
        return torch.device("cuda", self.local_rank) if self.device == "cuda" else torch.device("cpu")

    @property
    def gpus(self) -> list[int]:
        """Indices of the GPUs this process uses (empty on the CPU)."""
        return gpu_indices(self.mode, self.local_rank) if self.device == "cuda" else []

    @property
    def weight_dtype(self) -> torch.dtype:
        """Base weights: half precision on GPU; fp32 on CPU (bf16 there runs through autocast)."""
        if self.device == "cuda":
            return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        return torch.float32


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 or AMX); without them bf16 is emulated and slower."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_indices(mode: str, local_rank: int) -> list[int]:
    """The GPUs a process uses: every visible one when the model is split across them, else its own."""
    return list(range(torch.cuda.device_count())) if mode == "model_split" else [local_rank]


def _gpu_name(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"GPU {index} ({torch.cuda.get_device_name(index)}, sm_{major}{minor})"


def arch_runs(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build compiled for `arch_list` (torch.cuda.get_arch_list()) runs on a GPU of `capability`: a cubin
    sm_XY runs on the same major with minor >= Y (CUDA binary compatibility; sm_XYa only on X.Y itself), PTX
    compute_XY is JIT-compiled for any capability >= X.Y."""
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", arch)
        if not match:
            continue
        kind, number, suffix = match.groups()
        built = (int(number) // 10, int(number) % 10)
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1] \
                and (suffix != "a" or built == tuple(capability)):
            return True
        if kind == "compute" and built <= tuple(capability) and (not suffix or built == tuple(capability)):
            return True
    return False


def check_cuda_arch(gpus: list[int] | None = None) -> None:
    """Refuse at job start, before the model loads, a torch build with no kernels for a GPU the job uses: otherwise
    the first CUDA op fails with "no kernel image is available" (e.g. a V100 with torch >= 2.11 from PyPI)."""
    if torch.version.cuda is None:  # ROCm or CPU build: no sm_XY list to check
        return
    visible = torch.cuda.device_count()
    gpus = list(range(visible)) if gpus is None else gpus
    for index in gpus:
        if not 0 <= index < visible:
            raise ConfigError(f"GPU {index} is invalid: this process sees {visible} GPU(s) "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    arch_list = torch.cuda.get_arch_list()
    for index in gpus:
        if arch_list and not arch_runs(torch.cuda.get_device_capability(index), arch_list):
            raise ConfigError(f"{_gpu_name(index)} cannot run this torch build: torch {torch.__version__} (CUDA "
                              f"{torch.version.cuda}) has kernels for {' '.join(arch_list)} only; reinstall torch "
                              f"with a build that carries it: {TORCH_INDEX_HINT}")


def native_bf16(gpus: list[int]) -> bool:
    """bf16 in hardware (Ampere, compute capability 8.0, and later) on every GPU: torch.cuda.is_bf16_supported()
    also says yes where bf16 is emulated (V100, Turing), which is far slower than fp16 there."""
    return all(tuple(torch.cuda.get_device_capability(i)) >= (8, 0) for i in gpus)


def pick_device(requested: str, setting: str, hint: str = "") -> str:
    """`requested` (auto | cpu | cuda) made concrete: auto is cuda when a GPU is visible. cuda without one is
    refused, naming the `setting` it came from (profile.device, generator.device), then `hint`."""
    cuda = torch.cuda.is_available()
    device = requested if requested != "auto" else ("cuda" if cuda else "cpu")
    if device == "cuda" and not cuda:
        raise ConfigError(f"{setting}=cuda is invalid: no CUDA GPU is visible{hint}")
    return device


def resolve(profile, *, mode: str = "single", world_size: int = 1, rank: int = 0, local_rank: int = 0) -> Hardware:
    """Pick the device and precision the profile asks for, checking the machine can do them. `mode`, `world_size`,
    `rank` and `local_rank` describe the job's processes (data parallelism) and are stored as given."""
    device = pick_device(profile.device, "profile.device", f" on this machine (profile {profile.name}); use "
                         f"profile=local_cpu or run on a GPU node")
    gpus = gpu_indices(mode, local_rank) if device == "cuda" else []
    if device == "cuda":
        check_cuda_arch(gpus)
    precision = profile.precision
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if native_bf16(gpus) else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError("profile.precision=fp16 is invalid on the CPU: allowed fp32, bf16, auto")
    if precision == "bf16" and device == "cuda" and not native_bf16(gpus):
        slow = ", ".join(_gpu_name(i) for i in gpus if tuple(torch.cuda.get_device_capability(i)) < (8, 0))
        raise ConfigError(f"profile.precision=bf16 is invalid: {slow} has no native bf16 (compute capability "
                          f"< 8.0, torch would emulate it); use fp16")
    # data parallelism: the profile's cores are shared by the job's processes
    threads = max(1, min(profile.cpus // max(1, world_size), usable_cores()))
    return Hardware(device=device, precision=precision, threads=threads, mode=mode, world_size=world_size,
                    rank=rank, local_rank=local_rank)


def autocast(hw: Hardware):
    """bf16/fp16 autocast on the run's device, or nothing for fp32."""
    if hw.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(hw.device, dtype=torch.bfloat16 if hw.precision == "bf16" else torch.float16)


def apply_threads(hw: Hardware) -> None:
    """Torch threads, and on CUDA the current device: this process's GPU, so that a bare `.to("cuda")` (batches,
    generation) lands where its model is under data parallelism."""
    if hw.device == "cuda":
        torch.cuda.set_device(hw.local_rank)
    torch.set_num_threads(hw.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(hw.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): the start-up overhead of a job when
    read at its first training step."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time after boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory of this process on its current GPU on CUDA, else its peak resident set size
    (`peak_memory(hw)` covers every GPU of the job)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def peak_memory(hw: Hardware) -> dict:
    """Peak memory of this process for the record: on CUDA, max allocated (tensors) and max reserved (what the
    caching allocator held, closer to what nvidia-smi shows) on each GPU it uses, and their sums; on the CPU the
    peak resident set size."""
    if hw.device != "cuda":
        return {"peak_memory_mb": _peak_rss_mb()}
    per_gpu = [{"gpu": i, "name": torch.cuda.get_device_name(i),
                "max_allocated_mb": torch.cuda.max_memory_allocated(i) / 2**20,
                "max_reserved_mb": torch.cuda.max_memory_reserved(i) / 2**20} for i in hw.gpus]
    return {"peak_memory_mb": sum(g["max_allocated_mb"] for g in per_gpu),
            "peak_reserved_mb": sum(g["max_reserved_mb"] for g in per_gpu), "per_gpu": per_gpu}
