"""medsweep.fit against published figures (hub checkpoint sizes, KV-cache sizes, LoRA / QLoRA memory tables) and
the parallel layout it picks for each profile. Expected values come from the cited sources, not from fit.py."""

import pytest

from medsweep import fit, kernels
from medsweep.checks import validate
from medsweep.errors import ConfigError

GB, GIB, MIB, KIB = 1e9, 2**30, 2**20, 2**10
_CONFIGS: dict = {}  # composed + validated configs by overrides: Hydra's composition is most of these tests' time


def config(compose, *overrides):
    if overrides not in _CONFIGS:
        cfg = compose(list(overrides))
        validate(cfg)
        _CONFIGS[overrides] = cfg
    return _CONFIGS[overrides]


def estimate(compose, *overrides):
    return fit.estimate(config(compose, *overrides))


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
    # the same figures as hours: 6 x 8.03e9 x 583,680 tokens = 2.81217e16 FLOPs at 312 TFLOPs x 0.3 MFU = 9.36e13
    # FLOP/s -> 300.4 s = 0.08346 h; without checkpointing 4/6 of that; the split holds 2 GPUs for that time
    assert ckpt.gpu_hours == pytest.approx(0.0834571, rel=1e-5)
    assert plain.gpu_hours == pytest.approx(0.0556381, rel=1e-5)
    assert data.gpu_hours == pytest.approx(0.0834571, rel=1e-5)
    assert split.gpu_hours == pytest.approx(0.1669142, rel=1e-5)


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


# --- the whole estimate in GiB, from published parameter counts and architectures, worked out by hand ------------
# Llama 3 8B (Meta's model card): 8.03e9 parameters, hidden 4096, 32 layers, vocabulary 128,256, 8 KV heads x 128
# (K/V width 1024). SmolLM2-135M (HuggingFaceTB config.json): 0.135e9 parameters, hidden 576, 30 layers, vocabulary
# 49,152, 3 KV heads x 64 (width 192), tied embeddings. Defaults: train batch 4 x 512 tokens, eval batch 32 x
# (512 + 64) tokens. 1 GiB = 1,073,741,824 bytes.

def test_llama3_8b_fp16_on_one_v100_in_gib(compose):
    est = estimate(compose, "model=llama3_8b", "profile=1cpu_1v100")
    # weights: 8.03e9 x 2 bytes = 16.06e9 B = 14.957 GiB
    assert est.parts["weights"] == pytest.approx(14.957041, rel=1e-6)
    # training, checkpointing on: 32 saved layer inputs 4x512x4096x32x2 B = 0.5 GiB + one layer recomputed
    # 4x512x4096x34 B = 0.265625 GiB; loss 1024 x 128,256 x 6 B = 0.733887 GiB
    assert est.parts["activations"] == pytest.approx(0.765625, rel=1e-9)
    assert est.parts["loss"] == pytest.approx(0.733887, rel=1e-6)
    assert est.parts["head_cast"] == 0
    assert est.parts["training"] == pytest.approx(1.499512, rel=1e-6)
    # evaluation: K/V per token 32 layers x 2 x 1024 x 2 B = 128 KiB; 32 x 576 tokens = 2.25 GiB; prefill: 32 x 512
    # tokens of K/V = 2 GiB + 32x512x4096x34 B = 2.125 GiB -> 4.125 GiB; logits 32 x 128,256 x 6 B = 0.022934 GiB
    assert est.parts["kv_cache"] == pytest.approx(2.25, rel=1e-9)
    assert est.parts["prefill"] == pytest.approx(4.125, rel=1e-9)
    assert est.parts["logits"] == pytest.approx(0.022934, rel=1e-4)
    assert est.parts["evaluation"] == pytest.approx(4.147934, rel=1e-6)
    # need = 14.957 + 1.5 + max(1.4995, 4.1479) = 20.605 GiB > 16 x 0.95 = 15.2 GiB usable
    assert est.need_gib == pytest.approx(20.604975, rel=1e-6)
    assert est.have_gib == pytest.approx(15.2, rel=1e-9)
    assert (est.fits, est.mode, est.world_size) == (False, "single", 1)
    # 6 x 8.03e9 x (1,900 examples x 512 x 0.6) = 2.81217e16 FLOPs at 125 TFLOPs x 0.3 = 749.9 s = 0.20831 h
    assert est.gpu_hours == pytest.approx(0.2083089, rel=1e-5)
    assert est.detail == (
        "llama3_8b (8.03B, fp16) on 1cpu_1v100 (1 GPU): needs 20.6 GiB = weights 15.0 + overhead 1.5 + evaluation 4.1 "
        "[training 1.5 = activations 0.8 + loss 0.7; evaluation 4.1 = max(KV cache 2.2 for 32 x 576 tokens, prefill "
        "4.1) + logits 0.0]; has 1 x 16 GB (usable 15.2 GiB); evaluation dominates: a smaller eval.batch_size "
        "lowers it")


