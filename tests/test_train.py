"""medsweep.train: the Trainer as build_trainer builds it (on the CPU with bf16 precision the frozen Linears stored in
bf16 and the step under autocast; with train.fast_kernels=false the library's own LoRA layers, attention and loss),
the data-parallel TrainingArguments, and the divergence check (a non-finite loss or a loss scaler that skips every
step fails the run)."""

import json
import math
from pathlib import Path

import pytest
import torch

from medsweep import metrics, models, prompts, train
from medsweep.errors import TrainingDiverged
from medsweep.hardware import Hardware
from medsweep.prompts import PromptStyle
from tests.conftest import RECORDS

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

CPU = Hardware(device="cpu", precision="fp32", threads=2)


def _smoke_trainer(tmp_path: Path, hw: Hardware, *overrides: str):
    """(cfg, model, trainer) of experiment=smoke for two logged steps on `hw`, built as run.py builds them."""
    from hydra import compose, initialize_config_dir

    from medsweep.run import config_schema  # noqa: F401

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", "train.max_steps=2", "train.logging_steps=1",
                                           *overrides])
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, hw, seed=0)
    model = models.add_lora(model, cfg.lora, cfg.model)
    tokenizer.padding_side = "right"
    dataset, _ = prompts.tokenize(RECORDS * 2, tokenizer, PromptStyle.of(cfg), cfg.train.max_seq_length)
    args = train.training_args(cfg.train, cfg.profile, hw, tmp_path / "checkpoints")
    return cfg, model, train.build_trainer(model, tokenizer, dataset, args, [], fast_kernels=cfg.train.fast_kernels)


def test_bf16_cpu_training_step_runs_through_the_trainer(tmp_path):
    """profile precision bf16 on the CPU: build_trainer stores the frozen Linears in bf16 and the Trainer's
    autocast makes the step run (emulated on CPUs without native bf16: the tiny model keeps it quick)."""
    _, model, trainer = _smoke_trainer(tmp_path, Hardware(device="cpu", precision="bf16", threads=2))
    down = model.get_base_model().model.layers[0].mlp.down_proj
    assert down.base_layer.weight.dtype == torch.bfloat16
    dtypes = []  # the answer-only loss must run under the Trainer's autocast (it bypasses model.forward)
    hook = down.lora_A["default"].register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    trainer.train()
    hook.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    losses = [h["loss"] for h in train.loss_history(trainer)]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_without_fast_kernels_the_trainer_runs_the_library_computations(tmp_path, cross_entropy_calls):
    """train.fast_kernels=false (build_trainer(fast_kernels=False)): peft's LoRA layers with torch's dropout stay
    as they are, the model keeps SDPA, and the Trainer's loss is the library's cross-entropy over full logits."""
    from peft.tuners.lora.layer import Linear

    cfg, model, trainer = _smoke_trainer(tmp_path, CPU, "train.fast_kernels=false")
    assert cfg.train.fast_kernels is False
    lora = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(lora) == 2 * 7 and all(type(m) is Linear for m in lora)  # not kernels' FusedLoraLinear
    assert all(type(d) is torch.nn.Dropout for m in lora for d in m.lora_dropout.values())  # not FastDropout
    assert model.get_base_model().config._attn_implementation == "sdpa"
    trainer.train()
    assert cross_entropy_calls == {"linear": 0, "plain": 2}
    assert len(train.loss_history(trainer)) == 2


def test_training_args_split_the_global_batch_across_processes():
    from omegaconf import OmegaConf

    from medsweep.hardware import Hardware

    profile = OmegaConf.create({"dataloader_workers": 0, "time_limit_min": 240})
    hw = Hardware(device="cpu", precision="fp32", threads=1, mode="data_parallel", world_size=2)
    # TrainingArguments would join the process group here; only the keyword arguments are checked
    kwargs = train._data_parallel_args(profile, hw)
    assert kwargs["accelerator_config"] == {"split_batches": True}
    assert kwargs["ddp_backend"] == "gloo" and kwargs["average_tokens_across_devices"] is True
    assert kwargs["ddp_timeout"] == 240 * 60  # rank 0's evaluations may take longer than torch's default


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_processes_train_on_the_global_batches_of_one(tmp_path, grad_accum):
    """Under data parallelism every process draws the run's own order and accelerate hands each its slice of every
    global batch (split_batches): the examples of each step are one process's, grouped by length over
    megabatches of the global batch times grad_accum (transformers' LengthGroupedSampler), not of a slice."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    _, _, trainer = _smoke_trainer(tmp_path, CPU, "train.batch_size=4", f"train.grad_accum={grad_accum}")
    assert trainer.args.per_device_train_batch_size == 4  # the global batch: split_batches divides it
    sampler = trainer._get_train_sampler()
    assert sampler.megabatch == 4 * grad_accum and sampler.lengths is not None
    one = list(BatchSampler(sampler, 4, drop_last=True))
    ranks = [list(BatchSamplerShard(BatchSampler(trainer._get_train_sampler(), 4, drop_last=True), num_processes=2,
                                    process_index=r, split_batches=True)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    sampler.set_epoch(1)
    assert sampler.order() != trainer._get_train_sampler().order()  # an epoch's own order, the same on every rank


def test_a_nan_loss_fails_the_run(compose, tmp_path, embedded_dir):
    from medsweep import run

    cfg = compose(["experiment=smoke", "train.lr=1e30", "train.max_steps=4"])
    with pytest.raises(TrainingDiverged, match="loss nan|loss inf"):
        run.train_eval(cfg, tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert rec["status"] == "failed" and "TrainingDiverged: training diverged" in rec["error"]
    assert rec["metric_definitions"] == metrics.definitions().to_dict()  # a failed run's record has them too


class _Optimizer:
    step_was_skipped = True


def test_a_scaler_that_skips_every_step_fails_the_run():
    check = train.DivergenceCheck()
    for _ in range(3):
        check.on_step_end(None, None, None, optimizer=_Optimizer())
    with pytest.raises(TrainingDiverged, match="skipped all 3"):
        check.on_train_end(None, None, None)
    in_a_row = train.DivergenceCheck()
    with pytest.raises(TrainingDiverged, match="50 optimizer steps in a row"):
        for step in range(60):
            in_a_row.on_step_end(None, type("S", (), {"global_step": step})(), None, optimizer=_Optimizer())
    fine = train.DivergenceCheck()  # the first steps of fp16 skip while the scale calibrates: not an error
    fine.on_step_end(None, None, None, optimizer=_Optimizer())
    fine.on_step_end(None, None, None, optimizer=object())
    fine.on_train_end(None, None, None)
