"""medsweep: LoRA/QLoRA fine-tuning sweeps for medical question answering."""

import logging
from pathlib import Path

__version__ = "0.1.0"

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra config groups (conf/), for every entrypoint

# `import torch` autoloads bitsandbytes (a torch device-backend entry point); on a CPU with AVX512-BF16 its CPU
# backend then warns on stderr that the optional `kernels` package is missing, once per process. That line would
# precede every error and fill every SLURM log; the CPU 4-bit path works without it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