def test_llama3_8b_split_across_two_v100s_in_gib(compose):
    est = estimate(compose, "model=llama3_8b", "profile=4cpu_2v100")
    # the same replica as on one V100 with 1.5 GiB of overhead on each GPU: 14.957 + 3.0 + 4.148 = 22.105 GiB,
    # against 2 x 16 x 0.95 = 30.4 GiB; one GPU at a time for 0.20831 h while holding two: 0.41662 GPU-hours
    assert (est.fits, est.mode, est.world_size) == (True, "model_split", 1)
    assert est.need_gib == pytest.approx(22.104975, rel=1e-6)
    assert est.have_gib == pytest.approx(30.4, rel=1e-9)
    assert est.gpu_hours == pytest.approx(0.4166178, rel=1e-5)
    assert est.detail == (
        "llama3_8b (8.03B, fp16) on 4cpu_2v100 (model split across 2 GPUs, need summed): needs 22.1 GiB = weights "
        "15.0 + overhead 3.0 + evaluation 4.1 [training 1.5 = activations 0.8 + loss 0.7; evaluation 4.1 = max(KV "
        "cache 2.2 for 32 x 576 tokens, prefill 4.1) + logits 0.0]; has 2 x 16 GB (usable 30.4 GiB)")


def test_llama3_8b_forced_data_parallel_on_two_v100s_in_gib(compose):
    est = estimate(compose, "model=llama3_8b", "profile=4cpu_2v100", "profile.parallel=data")
    # each replica trains 2 of the 4 rows: 32 x 2x512x4096x2 B = 0.25 GiB + 2x512x4096x34 B = 0.1328 GiB; the loss
    # chunk is still 1024 rows (0.7339 GiB); the evaluation (4.148 GiB) dominates: 20.605 GiB > 15.2 on one GPU
    assert est.parts["activations"] == pytest.approx(0.3828125, rel=1e-9)
    assert est.parts["training"] == pytest.approx(1.116699, rel=1e-6)
    assert est.need_gib == pytest.approx(20.604975, rel=1e-6)
    assert (est.fits, est.mode, est.world_size) == (False, "data_parallel", 2)
    assert est.gpu_hours == pytest.approx(0.2083089, rel=1e-5)
    assert est.detail == (
        "llama3_8b (8.03B, fp16) on 4cpu_2v100 (data parallel, 2 processes x 2 rows, need per GPU): needs 20.6 GiB = "
        "weights 15.0 + overhead 1.5 + evaluation 4.1 [training 1.1 = activations 0.4 + loss 0.7; evaluation 4.1 = "
        "max(KV cache 2.2 for 32 x 576 tokens, prefill 4.1) + logits 0.0]; has 1 x 16 GB (usable 15.2 GiB); "
        "profile.parallel=data but one replica does not fit one GPU (parallel=auto splits the model); evaluation "
        "dominates: a smaller eval.batch_size lowers it")


