"""medsweep.fit against published figures (hub checkpoint sizes, KV-cache sizes, LoRA / QLoRA memory tables) and
the parallel layout it picks for each profile. Expected values come from the cited sources, not from fit.py."""

import pytest

from medsweep import fit, kernels
from medsweep.config import validate
from medsweep.errors import ConfigError

GB, GIB, MIB, KIB = 1e9, 2**30, 2**20, 2**10


def estimate(compose, *overrides):
    cfg = compose(list(overrides))
    validate(cfg)
    return fit.estimate(cfg)


# Total size of the bf16 safetensors shards on the Hugging Face hub (the files list of each repo):
#   meta-llama/Llama-2-7b-hf       9.98 + 3.50 GB
#   meta-llama/Meta-Llama-3-8B     4.98 + 5.00 + 4.92 + 1.17 GB
#   mistralai/Mistral-7B-v0.1      14.48 GB (9.94 + 4.54)
#   google/gemma-1.1-7b-it         5.00 + 4.98 + 4.98 + 2.11 GB
@pytest.mark.parametrize("model, published_gb", [
    ("llama2_7b", 9.98 + 3.50),
    ("llama3_8b", 4.98 + 5.00 + 4.92 + 1.17),
    ("mistral_7b", 14.48),
    ("gemma_1.1_7b", 5.00 + 4.98 + 4.98 + 2.11),
])
def test_16bit_weights_match_the_published_checkpoints(compose, model, published_gb):
    est = estimate(compose, f"model={model}", "profile=1cpu_1a100")
    assert est.parts["weights"] * GIB / GB == pytest.approx(published_gb, rel=0.015)


# Pre-quantized NF4 (double quantization) checkpoints on the hub, embedding and LM head kept in 16-bit:
#   unsloth/llama-3-8b-bnb-4bit   model.safetensors 5.70 GB
#   unsloth/mistral-7b-bnb-4bit   model.safetensors 4.13 GB
# peft's prepare_model_for_kbit_training then casts every parameter that is not 4-bit to fp32 (peft/utils/other.py,
# "cast all non INT8 parameters to fp32"; huggingface/peft#816, unsloth PR #1186 "do not upcast lm_head and
# embedding to float32": 25% less memory): the untied embedding and head, 2 x vocab x 4096 parameters, go from 2 to
# 4 bytes each.
@pytest.mark.parametrize("model, checkpoint_gb, vocab", [
    ("llama3_8b", 5.70, 128256),
    ("mistral_7b", 4.13, 32000),
])
def test_qlora_weights_are_the_nf4_checkpoint_plus_the_fp32_upcast_of_embedding_and_head(compose, model,
                                                                                         checkpoint_gb, vocab):
    est = estimate(compose, f"model={model}", "profile=1cpu_1v100", "model.load_in_4bit=true")
    upcast_gb = 2 * vocab * 4096 * 2 / GB
    assert est.parts["weights"] * GIB / GB == pytest.approx(checkpoint_gb + upcast_gb, rel=0.03)


def test_tied_embeddings_are_counted_once(compose):
    # Gemma ties its LM head to the 256000 x 3072 embedding: in fp32 under QLoRA that is 3.1 GB, not 6.3
    tied = estimate(compose, "model=gemma_1.1_7b", "profile=1cpu_1a100", "model.load_in_4bit=true")
    untied = estimate(compose, "model=gemma_1.1_7b", "profile=1cpu_1a100", "model.load_in_4bit=true",
                      "model.tie_word_embeddings=false")
    extra = 256000 * 3072 * (4 - (4 + 0.127) / 8)  # a second copy in fp32 instead of those params in NF4
    assert (untied.parts["weights"] - tied.parts["weights"]) * GIB == pytest.approx(extra, rel=0.01)


