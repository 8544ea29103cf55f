"""The model zoo and the medical datasets of the published workflows (issue 3): every model config composes,
names LoRA targets its architecture has and renders its family's prompt format exactly; every dataset config
composes and loads the real files in ../shared/data; QLoRA fails clearly (or falls back) without CUDA."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from medsweep import data, models
from medsweep.checks import validate
from medsweep.errors import ConfigError, DataError, ModelError
from medsweep.hardware import Hardware
from medsweep.prompts import IGNORE_INDEX, PromptStyle, prompt_ids, render, tokenize_example
from tests.conftest import CONF_DIR, MEDQUAD_JSONL, SHARED_DATA, forced_lm_head, need_shared_data, run_medsweep

CPU = Hardware(device="cpu", precision="fp32", threads=2)
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
DATASETS = ["medquad", "wikidoc", "medquad_wikidoc", "medchat", "pubmedqa", "medal"]
MEDQUAD_XML = SHARED_DATA / "medquad" / "xml"
PUBMEDQA_ORI = SHARED_DATA / "pubmedqa" / "ori_pqal.json"

REC = {"question": "What causes gout?", "answer": "Uric acid crystals in a joint."}
INSTRUCTION = "Answer briefly."
ALPACA = "### Instruction:\nAnswer briefly.\n\n### Input:\nWhat causes gout?\n\n### Response:\n"
CHATML = ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat causes gout?<|im_end|>\n"
          "<|im_start|>assistant\n")
ANSWER = "Uric acid crystals in a joint."
# (prompt as the model sees it, BOS included; completion = the labelled tokens) per model config
EXPECTED = {
    "distilgpt2": (ALPACA, ANSWER + "<|endoftext|>"),
    "tiny_random_gpt2": (ALPACA, ANSWER + "<|endoftext|>"),
    "llama2_7b": ("<s>" + ALPACA, ANSWER + "</s>"),
    "mistral_7b": ("<s>" + ALPACA, ANSWER + "</s>"),
    "llama3_8b": ("<|begin_of_text|>" + ALPACA, ANSWER + "<|end_of_text|>"),
    "gemma_1.1_7b": ("<bos><start_of_turn>user\nAnswer briefly.\n\nWhat causes gout?<end_of_turn>\n"
                     "<start_of_turn>model\n", ANSWER + "<end_of_turn>\n"),
    "smollm2_135m": (CHATML, ANSWER + "<|im_end|>\n"),
    "tiny_random": (CHATML, ANSWER + "<|im_end|>\n"),
}
HUB_MODELS = {
    "distilgpt2": ("distilbert/distilgpt2", None),
    "llama2_7b": ("meta-llama/Llama-2-7b-hf", "unsloth/llama-2-7b-bnb-4bit"),
    "llama3_8b": ("meta-llama/Meta-Llama-3-8B", "unsloth/llama-3-8b-bnb-4bit"),
    "mistral_7b": ("mistralai/Mistral-7B-v0.1", "unsloth/mistral-7b-bnb-4bit"),
    "gemma_1.1_7b": ("google/gemma-1.1-7b-it", "unsloth/gemma-1.1-7b-it-bnb-4bit"),
}
HUB_DATASETS = {
    "medquad": "keivalya/MedQuad-MedicalQnADataset",
    "wikidoc": "medalpaca/medical_meadow_wikidoc",
    "medchat": "ngram/medchat-qa",
    "pubmedqa": "qiaojin/PubMedQA",
    "medal": "McGill-NLP/medal",
}
# A tiny model of each architecture, built from its config class (no weights needed).
TINY = {
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=1, n_head=2, n_positions=64)),
    "llama": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2)),
    "gemma": ("GemmaConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=1, head_dim=8)),
}


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", MODELS)
def test_model_config_composes_and_validates(compose, name):
    cfg = compose([f"model={name}"])
    validate(cfg)
    m = cfg.model
    assert m.name == name and m.hidden_size > 0 and m.num_layers > 0 and m.vocab_size > 0 and m.params_b > 0
    assert m.eos_token and m.bos_token and m.add_bos_token is not None
    if name in HUB_MODELS:
        assert (m.hub_id, m.hub_id_4bit) == HUB_MODELS[name]


def test_zoo_facts(compose):
    """Context lengths, formats and pad needs of the published models."""
    cfg = {name: compose([f"model={name}"]).model for name in HUB_MODELS}
    assert {n: c.context_length for n, c in cfg.items()} == {
        "distilgpt2": 1024, "llama2_7b": 4096, "llama3_8b": 8192, "mistral_7b": 8192, "gemma_1.1_7b": 8192}
    assert {n for n, c in cfg.items() if c.prompt_format == "chat"} == {"gemma_1.1_7b"}
    assert cfg["gemma_1.1_7b"].system_prompt is False and cfg["gemma_1.1_7b"].end_of_turn == "<end_of_turn>"
    assert all(c.pad_token is None for c in cfg.values())  # no pad token of their own, or Gemma's <pad>: eos pads


def tiny_model(family: str):
    import transformers

    config_class, kwargs = TINY[family]
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_class)(vocab_size=128, **kwargs))


@pytest.mark.parametrize("name", MODELS)
def test_lora_targets_exist_in_the_architecture(compose, name):
    cfg = compose([f"model={name}"])
    model = tiny_model(cfg.model.family)
    expected_class = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                      "gemma": "GemmaForCausalLM"}[cfg.model.family]
    assert type(model).__name__ == expected_class
    assert set(cfg.model.lora_target_modules) <= set(models.linear_module_names(model))
    assert models.trainable_params(models.add_lora(model, cfg.lora, cfg.model)) > 0


def test_gpt2_targets_are_not_llama_targets(compose):
    gpt2 = compose(["model=distilgpt2"]).model.lora_target_modules
    llama = compose(["model=llama2_7b"]).model.lora_target_modules
    assert not set(gpt2) & set(models.linear_module_names(tiny_model("llama")))
    assert not set(llama) & set(models.linear_module_names(tiny_model("gpt2")))


@pytest.fixture
def stand_in_tokenizer(embedded_dir):
    """The SmolLM2 tokenizer dressed as a model family's tokenizer: its special tokens added, then configured from
    the model config exactly as models.load_tokenizer does (bos / eos, BOS rule, chat template)."""
    from transformers import AutoTokenizer

    def make(model_cfg):
        tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
        named = [model_cfg.bos_token, model_cfg.eos_token, model_cfg.end_of_turn,
                 *re.findall(r"<\w+>", model_cfg.chat_template or "")]
        tokenizer.add_special_tokens({"additional_special_tokens": sorted({t for t in named if t})})
        return models.configure_tokenizer(tokenizer, model_cfg)

    return make


@pytest.mark.parametrize("name", MODELS)
def test_prompt_format_of_every_family(compose, stand_in_tokenizer, name):
    m = compose([f"model={name}"]).model
    tokenizer = stand_in_tokenizer(m)
    expected_prompt, expected_completion = EXPECTED[name]
    prompt, completion = render(tokenizer, REC, INSTRUCTION, m.prompt_format, m.system_prompt)
    assert completion == expected_completion
    ids = prompt_ids(tokenizer, REC, INSTRUCTION, m.prompt_format, m.system_prompt)
    assert tokenizer.decode(ids) == expected_prompt  # BOS included where the real tokenizer prepends it
    ex = tokenize_example(tokenizer, REC, INSTRUCTION, m.prompt_format, 256, m.system_prompt)
    assert tokenizer.decode(ex["input_ids"]) == expected_prompt + expected_completion
    assert tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == expected_completion
    assert ids.count(tokenizer.bos_token_id) == expected_prompt.count(m.bos_token)  # BOS never twice


def test_gemma_template_rejects_a_system_turn(compose, stand_in_tokenizer):
    tokenizer = stand_in_tokenizer(compose(["model=gemma_1.1_7b"]).model)
    with pytest.raises(Exception, match="System role not supported"):
        render(tokenizer, REC, INSTRUCTION, "chat", system_prompt=True)


def test_configured_tokens_must_exist(compose, embedded_dir):
    from transformers import AutoTokenizer

    m = compose(["model=llama2_7b"]).model
    with pytest.raises(ModelError, match=r"model.bos_token='<s>'.*model.eos_token='</s>'"):
        models.configure_tokenizer(AutoTokenizer.from_pretrained(embedded_dir), m)


def _forced_answer(cfg, tokenizer, model, script: list[int]) -> tuple[str, int, int]:
    """Generate through evaluate.generate with the LM head forced to emit `script` (its last id repeated after):
    the answer, its counted tokens and how many forward passes generation made."""
    from medsweep import evaluate

    with forced_lm_head(model, script) as emitted:
        answers, _, n_tokens = evaluate.generate(model, tokenizer, [{"question": "What is it?", "answer": "x"}],
                                                 PromptStyle.of(cfg), cfg.eval, CPU)
    return answers[0], n_tokens[0], len(emitted)


def test_end_of_turn_stops_generation(compose, embedded_dir):
    cfg = compose(["model=tiny_random", "eval.max_new_tokens=12", "eval.batch_size=1"])
    cfg.model.end_of_turn = "<|im_start|>"  # any token of the vocabulary that is not eos
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, CPU, seed=0)
    assert set(model.generation_config.eos_token_id) == {tokenizer.eos_token_id, tokenizer.bos_token_id}
    turn_end = tokenizer.convert_tokens_to_ids("<|im_start|>")
    word = tokenizer.convert_tokens_to_ids("yes")
    # the model says "yes yes" then closes its turn: generation stops there, the marker is not in the answer
    # (the forward-pass count shows generation itself stopped, not only the decoding of its output)
    assert _forced_answer(cfg, tokenizer, model, [word, word, turn_end]) == ("yesyes", 3, 3)

    cfg.model.end_of_turn = None  # without it, the same model runs on to max_new_tokens
    plain, _ = models.load_model(cfg.model, tokenizer, CPU, seed=0)
    answer, n_tokens, forwards = _forced_answer(cfg, tokenizer, plain, [word, word, turn_end])
    assert n_tokens == forwards == 12 and answer.startswith("yesyes")


# --------------------------------------------------------------------------- QLoRA guards


def test_4bit_true_on_cpu_fails_in_validation(compose, tmp_path):
    from medsweep.run import train_eval

    cfg = compose(["model=tiny_random", "model.load_in_4bit=true"])  # profile local_cpu: device cpu
    with pytest.raises(ConfigError, match=r"^model.load_in_4bit=True is invalid: QLoRA .* needs a CUDA GPU"):
        train_eval(cfg, tmp_path)
    assert not (tmp_path / "metrics.json").exists()  # refused before anything ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_4bit_true_without_cuda_fails_at_load(compose, embedded_dir):
    cfg = compose(["model=tiny_random", "model.load_in_4bit=true", "profile.device=auto"])
    validate(cfg)  # the config may be meant for a GPU node: only the machine can say no
    with pytest.raises(ConfigError, match="model.load_in_4bit=true is invalid here"):
        models.load_model(cfg.model, models.load_tokenizer(cfg.model), CPU, seed=0)


def test_4bit_auto_on_cpu_falls_back_and_says_so(compose, embedded_dir):
    cfg = compose(["model=tiny_random", "model.load_in_4bit=auto"])
    validate(cfg)
    model, info = models.load_model(cfg.model, models.load_tokenizer(cfg.model), CPU, seed=0)
    assert info["quantization"] == "none (load_in_4bit=auto fell back to full precision: no CUDA on cpu)"
    assert next(model.parameters()).dtype == torch.float32


# --------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("name", DATASETS)
def test_data_config_composes_and_validates(compose, name):
    cfg = compose([f"data={name}"])
    validate(cfg)
    assert cfg.data.name == name and cfg.data.loader == ("mix" if name == "medquad_wikidoc" else name)
    if name in HUB_DATASETS:
        assert cfg.data.path is None and cfg.data.hub == HUB_DATASETS[name]
    else:
        assert [(p.loader, p.hub, p.n) for p in cfg.data.options.parts] == [
            ("medquad", HUB_DATASETS["medquad"], 1000), ("wikidoc", HUB_DATASETS["wikidoc"], 1000)]


def test_pubmedqa_config_asks_for_a_decision_and_pins_the_labelled_set(compose):
    d = compose(["data=pubmedqa"]).data
    assert d.hub_config == "pqa_labeled" and d.options.split == "all" and d.options.decision_first is True
    assert "yes, no or maybe" in d.instruction


def test_hub_dataset_offline_fails_fast_with_a_hint(compose, no_network):
    cfg = compose(["data=medchat"])
    with pytest.raises(DataError) as err:
        data.build(cfg.data, eval_size=cfg.train.eval_split)
    message = str(err.value)
    assert "\n" not in message and "'ngram/medchat-qa'" in message and "data.path" in message
    assert no_network == []  # offline: not one lookup or connection, so no network timeout to wait for


def _no_leak(splits: data.Splits) -> None:
    train_q = {data.question_key(r["question"]) for r in splits.train}
    assert not train_q & {data.question_key(r["question"]) for r in splits.eval}


def test_medquad_xml_tree(compose):
    need_shared_data()
    cfg = compose(["data=medquad", f"data.path={MEDQUAD_XML}"])
    splits = data.build(cfg.data, eval_size=20)
    load = splits.stats["load"]
    assert load["files"] == 44 and load["skipped_empty_answer"] > 0  # the collections with removed answers
    assert splits.stats["loaded"] == load["kept"] == load["read"] - load["skipped_empty_answer"]
    sources = {r["source"] for r in splits.train + splits.eval}
    assert "10_MPlus_ADAM_QA" not in sources and "12_MPlusHerbsSupplements_QA" not in sources
    assert len(sources) == 9 and len(splits.eval) == 20
    assert len(splits.train) == splits.stats["after_cleaning"] - 20
    _no_leak(splits)


def test_pubmedqa_original_format(compose, embedded_dir):
    need_shared_data()
    cfg = compose(["data=pubmedqa", f"data.path={PUBMEDQA_ORI}"])
    splits = data.build(cfg.data, eval_size=100)
    records = splits.train + splits.eval
    assert splits.stats["loaded"] == 1000 and len(splits.eval) == 100
    assert Counter(r["label"] for r in records) == {"yes": 552, "no": 338, "maybe": 110}
    assert all(r["answer"].startswith(r["label"].capitalize() + ". ") for r in records)
    _no_leak(splits)
    rec = splits.eval[0]
    tokenizer = models.load_tokenizer(compose(["model=smollm2_135m"]).model)
    prompt, _ = render(tokenizer, rec, cfg.data.instruction, "chat")
    assert f"Context: {rec['context']}\n\nQuestion: {rec['question']}" in prompt and "yes, no or maybe" in prompt

    test_cfg = compose(["data=pubmedqa", f"data.path={PUBMEDQA_ORI}", "data.options.split=test"])
    records, stats = data.load_records(test_cfg.data)
    official = json.loads((PUBMEDQA_ORI.parent / "test_ground_truth.json").read_text())
    assert len(records) == 500 and stats["skipped_other_split"] == 500
    assert {r["id"]: r["label"] for r in records} == official


def _write_wikidoc(path, n: int) -> None:
    rows = [{"instruction": "Answer this question truthfully", "input": f"What are the signs of condition {i}?",
             "output": f"Condition {i} shows sign {i} and fever."} for i in range(n)]
    rows += [rows[0], {"instruction": "Answer this question truthfully", "input": "Empty answer?", "output": ""}]
    path.write_text(json.dumps(rows))


def test_paper_mix_sizes_are_exact_and_leak_free(compose, tmp_path):
    need_shared_data()
    wikidoc = tmp_path / "medical_meadow_wikidoc.json"
    _write_wikidoc(wikidoc, 1010)
    parts = (f"data.options.parts=[{{loader: medquad, path: '{MEDQUAD_JSONL}', n: 1000}}, "
             f"{{loader: wikidoc, path: '{wikidoc}', n: 1000}}]")
    cfg = compose(["experiment=paper_grid", parts])
    validate(cfg)
    splits = data.build(cfg.data, eval_size=cfg.train.eval_split, train_size=cfg.train.train_size)
    assert (len(splits.train), len(splits.eval)) == (1900, 100)
    _no_leak(splits)
    assert Counter(r["source"] == "wikidoc" for r in splits.train + splits.eval) == {True: 1000, False: 1000}
    part = splits.stats["load"]["part2_wikidoc"]
    assert part["read"] == 1012 and part["clean"]["dropped_duplicate"] == 1 and part["drawn"] == 1000
    assert part["skipped_empty_answer"] == 1
    again = data.build(cfg.data, eval_size=100)
    assert [r["id"] for r in again.eval] == [r["id"] for r in splits.eval]  # deterministic by seed


def test_mix_part_larger_than_its_data_is_an_error(compose, tmp_path):
    wikidoc = tmp_path / "wikidoc.json"
    _write_wikidoc(wikidoc, 5)
    cfg = compose(["data=medquad_wikidoc", f"data.options.parts=[{{loader: wikidoc, path: '{wikidoc}', n: 6}}]"])
    with pytest.raises(DataError, match="mix part 1: asked for 6 records but it has 5"):
        data.build(cfg.data, eval_size=1)


def test_medal_prompt_quotes_the_abstract_once(compose, embedded_dir, tmp_path):
    path = tmp_path / "medal.jsonl"
    path.write_text(json.dumps({"abstract_id": 1, "text": "the BP was high", "location": [1],
                                "label": ["blood pressure"]}) + "\n")
    cfg = compose(["data=medal", f"data.path={path}"])
    (rec,), _ = data.load_records(cfg.data)
    prompt, completion = render(models.load_tokenizer(compose().model), rec, cfg.data.instruction, "chat")
    assert prompt.count("the BP was high") == 1 and completion.startswith("blood pressure")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_alpaca_gpt2_runs_end_to_end(tmp_path, embedded_dir):
    proc = run_medsweep("experiment=smoke", "model=tiny_random_gpt2", f"output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "complete" and rec["axes"]["model"] == "tiny_random_gpt2"
    assert rec["model"]["trainable_params"] == 16384  # r=8 on c_attn, both c_proj and c_fc of 2 blocks
    losses = [h["loss"] for h in rec["train"]["log_history"]]
    assert losses[-1] < losses[0]
    assert OmegaConf.load(run_dir / "config.yaml").model.prompt_format == "alpaca"