def test_llama3_8b_qlora_on_one_v100_in_gib(compose):
    est = estimate(compose, "model=llama3_8b", "profile=1cpu_1v100", "model.load_in_4bit=true", "eval.batch_size=8")
    # weights: embedding + head 2 x 128,256 x 4096 = 1,050,673,152 params x 4 B (fp32) = 4,202,692,608 B; the other
    # 6,979,326,848 params x 4.127 / 8 B = 3,600,460,237 B; 7,803,152,845 B = 7.26725 GiB
    assert est.parts["weights"] == pytest.approx(7.267252, rel=1e-6)
    # activations in fp32: 32 x 2048 x 4096 x 4 B = 1 GiB + 2048 x 4096 x 34 x 2 B = 0.53125 GiB; head cast
    # 128,256 x 4096 x 2 B = 0.978516 GiB; loss 0.733887 GiB -> training 3.243652 GiB
    assert est.parts["activations"] == pytest.approx(1.53125, rel=1e-9)
    assert est.parts["head_cast"] == pytest.approx(0.978516, rel=1e-6)
    assert est.parts["training"] == pytest.approx(3.243652, rel=1e-6)
    # evaluation, batch 8: K/V 8 x 32 x 2 x 1024 x 4 B = 2 MiB per token: 576 tokens 1.125 GiB, prefill 1 GiB +
    # 8x512x4096x34x2 B = 1.0625 GiB -> 2.0625; logits 8 x 128,256 x 8 B = 0.007645 GiB; + head cast = 3.048660
    assert est.parts["kv_cache"] == pytest.approx(1.125, rel=1e-9)
    assert est.parts["prefill"] == pytest.approx(2.0625, rel=1e-9)
    assert est.parts["logits"] == pytest.approx(0.0076447, rel=1e-4)
    assert est.parts["evaluation"] == pytest.approx(3.048660, rel=1e-6)
    # need = 7.2673 + 1.5 + 3.2437 = 12.011 GiB <= 15.2
    assert est.need_gib == pytest.approx(12.010905, rel=1e-6)
    assert est.fits and est.mode == "single"
    assert est.detail == (
        "llama3_8b (8.03B, nf4) on 1cpu_1v100 (1 GPU): needs 12.0 GiB = weights 7.3 + overhead 1.5 + training 3.2 "
        "[training 3.2 = activations 1.5 + loss 0.7 + head cast 1.0; evaluation 3.0 = max(KV cache 1.1 for 8 x 576 "
        "tokens, prefill 2.1) + logits 0.0 + head cast 1.0]; has 1 x 16 GB (usable 15.2 GiB)")


def test_fit_arithmetic_llama3_on_one_v100(compose):
    cfg = compose(["model=llama3_8b", "profile=1cpu_1v100"])
    est = fit.estimate(cfg)
    # Llama 3 8B (8.03e9 parameters, hidden 4096, 32 layers, 128,256 tokens, 8 KV heads x 128), fp16 on a V100:
    #   weights     8.03e9 x 2 B = 16.06e9 B                                                  = 14.957 GiB
    #   training    32 saved layer inputs 4x512x4096x2 B each (0.5 GiB) + one layer recomputed 4x512x4096x34 B
    #               (0.266 GiB) + the loss on 1024-row chunks of 128,256 logits x 6 B (0.734 GiB) =  1.4995 GiB
    #   evaluation  prefill of 32 prompts x 512 tokens: K/V 32 x 2 x 1024 x 2 B = 128 KiB per token (2 GiB) + one
    #               layer 32x512x4096x34 B (2.125 GiB); + last-position logits 32 x 128,256 x 6 B (0.023 GiB)
    #                                                                                         =  4.1479 GiB
    #   need        14.957 + 1.5 + 4.148                                                      = 20.605 GiB
    assert est.parts["evaluation"] == pytest.approx(4.147934, rel=1e-6)
    assert est.parts["training"] == pytest.approx(1.499512, rel=1e-6)
    assert est.parts["evaluation"] > est.parts["training"]  # the eval batch of 32 is the largest term after weights
    assert est.need_gib == pytest.approx(20.604975, rel=1e-6)
    assert est.have_gib == pytest.approx(16 * 0.95)
    assert not est.fits and "llama3_8b" in est.detail and "1cpu_1v100" in est.detail
    # 6 x 8.03e9 FLOPs x 1,900 examples x 307.2 tokens = 2.812e16 FLOPs at 125 TFLOPs x 0.3 = 750 s
    assert est.gpu_hours == pytest.approx(0.2083089, rel=1e-5)