# KV cache per token in fp16: 2 (K and V) x layers x KV heads x head_dim x 2 bytes.
#   Llama-2-7B: 0.5 MB per token; NVIDIA, "Mastering LLM Techniques: Inference Optimization" (2023): Llama 2 7B,
#   batch 1, 4096 tokens, fp16 -> ~2 GB of KV cache.
#   Llama-3-8B / Mistral-7B: grouped-query attention, 8 KV heads x 128: 128 KB per token (4x less).
#   Gemma-7B: 28 layers x 16 KV heads x head_dim 256: 448 KB per token.
@pytest.mark.parametrize("model, per_token", [
    ("llama2_7b", 512 * KIB),
    ("llama3_8b", 128 * KIB),
    ("mistral_7b", 128 * KIB),
    ("gemma_1.1_7b", 448 * KIB),
])
def test_kv_cache_per_token(compose, model, per_token):
    est = estimate(compose, f"model={model}", "profile=1cpu_1a100", "eval.batch_size=1",
                   "train.max_seq_length=4032", "eval.max_new_tokens=64")  # 4096 tokens
    assert est.parts["kv_cache"] * GIB / 4096 == pytest.approx(per_token, rel=1e-6)
    if model == "llama2_7b":
        assert est.parts["kv_cache"] == pytest.approx(2.0, rel=0.01)  # NVIDIA's ~2 GB for 4096 tokens


def test_qlora_keeps_activations_and_kv_cache_in_fp32(compose):
    """After prepare_model_for_kbit_training the embeddings and norms are fp32 and bitsandbytes' Linear4bit returns
    its input's dtype (bitsandbytes/nn/modules.py: `.to(inp_dtype)`), so the residual stream and the K/V it caches
    are fp32: the QLoRA memory blow-up of bitsandbytes-foundation/bitsandbytes#1569 (Ministral 8B, 4096 tokens:
    63,082 MB without prepare_model_for_kbit_training, 81,076 MB with it, 72,840 MB for bf16 LoRA)."""
    bf16 = estimate(compose, "model=llama3_8b", "profile=1cpu_1a100")
    nf4 = estimate(compose, "model=llama3_8b", "profile=1cpu_1a100", "model.load_in_4bit=true")
    assert nf4.parts["kv_cache"] == pytest.approx(2 * bf16.parts["kv_cache"])
    assert nf4.parts["activations"] == pytest.approx(2 * bf16.parts["activations"])


# Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models": one layer stores
# sbh(34 + 5as/h) bytes in 16-bit (eq. 1; the 2 bytes per element are included; the 5as/h attention scores are not
# kept by flash / memory-efficient attention); full recomputation keeps only each layer's input, 2sbh bytes.
def test_activations_follow_korthikanti(compose):
    s, b, h, layers = 512, 4, 4096, 32  # Llama-2-7B, batch 4 x 512
    plain = estimate(compose, "model=llama2_7b", "profile=1cpu_1a100", "train.gradient_checkpointing=false")
    ckpt = estimate(compose, "model=llama2_7b", "profile=1cpu_1a100", "train.gradient_checkpointing=true")
    assert plain.parts["activations"] * GIB == pytest.approx(34 * s * b * h * layers)  # 9.1 GB, not twice that
    # the saved layer inputs + the one layer being recomputed in the backward pass
    assert ckpt.parts["activations"] * GIB == pytest.approx(2 * s * b * h * layers + 34 * s * b * h)


def test_loss_term_is_one_chunk_of_logits(compose):
    """kernels.linear_cross_entropy never holds tokens x vocab logits: ROW_CHUNK rows of them at a time."""
    assert fit.LOSS_ROWS == kernels.ROW_CHUNK
    est = estimate(compose, "model=gemma_1.1_7b", "profile=1cpu_1a100")  # 4 x 512 tokens, 256k vocabulary
    assert est.parts["loss"] * GIB == pytest.approx(kernels.ROW_CHUNK * 256000 * 6)


