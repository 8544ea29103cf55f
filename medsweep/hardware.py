"""Device, precision and threads for a run, from its profile and what this machine really has."""

from __future__ import annotations

import os
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
        sys.modules["bitsandbytes"] = None  # `import bitsandbytes` raises ImportError, find_spec returns None


_skip_bitsandbytes_without_cuda()


@dataclass(frozen=True)
class Hardware:
    device: str  # cpu | cuda
    precision: str  # fp32 | bf16 | fp16: the compute precision (autocast on CPU, weights+autocast on GPU)
    threads: int  # torch intra-op threads

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


def resolve(profile) -> Hardware:
    """Pick the device and precision the profile asks for, checking the machine can do them."""
    cuda = torch.cuda.is_available()
    device = profile.device if profile.device != "auto" else ("cuda" if cuda else "cpu")
    if device == "cuda" and not cuda:
        raise ConfigError(f"profile.device=cuda is invalid: no CUDA GPU is visible on this machine "
                          f"(profile {profile.name}); use profile=local_cpu or run on a GPU node")
    precision = profile.precision
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError("profile.precision=fp16 is invalid on the CPU: allowed fp32, bf16, auto")
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"profile.precision=bf16 is invalid: {torch.cuda.get_device_name(0)} has no bf16; use fp16")
    threads = max(1, min(profile.cpus, usable_cores()))
    return Hardware(device=device, precision=precision, threads=threads)


def apply_threads(hw: Hardware) -> None:
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
    """Peak GPU memory of this process on CUDA, else the peak resident set size of the process."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