def test_4bit_makes_a_7b_model_fit_one_v100(compose):
    est = fit.estimate(compose(["model=mistral_7b", "profile=1cpu_1v100", "model.load_in_4bit=true"]))
    assert est.fits and est.mode == "single" and est.need_gib < 16 * 0.95
    # 6 x 7.24e9 x 583,680 tokens / (125e12 x 0.3) / 3600 = 0.18782 h: 4-bit weights do not change the FLOPs
    assert est.gpu_hours == pytest.approx(0.1878153, rel=1e-5)


def test_smollm2_on_the_cpu_in_gib(compose):
    est = estimate(compose, "model=smollm2_135m", "profile=local_cpu")
    # fp32 on the CPU: 0.135e9 x 4 B = 0.5029 GiB; no checkpointing: 30 layers x 4x512x576x34x4/2 B = 2.2412 GiB;
    # loss 1024 x 49,152 x 6 B = 0.28125 GiB -> training 2.5225 GiB
    assert est.parts["weights"] == pytest.approx(0.502914, rel=1e-6)
    assert est.parts["activations"] == pytest.approx(2.241211, rel=1e-6)
    assert est.parts["loss"] == pytest.approx(0.28125, rel=1e-9)
    # evaluation: K/V 32 x 30 x 2 x 192 x 4 B per token: 576 tokens 0.791016 GiB; prefill 512 tokens 0.703125 GiB +
    # 32x512x576x34x4/2 B = 0.597656 GiB -> 1.300781; logits 32 x 49,152 x 8 B = 0.011719 GiB
    assert est.parts["kv_cache"] == pytest.approx(0.791016, rel=1e-6)
    assert est.parts["prefill"] == pytest.approx(1.300781, rel=1e-6)
    assert est.parts["evaluation"] == pytest.approx(1.3125, rel=1e-9)
    # need 0.5029 + 1.5 + 2.5225 = 4.5254 GiB, host memory: always fits, no GPU-hours
    assert est.need_gib == pytest.approx(4.525375, rel=1e-6)
    assert (est.fits, est.have_gib, est.gpu_hours, est.mode, est.world_size) == (True, float("inf"), 0.0, "cpu", 1)
    assert est.detail == (
        "smollm2_135m (0.135B, fp32) on local_cpu (CPU): needs 4.5 GiB = weights 0.5 + overhead 1.5 + training 2.5 "
        "[training 2.5 = activations 2.2 + loss 0.3; evaluation 1.3 = max(KV cache 0.8 for 32 x 576 tokens, prefill "
        "1.3) + logits 0.0]; CPU profile (host memory)")


def test_smollm2_in_two_cpu_processes_in_gib(compose):
    est = estimate(compose, "model=smollm2_135m", "profile=local_cpu", "profile.processes=2")
    # 2 rows per process: activations 1.1206 GiB, the same 1024-row loss chunk: training 1.4019 GiB > 1.3125
    assert est.parts["training"] == pytest.approx(1.401855, rel=1e-6)
    assert est.need_gib == pytest.approx(3.404770, rel=1e-6)
    assert (est.fits, est.mode, est.world_size, est.gpu_hours) == (True, "data_parallel", 2, 0.0)
    assert est.detail == (
        "smollm2_135m (0.135B, fp32) on local_cpu (data parallel, 2 processes x 2 rows, need per process): needs 3.4 "
        "GiB = weights 0.5 + overhead 1.5 + training 1.4 [training 1.4 = activations 1.1 + loss 0.3; evaluation 1.3 = "
        "max(KV cache 0.8 for 32 x 576 tokens, prefill 1.3) + logits 0.0]; CPU profile (host memory)")