# Published memory for fine-tuning a 7B model, training only (the evaluation batch kept small here):
#   LLaMA-Factory README, "Hardware Requirement" table: LoRA 16-bit 7B 16 GB, QLoRA 4-bit 7B 6 GB
#   torchtune tutorial "Fine-Tuning Llama2 with QLoRA": Llama2-7b QLoRA "in <10 GB of memory"
#   PyTorch blog "Finetune LLMs on your own consumer hardware" (Belkada et al. 2023): QLoRA Llama-2 7B on one T4 16 GB
# medsweep's QLoRA runs through peft's prepare_model_for_kbit_training (fp32 embedding, head and activations), so
# it lands in the upper part of the 6-10 GB QLoRA range.
def test_7b_training_memory_matches_published_tables(compose):
    train_only = ["model=llama2_7b", "train.batch_size=4", "train.max_seq_length=512", "eval.batch_size=1"]
    lora = estimate(compose, *train_only, "profile=1cpu_1rtx8000")
    qlora = estimate(compose, *train_only, "profile=1cpu_1v100", "model.load_in_4bit=true")
    assert lora.parts["training"] > lora.parts["evaluation"] and qlora.parts["training"] > qlora.parts["evaluation"]
    assert 15 <= lora.need_gib * GIB / GB <= 17.5
    assert 6 <= qlora.need_gib * GIB / GB <= 10
    assert qlora.fits and qlora.need_gib < 16 * GB / GIB  # fits a 16 GB T4 / V100


def test_evaluation_kv_cache_dominates_full_attention_7b(compose):
    """Llama-2-7B, eval batch 32 x (512 + 64) tokens: 32 x 576 x 0.5 MB = 9 GiB of KV cache, more than training."""
    est = estimate(compose, "model=llama2_7b", "profile=1cpu_1a100")
    assert est.parts["kv_cache"] == pytest.approx(32 * 576 * 0.5 * MIB / GIB)
    assert est.parts["evaluation"] > 4 * est.parts["training"]
    refused = estimate(compose, "model=llama2_7b", "profile=1cpu_1v100")
    assert not refused.fits and "eval.batch_size" in refused.detail


def test_gpu_hours_count_the_recompute_and_the_layout(compose):
    # FLOPs per token: 2N forward + 2N activation gradients for a frozen base; checkpointing adds one forward (2N):
    # Korthikanti et al. 2022, full recomputation = one more forward pass
    common = ["model=llama3_8b", "experiment=paper_grid"]
    ckpt = estimate(compose, *common, "profile=1cpu_1a100", "train.gradient_checkpointing=true")
    plain = estimate(compose, *common, "profile=1cpu_1a100", "train.gradient_checkpointing=false")
    assert ckpt.gpu_hours == pytest.approx(1.5 * plain.gpu_hours)
    tokens = 1900 * 512 * 0.6  # 1,900 training examples, mean 60% of 512 tokens, 1 epoch
    assert ckpt.gpu_hours == pytest.approx(6 * 8.03e9 * tokens / (312e12 * 0.3) / 3600)
    # data parallel over 2 A100s: half the time on each of 2 GPUs, the same GPU-hours as one
    data = estimate(compose, *common, "profile=4cpu_2a100")
    assert data.mode == "data_parallel" and data.gpu_hours == pytest.approx(ckpt.gpu_hours)
    # model split: layers run one GPU at a time, so one GPU's time while holding both
    split = estimate(compose, *common, "profile=4cpu_2a100", "profile.parallel=model")
    assert split.mode == "model_split" and split.gpu_hours == pytest.approx(2 * ckpt.gpu_hours)


# --- parallel(cfg): the layout -----------------------------------------------------------------------------------

def test_two_a100s_run_data_parallel(compose):
    # 80 GB A100: one bf16 Llama-3-8B replica (16.07 GB of weights) fits, so each GPU trains its own replica
    cfg = compose(["model=llama3_8b", "profile=4cpu_2a100"])
    assert cfg.profile.gpu_memory_gb == 80
    assert fit.parallel(cfg) == ("data_parallel", 2)
    est = fit.estimate(cfg)
    assert (est.mode, est.world_size, est.fits) == ("data_parallel", 2, True)
    assert est.have_gib == pytest.approx(80 * 0.95)  # one GPU's memory per replica
    assert "data parallel, 2 processes x 2 rows" in est.detail  # train.batch_size 4 is the global batch


