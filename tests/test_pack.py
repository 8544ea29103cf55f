"""Packed training (medsweep/pack.py, packrun.py): K LoRA runs of a sweep trained in one process on one base model
end with the adapters and metrics of their solo runs, each written to its own run directory as a solo run's."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medsweep import metrics, packrun, run

SMOKE = ["experiment=smoke", "train.max_steps=4", "train.save_steps=100", "eval.num_examples=4",
         "train.batch_size=2"]
# what the members of one pack differ in (lora settings, lr; the random model's seed is shared)
MEMBERS = [["lora.r=4", "lora.alpha=8", "lora.dropout=0"],
           ["lora.r=8", "lora.alpha=32", "lora.dropout=0.1", "train.lr=5e-3"],
           ["lora.r=2", "lora.alpha=4", "lora.dropout=0.2", "lora.target_modules=[q_proj,v_proj]"]]


def _adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def _quality(values):
    """The metrics that do not measure time."""
    return {k: v for k, v in values.items() if k not in metrics.LATENCY}


def _assert_same_adapter(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4, msg=key)


def test_a_pack_ends_with_the_solo_adapters_and_metrics(compose, tmp_path, embedded_dir):
    cfgs = [compose([*SMOKE, *m]) for m in MEMBERS]
    solo = [run.train_eval(c, tmp_path / f"solo{k}") for k, c in enumerate(cfgs)]
    dirs = [tmp_path / f"pack{k}" for k in range(len(cfgs))]
    packed = packrun.run_pack(cfgs, dirs)
    for k, (s, p) in enumerate(zip(solo, packed, strict=True)):
        assert p["status"] == "complete", p.get("error")
        _assert_same_adapter(_adapter(tmp_path / f"solo{k}"), _adapter(dirs[k]))
        assert _quality(p["metrics"]) == pytest.approx(_quality(s["metrics"]), rel=1e-6, abs=1e-9)
        assert [h["loss"] for h in p["train"]["log_history"]] == pytest.approx(
            [h["loss"] for h in s["train"]["log_history"]], rel=1e-4)
        assert p["packed_with"] == [d.name for d in dirs if d != dirs[k]]
        assert "packed_with" not in s
        solo_files = {f.name for f in (tmp_path / f"solo{k}").iterdir()} - {"checkpoints"}
        pack_files = {f.name for f in dirs[k].iterdir()} - {"checkpoints", packrun.CHECKPOINTS}
        assert pack_files == solo_files
        assert ({f.name for f in (dirs[k] / "adapter").iterdir()}
                == {f.name for f in (tmp_path / f"solo{k}" / "adapter").iterdir()})
        assert json.loads((dirs[k] / "adapter" / "adapter_config.json").read_text())["r"] == cfgs[k].lora.r