def test_a_gpu_profile_run_on_the_cpu_is_a_cpu_job(compose):
    for overrides in (["profile=1cpu_1v100", "profile.device=cpu"], ["profile=local_gpu", "profile.gpus=0"]):
        cfg = config(compose, "model=smollm2_135m", *overrides)
        est = fit.estimate(cfg)
        assert fit.weight_format(cfg) == "fp32" and fit.parallel(cfg) == ("cpu", 1)
        assert (est.mode, est.fits, est.have_gib, est.gpu_hours) == ("cpu", True, float("inf"), 0.0)
        # fp32, these profiles checkpoint: 30 x 4x512x576x4 B + 4x512x576x34x2 B = 0.2065 GiB of activations; the
        # evaluation (1.3125 GiB, as above) dominates: 0.5029 + 1.5 + 1.3125 = 3.3154 GiB
        assert est.need_gib == pytest.approx(3.315414, rel=1e-6) and est.detail.endswith("; CPU profile (host memory)")


def test_the_usable_memory_is_a_bound_that_fits(compose):
    """A replica that needs exactly 95% of the GPU fits (need <= have), one ulp less memory does not; the same bound
    picks data parallelism on two GPUs. 20.604974508285522 GiB is the fp16 Llama-3-8B replica above, and
    21.689446850826865 x 0.95 is exactly that float (21.68944685082686, the float below it, gives less)."""
    exact, below = "profile.gpu_memory_gb=21.689446850826865", "profile.gpu_memory_gb=21.68944685082686"
    assert 21.689446850826865 * 0.95 == 20.604974508285522 > 21.68944685082686 * 0.95
    assert estimate(compose, "model=llama3_8b", "profile=1cpu_1v100", exact).fits
    assert not estimate(compose, "model=llama3_8b", "profile=1cpu_1v100", below).fits
    assert fit.parallel(config(compose, "model=llama3_8b", "profile=4cpu_2v100", exact)) == ("data_parallel", 2)
    assert fit.parallel(config(compose, "model=llama3_8b", "profile=4cpu_2v100", below)) == ("model_split", 1)


def test_auto_layout_sizes_the_replica_at_its_share_of_the_batch(compose):
    """Llama-3-8B bf16 on 2 x 24 GB, train batch 16 x 2048, eval batch 1: each replica of the data-parallel job
    trains 8 rows. 8 rows: 32 x 8x2048x4096x2 B = 4 GiB + 8x2048x4096x34 B = 2.125 GiB + loss 0.7339 GiB = 6.859
    GiB; with the weights (14.957) and 1.5: 23.316 GiB. At 24 GB (22.8 usable) it does not fit one GPU: the model is
    split; at 25 GB (23.75 usable) the 8-row replica fits, while a 16-row one (29.44 GiB) would not."""
    common = ["model=llama3_8b", "profile=4cpu_2a100", "train.batch_size=16", "train.max_seq_length=2048",
              "eval.batch_size=1"]
    assert fit.parallel(config(compose, *common, "profile.gpu_memory_gb=25")) == ("data_parallel", 2)
    assert fit.parallel(config(compose, *common, "profile.gpu_memory_gb=24")) == ("model_split", 1)
    est = estimate(compose, *common, "profile.gpu_memory_gb=25")
    assert est.need_gib == pytest.approx(23.315927, rel=1e-6) and est.fits
    assert "data parallel, 2 processes x 8 rows, need per GPU" in est.detail


def test_kv_width_zero_means_multi_head_attention(compose):
    # kv_width 0: the K/V width is hidden_size, 4096 for Llama 3 8B: 32 x 2 x 4096 x 2 B = 512 KiB per token
    est = estimate(compose, "model=llama3_8b", "profile=1cpu_1a100", "model.kv_width=0", "eval.batch_size=1",
                   "train.max_seq_length=4032", "eval.max_new_tokens=64")
    assert est.parts["kv_cache"] * GIB / 4096 == pytest.approx(512 * KIB, rel=1e-9)


def test_an_embedding_larger_than_the_stated_parameters_counts_nothing_in_nf4(compose):
    # tiny_random under QLoRA with params_b below its tied 49,152 x 64 embedding: the weights are that embedding in
    # fp32 only, 49,152 x 64 x 4 B = 12,582,912 B = 0.01171875 GiB exactly, never a negative NF4 part
    est = estimate(compose, "experiment=smoke", "profile=local_gpu", "model.load_in_4bit=true", "model.params_b=0.001")
    assert est.parts["weights"] == 0.01171875


