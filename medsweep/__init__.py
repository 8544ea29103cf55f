"""medsweep: LoRA/QLoRA fine-tuning sweeps for medical question answering."""

import logging
from pathlib import Path

__version__ = "0.1.0"

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra config groups (conf/), for every entrypoint

# `import torch` autoloads bitsandbytes (a torch device-backend entry point); on a CPU with AVX512-BF16 its CPU
# backend then fetches an optional 4-bit CPU kernel from the hub through the `kernels` package (a dependency of
# transformers since 5.25) and warns on stderr, once per process, when it cannot: `kernels` missing, or the hub
# offline (then `kernels` itself first warns that it skips the publisher trust check). Those lines would precede
# every error and fill every SLURM log; the CPU 4-bit path works without that kernel.
BNB_CPU_KERNEL_REPO = "kernels-community/quantization-bitsandbytes"
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _not_bnb_offline_trust_skip(record: logging.LogRecord) -> bool:
    """Drops only the offline trust-check line for bitsandbytes' own kernel; other repositories' lines still show."""
    message = record.getMessage()
    return not (message.startswith("Skipping publisher trust check") and BNB_CPU_KERNEL_REPO in message)


logging.getLogger("kernels._internals.hf_hub").addFilter(_not_bnb_offline_trust_skip)