def test_two_v100s_split_a_16bit_8b_model(compose):
    # 16 GB V100: 16.07 GB of fp16 Llama-3-8B weights cannot fit one GPU, so one process splits the layers
    cfg = compose(["model=llama3_8b", "profile=4cpu_2v100"])
    assert fit.parallel(cfg) == ("model_split", 1)
    est = fit.estimate(cfg)
    assert est.fits and est.have_gib == pytest.approx(2 * 16 * 0.95) and "model split across 2 GPUs" in est.detail


def test_qlora_on_two_v100s_runs_data_parallel(compose):
    # NF4: ~7.8 GB of weights per replica; with an evaluation batch of 8 one replica fits a 16 GB V100
    cfg = compose(["model=llama3_8b", "profile=4cpu_2v100", "model.load_in_4bit=true", "eval.batch_size=8"])
    assert fit.parallel(cfg) == ("data_parallel", 2)
    assert fit.estimate(cfg).fits
    # at the default evaluation batch of 32 the fp32 K/V cache and prefill of one replica outgrow one V100
    wide = compose(["model=llama3_8b", "profile=4cpu_2v100", "model.load_in_4bit=true"])
    assert fit.parallel(wide) == ("model_split", 1)


def test_cpu_layouts(compose):
    assert fit.parallel(compose(["profile=local_cpu"])) == ("cpu", 1)
    assert fit.parallel(compose(["profile=local_cpu", "profile.processes=1"])) == ("cpu", 1)
    cfg = compose(["profile=local_cpu", "profile.processes=2"])
    assert fit.parallel(cfg) == ("data_parallel", 2)
    est = fit.estimate(cfg)
    assert est.fits and (est.mode, est.world_size, est.gpu_hours) == ("data_parallel", 2, 0.0)


def test_single_gpu_profiles_are_single(compose):
    est = fit.estimate(compose(["model=mistral_7b", "profile=1cpu_1a100", "profile.parallel=data"]))
    assert (est.mode, est.world_size) == ("single", 1)


def test_parallel_model_forces_the_split(compose):
    cfg = compose(["model=distilgpt2", "profile=4cpu_2a100", "profile.parallel=model"])
    assert fit.parallel(cfg) == ("model_split", 1)
    assert fit.estimate(cfg).mode == "model_split"


def test_parallel_data_that_does_not_fit_one_gpu_is_refused(compose):
    cfg = compose(["model=llama3_8b", "profile=4cpu_2v100", "profile.parallel=data"])
    validate(cfg)
    assert fit.parallel(cfg) == ("data_parallel", 2)
    est = fit.estimate(cfg)
    assert not est.fits and est.have_gib == pytest.approx(16 * 0.95) and "profile.parallel=data" in est.detail


@pytest.mark.parametrize("overrides, key", [
    (["profile=4cpu_2a100", "train.batch_size=3"], "train.batch_size"),  # 3 rows cannot be split over 2 GPUs
    (["profile=local_cpu", "profile.processes=2", "train.batch_size=5"], "train.batch_size"),
    (["profile=4cpu_2a100", "profile.processes=2"], "profile.processes"),  # GPU layouts come from profile.parallel
    (["profile.processes=-1"], "profile.processes"),
    (["profile=4cpu_2a100", "profile.parallel=pipeline"], "profile.parallel"),
    (["model.kv_width=-1"], "model.kv_width"),
])
def test_parallel_settings_are_validated(compose, overrides, key):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert str(err.value).startswith(f"{key}=")


def test_odd_batch_is_fine_when_the_model_is_split(compose):
    validate(compose(["profile=4cpu_2a100", "train.batch_size=3", "profile.parallel=model"]))