@pytest.mark.parametrize("overrides, expected", [
    (["profile=local_cpu"], "fp32"),
    (["profile=1cpu_1v100"], "fp16"),
    (["profile=1cpu_1a100"], "bf16"),
    (["profile=local_gpu"], "fp16"),  # precision auto on a GPU: half precision weights
    (["profile=1cpu_1a100", "profile.precision=fp32"], "fp16"),  # GPU weights are never fp32
    (["profile=1cpu_1a100", "model.load_in_4bit=true"], "nf4"),
    (["profile=1cpu_1a100", "model.load_in_4bit=auto"], "nf4"),  # a hub model on a GPU: 4-bit
    (["profile=local_cpu", "model.load_in_4bit=auto"], "fp32"),  # no CUDA: full precision
    (["profile=1cpu_1a100", "model.load_in_4bit=auto", "model=tiny_random"], "bf16"),  # a random model: never 4-bit
    (["profile=1cpu_1a100", "model.load_in_4bit=true", "model=tiny_random"], "nf4"),
])
def test_weight_format(compose, overrides, expected):
    assert fit.weight_format(config(compose, "model=llama3_8b", *overrides)) == expected


@pytest.mark.parametrize("setting, profile, on", [
    ("auto", "1cpu_1a100", True), ("auto", "local_cpu", False), ("true", "local_cpu", True),
    ("false", "1cpu_1a100", False),
])
def test_gradient_checkpointing_setting(compose, setting, profile, on):
    # Llama 3 8B activations, 4 x 512 tokens: checkpointing keeps 32 layer inputs + one layer; without it 32 layers
    est = estimate(compose, "model=llama3_8b", f"profile={profile}", f"train.gradient_checkpointing={setting}")
    bytes_per = 4 if profile == "local_cpu" else 2
    ckpt = (32 * 4 * 512 * 4096 * bytes_per + 4 * 512 * 4096 * 34 * bytes_per / 2) / GIB
    plain = 32 * 4 * 512 * 4096 * 34 * bytes_per / 2 / GIB
    assert est.parts["activations"] == pytest.approx(ckpt if on else plain, rel=1e-9)


@pytest.mark.parametrize("overrides, hours", [
    # 1,900 examples x 512 x 0.6 tokens = 583,680; 6 x 8.03e9 FLOPs each = 2.81217024e16 FLOPs at 312e12 x 0.3
    # FLOP/s for 3600 s an hour: 2.81217024e16 / 3.3696e17 = 0.08345709401709401709... h (to 13 digits below)
    ([], 0.083457094017094017),
    # any positive peak gives an estimate: 1 FLOP/s -> 2.81217024e16 / 3600 h
    (["profile.gpu_tflops=1e-12", "site.mfu_assumed=1"], 2.81217024e16 / 3600),
    # max_steps 100 x batch 8 x accumulation 2 = 1,600 examples x 307.2 tokens = 491,520 tokens: 0.070280 h
    (["train.max_steps=100", "train.batch_size=8", "train.grad_accum=2"], 0.0702797),
    # a single step of 4 examples: 4 x 307.2 tokens x 6 x 8.03e9 = 5.9205e13 FLOPs / 9.36e13 = 0.6325 s = 1.75699e-4 h
    (["train.max_steps=1"], 1.756991e-4),
    # train_size 500 x 2 epochs = 307,200 tokens: 0.043925 h; data.limit bounds the examples when train_size is null
    (["train.train_size=500", "train.epochs=2"], 0.0439248),
    (["data.limit=1000"], 0.0439248),
    (["train.train_size=500", "data.limit=1000", "train.epochs=2"], 0.0439248),  # train_size first
    (["profile.gpu_tflops=0"], 0.0),  # no peak known: no estimate (never a division by zero)
])
def test_gpu_hours_in_hours(compose, overrides, hours):
    est = estimate(compose, "model=llama3_8b", "profile=1cpu_1a100", *overrides)
    assert est.gpu_hours == pytest.approx(hours, rel=1e-13 if not overrides else 1e-5, abs=1e-12)


