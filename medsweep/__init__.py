"""medsweep: LoRA/QLoRA fine-tuning sweeps for medical question answering."""

__version__ = "0.1.0"