def test_gpu_hours_of_a_cpu_layout_are_zero(compose):
    cfg = config(compose, "model=llama3_8b", "profile=1cpu_1a100")
    assert fit.gpu_hours(cfg, "cpu") == 0.0 and fit.gpu_hours(cfg, "single") == pytest.approx(0.0834571, rel=1e-5)


def test_a_tie_between_training_and_evaluation_is_reported_as_training(compose):
    """A one-layer 64-wide model, vocabulary 128, bf16, no checkpointing, 1 x 1024 training tokens: activations
    1024 x 64 x 34 = 2,228,224 B + loss 1024 x 128 x 6 = 786,432 B = 3,014,656 B. Evaluation of 1 prompt with 10,749
    new tokens: K/V 2 x 64 x 2 = 256 B per token x 11,773 tokens = 3,013,888 B + logits 128 x 6 = 768 B = 3,014,656 B:
    the same. The detail names training then (training >= evaluation), and the fit needs no eval.batch_size hint."""
    est = estimate(compose, "model=llama3_8b", "profile=1cpu_1a100", "model.hidden_size=64", "model.num_layers=1",
                   "model.kv_width=64", "model.vocab_size=128", "train.batch_size=1", "train.max_seq_length=1024",
                   "train.gradient_checkpointing=false", "eval.batch_size=1", "eval.max_new_tokens=10749")
    assert est.parts["training"] == est.parts["evaluation"] == 3014656 / GIB
    assert " + overhead 1.5 + training 0.0 [training 0.0 = " in est.detail and est.fits


def test_memory_defaults_to_the_whole_train_batch(compose):
    cfg = config(compose, "model=llama3_8b", "profile=1cpu_1v100")
    # 4 rows of 512 tokens: 0.765625 GiB of activations, as in the full estimate above; 2 rows: 0.3828125
    assert fit.memory(cfg)["activations"] == pytest.approx(0.765625, rel=1e-9)
    assert fit.memory(cfg, 2)["activations"] == pytest.approx(0.3828125, rel=1e-9)


# pack=auto. Worked by hand for experiment=demo (SmolLM2-135M: 30 layers, hidden 576, vocabulary 49,152; 8 rows of
# 256 tokens) on the CPU, where it trains in fp32 (4 bytes per activation):
#   activations  30 layers x 2,048 tokens x 576 x 34 bytes x 4/2        = 2.406e9 B = 2.241 GiB
#   loss         1,024 logit rows x 49,152 x 6 bytes                    = 0.302e9 B = 0.281 GiB
#   weights      0.135e9 parameters x 4 bytes                           = 0.540e9 B = 0.503 GiB
# room for the runs' training: memory_gb x 0.95 - 0.503 - 1.5 GiB of overhead, 2.522 GiB per run.
@pytest.mark.parametrize("memory_gb, runs", [
    (16, 5),    # 13.197 GiB of room: 5.2 runs
    (12, 3),    # 9.397: 3.7
    (4, 1),     # 1.797: 0.7, and a pack of one still trains
    (64, 8),    # 58.797: 23.3, capped: a CPU's cores are shared by the runs (fit.AUTO_PACK_CPU)
])
def test_auto_pack_on_a_cpu_holds_as_many_runs_as_the_jobs_memory(compose, memory_gb, runs):
    cfg = config(compose, "experiment=demo", "profile=local_cpu", f"profile.memory_gb={memory_gb}")
    assert fit.pack_size(cfg) == runs


def test_auto_pack_on_a_gpu_fills_one_gpu_and_a_split_model_trains_alone(compose):
    one = config(compose, "experiment=demo", "profile=1cpu_1a100")
    per_run = fit.memory(one)
    room = one.profile.gpu_memory_gb * 0.95 - per_run["weights"] - 1.5
    assert fit.pack_size(one) == int(room // per_run["training"]) > fit.AUTO_PACK_CPU  # no CPU cap on a GPU
    assert fit.pack_size(config(compose, "model=llama2_7b", "profile=4cpu_2v100", "profile.parallel=model")) == 1
