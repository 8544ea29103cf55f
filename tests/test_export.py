"""medsweep-export: merged safetensors and GGUF (f16, q8_0) answer like the unmerged adapter; Modelfile; CLI checks.

The always-on tests build a LoRA adapter on the tiny random Llama with non-zero B matrices, so the adapter changes
the answers, export it, and reload everything with transformers. Their tokenizer is SmolLM2's cut to its first
1,024 ids (`small_tokenizer_dir`): written into a GGUF and read back (gguf's reader, transformers' GGUF loader) a
49,152-token vocabulary costs ~25 s a file, 1,024 tokens well under one. Each test exports for itself (the run
directory is shared), so that mutation testing, which runs the tests that call a function, runs every test that
reads an export for a mutant of the exporter. The slow test exports a real `experiment=smoke` run, with the full
vocabulary, through the `medsweep-export` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from medsweep import evaluate, export, gguf_writer, models, ollama, record
from medsweep.errors import ConfigError, ModelError
from medsweep.hardware import Hardware
from medsweep.prompts import PromptStyle
from tests.conftest import ROOT, compose_config, train_eval_in_process

CPU = Hardware(device="cpu", precision="fp32", threads=2)
QUESTIONS = [{"id": f"q{i}", "question": q, "answer": "-"} for i, q in enumerate([
    "What are the symptoms of anemia?", "How is type 2 diabetes treated?", "Can aspirin cause stomach bleeding?"])]


SMALL_VOCAB = 1024


def small_tokenizer(source: Path, out: Path, size: int = SMALL_VOCAB) -> Path:
    """The tokenizer at `source` (byte-level BPE) cut to its ids below `size`, saved to `out`: its special tokens,
    the byte alphabet and the merges whose result is kept (SmolLM2 numbers tokens in merge order, so every part of a
    kept merge is kept too); any text still tokenizes, in more pieces."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < size}
    merges = [m for m in spec["model"]["merges"] if "".join(m) in vocab]
    assert all(part in vocab for m in merges for part in m)
    spec["model"].update(vocab=vocab, merges=merges)
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def small_tokenizer_dir(tmp_path_factory, embedded_dir) -> Path:
    return small_tokenizer(embedded_dir, tmp_path_factory.mktemp("tokenizer"))


def make_run_dir(path: Path, tokenizer_dir: Path | None = None) -> Path:
    """A run directory as medsweep writes it (config.yaml, adapter/ with the tokenizer), without training: the
    LoRA B matrices get random values so the adapter really changes the model. `tokenizer_dir`: the model's
    tokenizer (default: the embedded SmolLM2's)."""
    from omegaconf import OmegaConf

    small = [f"model.tokenizer={tokenizer_dir}", f"model.vocab_size={SMALL_VOCAB}"] if tokenizer_dir else []
    cfg = compose_config(["experiment=smoke", "model=tiny_random", f"output_root={path}", *small])
    tokenizer = models.load_tokenizer(cfg.model)
    model, _ = models.load_model(cfg.model, tokenizer, CPU, seed=cfg.train.seed)
    model = models.add_lora(model, cfg.lora, cfg.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(path / "adapter")
    tokenizer.save_pretrained(path / "adapter")
    record.atomic_write_text(path / "config.yaml", OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    return path


def answers(model, tokenizer, cfg, max_new_tokens: int = 12) -> list[str]:
    cfg.eval.max_new_tokens, cfg.eval.batch_size = max_new_tokens, len(QUESTIONS)
    return evaluate.generate(model, tokenizer, QUESTIONS, PromptStyle.of(cfg), cfg.eval, CPU)[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_tokenizer_dir) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run"), small_tokenizer_dir)


@pytest.fixture
def exported(run_dir):
    """The run exported to its default folder (<run dir>/export, emptied first), the adapter's and the base's
    answers: per test (about a second), so each test that reads an export also calls the exporter."""
    shutil.rmtree(run_dir / "export", ignore_errors=True)
    summary = export.export(run_dir, gguf_types=["f16", "q8_0"])
    model, tokenizer, cfg = export.load_adapted(run_dir)
    with model.disable_adapter():
        base = answers(model, tokenizer, cfg)
    return {"run_dir": run_dir, "out": run_dir / "export", "summary": summary, "cfg": cfg, "tokenizer": tokenizer,
            "adapter": answers(model, tokenizer, cfg), "base": base}


def _gguf(out: Path, name: str):
    from transformers import AutoModelForCausalLM, GgufConfig

    return AutoModelForCausalLM.from_pretrained(out, gguf_file=name, quantization_config=GgufConfig(dequantize=True),
                                                dtype=torch.float32).eval()


def test_merged_and_f16_gguf_answer_exactly_like_the_adapter(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, cfg = exported["out"], exported["cfg"]
    assert exported["adapter"] != exported["base"], "the test adapter must change the answers"
    assert all(exported["adapter"]), exported["adapter"]

    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    merged_tok = AutoTokenizer.from_pretrained(out / "merged")
    assert merged_tok.chat_template == exported["tokenizer"].chat_template
    assert (out / "merged/chat_template.jinja").is_file()
    assert (out / "merged/model.safetensors").is_file() and not list((out / "merged").glob("adapter_*"))
    assert answers(merged, merged_tok, cfg) == exported["adapter"]

    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file="model-f16.gguf")
    assert gguf_tok.chat_template == exported["tokenizer"].chat_template
    assert (gguf_tok.bos_token, gguf_tok.eos_token, gguf_tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    from medsweep.prompts import prompt_ids

    for q in QUESTIONS:  # the GGUF's tokenizer renders and tokenizes the prompts identically
        assert prompt_ids(gguf_tok, q, cfg.data.instruction, "chat") == prompt_ids(
            exported["tokenizer"], q, cfg.data.instruction, "chat")
    f16 = _gguf(out, "model-f16.gguf")
    assert f16.config.tie_word_embeddings and f16.config.num_hidden_layers == 2
    assert answers(f16, gguf_tok, cfg) == exported["adapter"]  # f16: identical text
    reference = merged.state_dict()
    assert set(f16.state_dict()) == set(reference)  # every tensor is compared below, none missing
    for name, tensor in f16.state_dict().items():  # bit-exact: the merged weights rounded to f16, norms kept f32
        expected = reference[name] if name.endswith("norm.weight") else reference[name].half().float()
        assert torch.equal(tensor, expected), name


def test_q8_0_gguf_loads_and_answers(exported):
    from transformers import AutoModelForCausalLM

    out = exported["out"]
    q8 = _gguf(out, "model-q8_0.gguf")
    got = answers(q8, exported["tokenizer"], exported["cfg"])
    assert len(got) == len(QUESTIONS) and all(isinstance(a, str) for a in got)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).state_dict()
    assert set(q8.state_dict()) == set(merged)  # every tensor is compared below, none missing
    for name, tensor in q8.state_dict().items():  # within one q8_0 step (block max / 127) of the merged weights
        ref = merged[name]
        assert (tensor - ref).abs().max() <= ref.abs().max() / 127 + 1e-6, name
    sizes = {g["type"]: g["bytes"] for g in exported["summary"]["gguf"]}
    assert sizes["q8_0"] < 0.7 * sizes["f16"]


def test_gguf_metadata_tensor_types_and_modelfile(exported):
    out, summary = exported["out"], exported["summary"]
    types = {g["type"]: g["tensor_types"] for g in summary["gguf"]}
    # 2 layers x (attn_norm, ffn_norm) + output_norm stay f32; 7 linear layers per block + token_embd
    assert types["f16"] == {"F32": 5, "F16": 15} and types["q8_0"] == {"F32": 5, "Q8_0": 15}
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk["run_dir"] == str(exported["run_dir"].resolve()) and len(on_disk["gguf"]) == 2

    from gguf import GGUFReader

    reader = GGUFReader(out / "model-q8_0.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.chat_template") == exported["tokenizer"].chat_template
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings: llama.cpp reuses token_embd

    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in modelfile
    assert "<|im_start|>system\n{{ .System }}<|im_end|>" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'PARAMETER stop "<|im_start|>"' in modelfile
    assert f'SYSTEM """{exported["cfg"].data.instruction}"""' in modelfile


def test_ollama_template_by_family():
    assert ollama.ollama_template("{{'<|im_start|>' + message['role']}}")[1] == ["<|im_start|>", "<|im_end|>"]
    assert "<|eot_id|>" in ollama.ollama_template("<|start_header_id|>{{ role }}<|end_header_id|>")[1]
    with pytest.raises(Exception, match="no Ollama template"):
        ollama.ollama_template("[INST] {{ m }} [/INST]")


def test_permutation_matches_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4 * 8, 6)).astype(np.float32)  # 4 heads of dim 8
    k = rng.normal(size=(2 * 8, 6)).astype(np.float32)  # 2 key/value heads
    np.testing.assert_array_equal(proc.process(gguf_writer._permute(q, 4), "blk.0.attn_q.weight").weights, q)
    np.testing.assert_array_equal(proc.process(gguf_writer._permute(k, 2), "blk.0.attn_k.weight").weights, k)
    assert not np.array_equal(gguf_writer._permute(q, 4), q)


# --------------------------------------------------------------------------- CLI argument validation (no model)


@pytest.fixture
def cli(monkeypatch, capsys):
    """medsweep-export in-process (its argument checks need no fresh interpreter; the end-to-end test below runs
    the real command): the exit code and what it printed, with no Hub token in the environment unless given."""

    def run(*args, env=None):
        for name in export.HF_TOKEN_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        try:
            code = export.main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        printed = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


@pytest.mark.parametrize("args, env, message", [
    (["--gguf", "q4_k"], {}, "--gguf 'q4_k' is invalid"),
    (["--push-to-hub", "not a repo"], {"HF_TOKEN": "hf_secret_value_123"}, "expected a Hub repo id like owner/name"),
    (["--push-to-hub", "me/model"], {}, "needs a token in the environment (HF_TOKEN or HUGGING_FACE_HUB_TOKEN)"),
    (["--push-to-hub", "me/model"], {"HF_TOKEN": "hf_secret_value_123", "HF_HUB_OFFLINE": "1"},
     "HF_HUB_OFFLINE is set"),
])
def test_cli_rejects_bad_arguments_before_any_work(cli, tmp_path, args, env, message):
    result = cli(str(tmp_path / "missing-run"), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "hf_secret_value_123" not in result.stdout + result.stderr
    assert not (tmp_path / "missing-run").exists()


def test_push_validation_accepts_a_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    export.validate_push("me/smol-med", "adapter")  # no network: only checks
    assert export.parse_gguf_types("F16, q8_0,f16") == ["f16", "q8_0"] and export.parse_gguf_types("none") == []


def test_not_a_run_dir(cli, tmp_path):
    result = cli(str(tmp_path))
    assert result.returncode == 2 and "is not a medsweep run directory: no config.yaml" in result.stderr
    (tmp_path / "config.yaml").write_text("model: {}\n")
    result = cli(str(tmp_path))
    assert result.returncode == 2 and "has no adapter" in result.stderr


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_export_a_smoke_run_with_the_cli(tmp_path, embedded_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = train_eval_in_process(tmp_path, "experiment=smoke", "model=tiny_random")  # the run: not under test
    out = tmp_path / "exported"
    result = subprocess.run([sys.executable, "-m", "medsweep.export", str(run_dir), "--gguf", "f16", "--out",
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model-f16.gguf").is_file() and (out / "Modelfile").is_file()
    assert "FROM ./model-f16.gguf" in (out / "Modelfile").read_text()
    model, tokenizer, cfg = export.load_adapted(run_dir)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    expected = answers(model, tokenizer, cfg)
    assert answers(merged, AutoTokenizer.from_pretrained(out / "merged"), cfg) == expected
    # the full SmolLM2 vocabulary (the other tests export a cut one): llama.cpp's name for it, every token, and
    # transformers' GGUF loader renders and tokenizes the prompts as the run's tokenizer does
    from gguf import GGUFReader

    from medsweep.prompts import prompt_ids

    reader = GGUFReader(out / "model-f16.gguf")
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == len(tokenizer) == 49152
    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file="model-f16.gguf")
    for q in QUESTIONS:
        assert prompt_ids(gguf_tok, q, cfg.data.instruction, "chat") == prompt_ids(
            tokenizer, q, cfg.data.instruction, "chat")
    assert answers(_gguf(out, "model-f16.gguf"), gguf_tok, cfg) == expected


# --------------------------------------------------------------------------- in-process: the command and its checks


def test_main_in_process_exit_codes_and_one_line_errors(tmp_path, capsys, monkeypatch):
    for name in export.HF_TOKEN_ENV:
        monkeypatch.delenv(name, raising=False)
    cases = [
        ([str(tmp_path / "missing-run")], f"{tmp_path / 'missing-run'}: no such run directory"),
        ([str(tmp_path)], f"{tmp_path} is not a medsweep run directory: no config.yaml in it"),
        ([str(tmp_path), "--gguf", "q4_k,f16"], "--gguf 'q4_k,f16' is invalid: q4_k not in f16, q8_0, f32 (or none)"),
        ([str(tmp_path), "--push-to-hub", "me/m"], "--push-to-hub needs a token in the environment (HF_TOKEN or "
                                                   "HUGGING_FACE_HUB_TOKEN); it is never read from arguments or files"),
    ]
    for argv, message in cases:
        assert export.main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err == f"medsweep-export: error: {message}\n" and captured.out == "", argv
    (tmp_path / "config.yaml").write_text("model: {}\n")
    assert export.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"medsweep-export: error: {tmp_path} has no adapter "
                                       "(adapter/adapter_config.json): the run did not finish training\n")
    with pytest.raises(SystemExit) as done:
        export.main([str(tmp_path), "--push", "everything"])
    assert done.value.code == 2 and "argument --push: invalid choice: 'everything'" in capsys.readouterr().err


def test_push_checks_name_the_problem(monkeypatch):
    for name in export.HF_TOKEN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    export.validate_push(None, "anything")  # nothing to push: nothing checked
    with pytest.raises(export.ConfigError) as err:
        export.validate_push("not a repo", "merged")
    assert str(err.value) == "--push-to-hub 'not a repo' is invalid: expected a Hub repo id like owner/name"
    for bad in ("owner/", "/name", "a/b/c", "-x/y", "x/.y"):
        with pytest.raises(export.ConfigError, match="expected a Hub repo id"):
            export.validate_push(bad, "merged")
    with pytest.raises(export.ConfigError) as err:
        export.validate_push("me/m", "weights")
    assert str(err.value) == "--push 'weights' is invalid: allowed merged, adapter"
    with pytest.raises(export.ConfigError, match="needs a token in the environment"):
        export.validate_push("me/m", "merged")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_second")
    assert export.hub_token() == "hf_second"
    monkeypatch.setenv("HF_TOKEN", "hf_first")
    assert export.hub_token() == "hf_first"  # HF_TOKEN first
    monkeypatch.setenv("HF_TOKEN", "")
    assert export.hub_token() == "hf_second"  # an empty variable does not count
    for value in ("1", "true", "YES", "on"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        with pytest.raises(export.ConfigError) as err:
            export.validate_push("me/m.v2_x-y", "adapter")
        assert str(err.value) == "--push-to-hub needs the network but HF_HUB_OFFLINE is set; unset it to push"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    export.validate_push("me/m.v2_x-y", "adapter")


def test_gguf_type_list_parsing():
    assert export.parse_gguf_types("none") == [] and export.parse_gguf_types(" NONE ") == []
    assert export.parse_gguf_types("") == [] and export.parse_gguf_types(" , ") == []
    assert export.parse_gguf_types("q8_0, F32 ,,f16,q8_0") == ["q8_0", "f32", "f16"]
    with pytest.raises(export.ConfigError) as err:
        export.parse_gguf_types("f16,q4_k,bf16")
    assert str(err.value) == "--gguf 'f16,q4_k,bf16' is invalid: q4_k, bf16 not in f16, q8_0, f32 (or none)"


def test_modelfile_text(tmp_path):
    path = ollama.write_modelfile(tmp_path / "Modelfile", "model-f16.gguf", "<|im_start|>{{ m }}", system="Be kind.")
    assert path == tmp_path / "Modelfile"
    assert path.read_text() == (
        "# Ollama: ollama create <name> -f Modelfile   (written by medsweep-export)\n"
        "FROM ./model-f16.gguf\n"
        'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
        "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
        '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"""\n'
        'SYSTEM """Be kind."""\n'
        'PARAMETER stop "<|im_start|>"\n'
        'PARAMETER stop "<|im_end|>"\n')
    llama = ollama.write_modelfile(tmp_path / "M2", "m.gguf", "<|start_header_id|>x").read_text()
    assert "SYSTEM" not in llama and llama.splitlines()[1] == "FROM ./m.gguf"
    assert llama.endswith('PARAMETER stop "<|start_header_id|>"\nPARAMETER stop "<|end_header_id|>"\n'
                          'PARAMETER stop "<|eot_id|>"\n')
    assert 'TEMPLATE """{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>' in llama
    with pytest.raises(ModelError) as err:
        ollama.write_modelfile(tmp_path / "M3", "m.gguf", "<|im_start|>", system='say """hi"""')
    assert str(err.value) == 'a Modelfile value cannot contain """'
    with pytest.raises(ModelError) as err:
        ollama.ollama_template(None)
    assert str(err.value) == "no Ollama template for this chat template (ChatML and Llama 3 are supported)"


def test_main_in_process_without_gguf_prints_what_it_wrote(run_dir, tmp_path, capsys):
    out = tmp_path / "plain"
    assert export.main([str(run_dir), "--gguf", "none", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"merged model: {out / 'merged'}\n"
    summary = json.loads((out / "export.json").read_text())
    assert summary["gguf"] == [] and summary["modelfile"] is None and summary["pushed"] is None
    assert summary["merged"] == str(out / "merged") and summary["model"] == "tiny_random"
    assert summary["adapter"] == str((run_dir / "adapter").resolve()) and summary["seconds"] >= 0
    assert not (out / "Modelfile").exists() and not list(out.glob("*.gguf"))
    assert (out / "merged" / "model.safetensors").is_file()


def test_export_summary_and_default_paths(exported):
    summary, out = exported["summary"], exported["out"]
    assert summary["merged"] == str(out / "merged") and summary["modelfile"] == str(out / "Modelfile")
    assert [g["type"] for g in summary["gguf"]] == ["f16", "q8_0"]
    for g in summary["gguf"]:
        path = out / f"model-{g['type']}.gguf"
        assert g["path"] == str(path) and g["bytes"] == path.stat().st_size and g["tensors"] == 20
    assert json.loads((out / "export.json").read_text()) == json.loads(json.dumps(summary))
    assert not list(out.glob(".*.tmp"))  # the temporary files were renamed into place
    assert 0 < summary["seconds"] < 600
    assert abs(datetime.fromisoformat(summary["exported_at"]).timestamp() - time.time()) < 600
    merged = sorted(p.name for p in (out / "merged").iterdir())
    assert merged == ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                      "tokenizer.json", "tokenizer_config.json"], merged
    assert (out / "merged" / "chat_template.jinja").read_text() == exported["tokenizer"].chat_template

    from gguf import GGUFReader

    reader = GGUFReader(out / "model-f16.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    run_name = exported["run_dir"].name
    assert field("general.name") == f"tiny_random-{run_name}" and field("llama.block_count") == 2
    assert field("llama.embedding_length") == 64 and field("llama.feed_forward_length") == 128
    assert field("llama.context_length") == 2048 and field("llama.vocab_size") == SMALL_VOCAB
    assert field("llama.rope.dimension_count") == 16 and "llama.attention.key_length" not in reader.fields
    assert field("tokenizer.ggml.padding_token_id") == 2 and field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.ggml.unknown_token_id") == 0  # SmolLM2's unk is <|endoftext|>
    assert len(field("tokenizer.ggml.tokens")) == SMALL_VOCAB and field("tokenizer.ggml.merges")
    assert "general.quantization_version" not in reader.fields
    q8 = GGUFReader(out / "model-q8_0.gguf")
    assert q8.fields["general.quantization_version"].contents() == 2


def test_the_runs_tokenizer_is_the_one_saved_with_its_adapter(run_dir, tmp_path):
    """load_adapted takes the tokenizer saved with the adapter (what the run trained with: here one whose config was
    changed, without a pad token), pads with the model config's pad token, else its eos; an adapter saved without
    a tokenizer falls back to the model config's."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("export"))
    saved = run / "adapter" / "tokenizer_config.json"
    settings = json.loads(saved.read_text())
    settings.pop("pad_token", None)
    saved.write_text(json.dumps({**settings, "model_max_length": 77}))
    _, tokenizer, cfg = export.load_adapted(run)
    assert tokenizer.model_max_length == 77 and cfg.model.pad_token is None
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    cfg.model.pad_token = "<|endoftext|>"
    assert export._adapter_tokenizer(run / "adapter", cfg.model).pad_token == "<|endoftext|>"
    for name in ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja"):
        (run / "adapter" / name).unlink(missing_ok=True)
    _, fallback, _ = export.load_adapted(run)
    assert fallback.model_max_length != 77 and len(fallback) == SMALL_VOCAB


def test_merge_loads_the_run_on_the_hardware_it_is_given(monkeypatch):
    seen = []

    class Adapted:
        def merge_and_unload(self):
            return torch.nn.Linear(1, 1)

    def load_adapted(run_dir, hw=export.CPU):
        seen.append((run_dir, hw))
        return Adapted(), "tokenizer", "cfg"

    monkeypatch.setattr(export, "load_adapted", load_adapted)
    hw = Hardware("cpu", "bf16", 1)
    merged, tokenizer, cfg = export.merge("a-run", hw)
    assert seen == [("a-run", hw)] and (tokenizer, cfg) == ("tokenizer", "cfg") and not merged.training


def test_export_checks_the_push_before_any_work(run_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        export.export(run_dir, out=tmp_path / "out", push_repo="no repo")
    assert str(err.value) == "--push-to-hub 'no repo' is invalid: expected a Hub repo id like owner/name"
    assert not (tmp_path / "out").exists()


class FakeHub:
    """huggingface_hub.HfApi's two calls that push_to_hub makes, recorded instead of sent."""

    calls: list = []

    def __init__(self, token=None):
        FakeHub.calls.append(("token", token))

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeHub.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message):
        FakeHub.calls.append(("upload_folder", repo_id, folder_path, commit_message))
        return type("CommitInfo", (), {"commit_url": f"https://hf.co/{repo_id}/commit/abc"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setenv("HF_TOKEN", "hf_push_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return FakeHub.calls


def test_push_to_hub_creates_a_private_repo_and_uploads_the_folder(fake_hub, tmp_path):
    assert export.push_to_hub(tmp_path, "me/smol-med") == "https://hf.co/me/smol-med/commit/abc"
    assert fake_hub == [("token", "hf_push_token"), ("create_repo", "me/smol-med", True, True),
                        ("upload_folder", "me/smol-med", str(tmp_path), "medsweep-export")]
    fake_hub.clear()
    export.push_to_hub(tmp_path, "me/open", private=False)
    assert fake_hub[1] == ("create_repo", "me/open", False, True)


def test_export_pushes_the_folder_asked_for(run_dir, fake_hub, tmp_path):
    summary = export.export(run_dir, tmp_path / "a", gguf_types=[], push_repo="me/adapter", push_what="adapter",
                            private=False)
    assert summary["pushed"] == {"repo": "me/adapter", "what": "adapter",
                                 "commit": "https://hf.co/me/adapter/commit/abc"}
    assert fake_hub[1:] == [("create_repo", "me/adapter", False, True),
                            ("upload_folder", "me/adapter", str(run_dir / "adapter"), "medsweep-export")]
    fake_hub.clear()
    summary = export.export(run_dir, tmp_path / "m", gguf_types=[], push_repo="me/merged")
    assert fake_hub[1:] == [("create_repo", "me/merged", True, True),
                            ("upload_folder", "me/merged", str(tmp_path / "m" / "merged"), "medsweep-export")]
    assert json.loads((tmp_path / "m" / "export.json").read_text())["pushed"]["what"] == "merged"


# --------------------------------------------------------------------------- the command's help, output and logging


HELP = """usage: medsweep-export [-h] [--out OUT] [--gguf GGUF] [--push-to-hub REPO]
                       [--push {merged,adapter}] [--public]
                       run_dir

`medsweep-export <run dir>`: merge a run's LoRA adapter into its base model and write what other tools load.

positional arguments:
  run_dir               a medsweep run directory (config.yaml + adapter/)

options:
  -h, --help            show this help message and exit
  --out OUT             output folder (default: <run dir>/export)
  --gguf GGUF           comma-separated GGUF types: f16, q8_0, f32, or none (default: f16,q8_0)
  --push-to-hub REPO    also upload to this Hub repo (token from HF_TOKEN)
  --push {merged,adapter}
                        what --push-to-hub uploads (default: merged)
  --public              create the Hub repo public (default: private)
"""


def test_help_names_every_option_and_its_default(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps at the terminal width
    with pytest.raises(SystemExit) as done:
        export.main(["--help"])
    assert done.value.code == 0 and capsys.readouterr().out == HELP


def test_main_prints_each_file_and_the_push_and_quiets_the_libraries(run_dir, fake_hub, tmp_path, capsys,
                                                                     monkeypatch):
    import logging

    # logging.basicConfig only configures a root logger without handlers (pytest gives it some)
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.WARNING)
    noisy = ("transformers", "peft", "huggingface_hub")
    for name in noisy:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    out = tmp_path / "out"
    assert export.main([str(run_dir), "--gguf", "f16", "--out", str(out), "--push-to-hub", "me/m", "--push",
                        "adapter", "--public"]) == 0
    size = (out / "model-f16.gguf").stat().st_size
    assert f"{size / 2**20:.1f}" not in ("0.0", f"{size / 2**21:.1f}")  # the MiB figure below tells 2**20
    assert capsys.readouterr().out == (f"merged model: {out / 'merged'}\n"
                                       f"gguf f16: {out / 'model-f16.gguf'} ({size / 2**20:.1f} MiB)\n"
                                       f"Ollama: ollama create <name> -f {out / 'Modelfile'}\n"
                                       "pushed adapter to me/m\n")
    assert fake_hub[1:] == [("create_repo", "me/m", False, True),
                            ("upload_folder", "me/m", str(run_dir / "adapter"), "medsweep-export")]
    assert logging.root.level == logging.INFO and len(logging.root.handlers) == 1
    assert logging.root.handlers[0].formatter._fmt == "medsweep-export: %(message)s"
    assert [logging.getLogger(name).level for name in noisy] == [logging.WARNING] * 3


def test_push_to_hub_returns_what_an_older_hub_client_returns(fake_hub, tmp_path, monkeypatch):
    # huggingface_hub before 0.20 returned the commit URL itself (a str) from upload_folder
    monkeypatch.setattr(FakeHub, "upload_folder", lambda self, **kw: "https://hf.co/me/m/commit/def")
    assert export.push_to_hub(tmp_path, "me/m") == "https://hf.co/me/m/commit/def"


# --------------------------------------------------------------------------- gguf_writer's parts, on stand-ins


class StandInTokenizer:
    """What gguf_writer reads of a tokenizer: backend_tokenizer.to_str() (the tokenizer.json) and get_vocab()."""

    def __init__(self, pre_tokenizer=None, vocab=None, model=None, added=None):
        spec = {"pre_tokenizer": pre_tokenizer, "model": model or {"type": "BPE", "vocab": {}}}
        if added is not None:
            spec["added_tokens"] = added
        self.backend_tokenizer = types.SimpleNamespace(to_str=lambda: json.dumps(spec))
        self._vocab = vocab or {}

    def get_vocab(self):
        return self._vocab


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}


def test_pre_tokenizer_names_of_the_supported_vocabularies():
    name = gguf_writer._pre_tokenizer_name
    smol = {"<|endoftext|>": 0, "<|im_start|>": 1, **{f"t{i}": i for i in range(2, 49152)}}
    assert name(StandInTokenizer(BYTE_LEVEL, smol)) == "smollm"  # SmolLM2's vocabulary, whatever its pre-tokenizer
    assert name(StandInTokenizer(None, smol)) == "smollm"
    for other in ({**smol, "extra": 49152}, {**smol, "<|im_start|>": 5}, {**smol, "<|endoftext|>": 7}):
        assert name(StandInTokenizer(BYTE_LEVEL, other)) == "gpt-2"  # not SmolLM2's: its byte-level rule
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits"}, BYTE_LEVEL]}
    assert name(StandInTokenizer(digits)) == "smollm"
    split = {"type": "Sequence", "pretokenizers": [{"type": "Split"}, BYTE_LEVEL]}
    assert name(StandInTokenizer(split, {"<|begin_of_text|>": 0})) == "llama-bpe"
    assert name(StandInTokenizer({"type": "ByteLevel"})) == "gpt-2"  # use_regex defaults to true
    for pre, vocab, kinds in ((split, {}, "['Split', 'ByteLevel']"), ({**BYTE_LEVEL, "use_regex": False}, {},
                                                                       "['ByteLevel']"),
                              (None, {}, "[None]"), ({"type": "Sequence", "pretokenizers": [BYTE_LEVEL, {
                                  "type": "Digits"}]}, {}, "['ByteLevel', 'Digits']"),
                              ({"type": "Digits"}, {}, "['Digits']"), ({"type": "Sequence"}, {}, "['Sequence']")):
        with pytest.raises(ModelError) as err:
            name(StandInTokenizer(pre, vocab))
        assert str(err.value) == (f"cannot tell llama.cpp's pre-tokenizer for this vocabulary (pre_tokenizer {kinds}); "
                                  "GGUF export supports SmolLM2 / GPT-2 / Llama 3 byte-level BPE tokenizers")


def test_vocabulary_tokens_types_and_merges():
    import gguf

    T = gguf.TokenType
    model = {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"], "ab b"]}
    added = [{"id": 3, "content": "<s>", "special": True}, {"id": 4, "content": "<x>", "special": False},
             {"id": 5, "content": "<y>"}]
    tokens, kinds, merges = gguf_writer._vocab(StandInTokenizer(model=model, added=added), 8)
    assert tokens == ["a", "b", "ab", "<s>", "<x>", "<y>", "[PAD6]", "[PAD7]"]  # ids the tokenizer lacks: padding
    assert kinds == [T.NORMAL, T.NORMAL, T.NORMAL, T.CONTROL, T.USER_DEFINED, T.USER_DEFINED, T.UNUSED, T.UNUSED]
    assert all(type(k) is int for k in kinds) and merges == ["a b", "ab b"]
    assert gguf_writer._vocab(StandInTokenizer(model={"type": "BPE", "vocab": {"a": 0}}), 1) == (["a"], [1], [])
    with pytest.raises(ModelError) as err:
        gguf_writer._vocab(StandInTokenizer(model=model, added=added), 5)
    assert str(err.value) == "the tokenizer has ids up to 5 but the model's vocabulary is 5"
    with pytest.raises(ModelError) as err:
        gguf_writer._vocab(StandInTokenizer(model={"type": "Unigram", "vocab": [["a", 0.0]]}), 4)
    assert str(err.value) == "GGUF export needs a byte-level BPE tokenizer; this one is Unigram"


def test_rope_theta_plain_rope_only():
    config = types.SimpleNamespace
    assert gguf_writer._rope_theta(config(rope_parameters={"rope_type": "default", "rope_theta": 5e5})) == 500000.0
    assert gguf_writer._rope_theta(config(rope_parameters={"rope_theta": 100})) == 100.0  # no type: plain RoPE
    assert type(gguf_writer._rope_theta(config(rope_parameters={"rope_theta": 100}))) is float
    assert gguf_writer._rope_theta(config(rope_parameters=None, rope_theta=10000)) == 10000.0  # older configs
    assert gguf_writer._rope_theta(config(rope_theta=20)) == 20.0
    assert gguf_writer._rope_theta(config(rope_parameters={"rope_type": "default"}, rope_theta=30)) == 30.0
    with pytest.raises(ModelError) as err:
        gguf_writer._rope_theta(config(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5}))
    assert str(err.value) == "GGUF export supports plain RoPE only; this model uses rope_type='llama3'"
    with pytest.raises(ModelError) as err:
        gguf_writer._rope_theta(config(rope_parameters={}))
    assert str(err.value) == "the model config has no rope_theta"


def test_tensor_types():
    import gguf

    T, kind = gguf.GGMLQuantizationType, gguf_writer._tensor_type
    row64, row48, vector = np.zeros((4, 64)), np.zeros((4, 48)), np.zeros(64)
    assert [kind("blk.0.attn_q.weight", row64, q) for q in ("f16", "q8_0", "f32")] == [T.F16, T.Q8_0, T.F32]
    assert kind("blk.0.attn_q.weight", row48, "q8_0") == T.F16  # rows not a multiple of 32 values
    assert kind("blk.0.attn_q.weight", np.zeros((4, 32)), "q8_0") == T.Q8_0
    assert {kind("x.bias", vector, q) for q in ("f16", "q8_0", "f32")} == {T.F32}  # 1-D: f32
    assert {kind("blk.0.attn_norm.weight", row64, q) for q in ("f16", "q8_0")} == {T.F32}  # norms: f32


def test_permute_interleaves_the_rotary_halves_of_each_head():
    """Rows of each head: the first half's row i, then the second half's row i (2 heads of 4 rows, 1 column)."""
    q = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert gguf_writer._permute(q, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert gguf_writer._permute(q, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def _tiny_llama(vocab_size: int, **config):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, **config}
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **settings)).eval()


def test_write_gguf_untied_f32_with_wide_heads_tensor_by_tensor(small_tokenizer_dir, tmp_path):
    """An untied LM head (written as output.weight), heads wider than hidden / heads (key and value length
    written), f32: every tensor comes back exactly, q and k rows permuted; the metadata of a plain tokenizer."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    model = _tiny_llama(SMALL_VOCAB, tie_word_embeddings=False, head_dim=32,
                        rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer_dir)
    tokenizer.chat_template, tokenizer.add_bos_token = None, True
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = "<|im_start|>", "<|im_end|>", None
    tokenizer.unk_token = None
    path = tmp_path / "deeper" / "still" / "m.gguf"
    summary = gguf_writer.write_gguf(model, tokenizer, path, "f32", name="wide")
    assert summary == {"path": str(path), "type": "f32", "bytes": path.stat().st_size, "tensor_types": {"F32": 12},
                       "tensors": 12}
    assert os.listdir(path.parent) == ["m.gguf"]
    reader = GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert (field("general.name"), field("general.type"), field("general.file_type")) == ("wide", "model", 0)
    assert (field("llama.attention.key_length"), field("llama.attention.value_length")) == (32, 32)
    assert (field("llama.rope.dimension_count"), field("llama.rope.freq_base")) == (32, 5000.0)
    assert (field("llama.embedding_length"), field("llama.block_count"), field("llama.context_length")) == (64, 1, 256)
    assert (field("llama.attention.head_count"), field("llama.attention.head_count_kv")) == (4, 2)
    assert field("llama.feed_forward_length") == 128 and field("llama.vocab_size") == SMALL_VOCAB
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert field("tokenizer.ggml.add_bos_token") is True and field("tokenizer.ggml.add_space_prefix") is False
    absent = {"tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.chat_template",
              "general.quantization_version"}
    assert not absent & set(reader.fields)
    assert field("tokenizer.ggml.tokens") == [tokenizer.convert_ids_to_tokens(i) for i in range(SMALL_VOCAB)]
    state = model.state_dict()
    expected = {"token_embd.weight": state["model.embed_tokens.weight"], "output.weight": state["lm_head.weight"],
                "output_norm.weight": state["model.norm.weight"]}
    for hf, name in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                     ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                     ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
                     ("post_attention_layernorm", "ffn_norm")):
        weight = state[f"model.layers.0.{hf}.weight"].numpy()
        if name in ("attn_q", "attn_k"):
            weight = gguf_writer._permute(weight, 4 if name == "attn_q" else 2)
        expected[f"blk.0.{name}.weight"] = torch.from_numpy(weight)
    read = {t.name: np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    assert set(read) == set(expected)
    for name, tensor in expected.items():
        np.testing.assert_array_equal(read[name], tensor.numpy().reshape(read[name].shape), err_msg=name)


def test_write_gguf_refuses_what_it_cannot_write(small_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer_dir)
    model = _tiny_llama(SMALL_VOCAB)
    with pytest.raises(ConfigError) as err:
        gguf_writer.write_gguf(model, tokenizer, tmp_path / "m.gguf", "q4_k")
    assert str(err.value) == "--gguf 'q4_k' is invalid: allowed f16, q8_0, f32"
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=SMALL_VOCAB, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ModelError) as err:
        gguf_writer.write_gguf(gpt2, tokenizer, tmp_path / "m.gguf")
    assert str(err.value) == ("GGUF export writes the Llama architecture; 'gpt2' is not supported (the merged "
                              "safetensors are still written)")
    state = model.state_dict()
    odd = types.SimpleNamespace(config=model.config, state_dict=lambda: {**state, "model.extra.weight": state[
        "model.norm.weight"]})
    with pytest.raises(ModelError) as err:
        gguf_writer.write_gguf(odd, tokenizer, tmp_path / "m.gguf")
    assert str(err.value) == "no GGUF name for tensor 'model.extra.weight' of the Llama architecture"
    assert not list(tmp_path.glob("*.gguf"))


def test_write_gguf_skips_rotary_buffers_and_a_tied_head(small_tokenizer_dir, tmp_path):
    """Older transformers kept rotary_emb.inv_freq in the state dict; a tied lm_head.weight is token_embd again."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer_dir)
    model = _tiny_llama(SMALL_VOCAB, tie_word_embeddings=True).to(torch.bfloat16)  # as merged from a bf16 run
    state = model.state_dict()
    inv_freq = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8), "model.rotary_emb.inv_freq":
                torch.ones(8)}
    older = types.SimpleNamespace(config=model.config, state_dict=lambda: {
        **dict(list(state.items())[:3]), **inv_freq, **dict(list(state.items())[3:]),
        "lm_head.weight": state["model.embed_tokens.weight"]})
    summary = gguf_writer.write_gguf(older, tokenizer, tmp_path / "m.gguf")
    reader = GGUFReader(tmp_path / "m.gguf")
    names = [t.name for t in reader.tensors]
    assert summary["tensors"] == len(names) == 11 and "output.weight" not in names and "blk.0.ffn_down.weight" in names
    assert reader.fields["general.name"].contents() == "model"  # the default name
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    np.testing.assert_array_equal(np.asarray(norm.data), state["model.norm.weight"].float().numpy())


# --------------------------------------------------------------------------- a generator model from a path


def test_generator_model_from_a_run_dir_is_the_merged_model(run_dir):
    model, tokenizer = export.load_generator_model(run_dir)
    merged, _, _ = export.merge(run_dir)
    assert type(model) is type(merged) and not model.training  # a plain transformers model: the adapter merged in
    reference = merged.state_dict()
    assert model.state_dict().keys() == reference.keys()
    assert all(torch.equal(t, reference[k]) for k, t in model.state_dict().items())
    assert len(tokenizer) == SMALL_VOCAB  # the tokenizer saved with the adapter


def test_generator_model_from_a_run_dir_merges_for_and_moves_to_the_generator_device(run_dir, monkeypatch):
    hw = Hardware(device="cpu", precision="fp32", threads=1)  # not export.CPU, merge's default
    calls: list = []
    model = types.SimpleNamespace(to=lambda device: calls.append(("to", device)) or "moved")
    monkeypatch.setattr(export, "merge", lambda path, hw=None: calls.append(("merge", path, hw)) or (model, "tok", {}))
    assert export.load_generator_model(run_dir, hw) == ("moved", "tok")
    assert calls == [("merge", run_dir, hw), ("to", "cpu")]


def test_generator_model_from_a_model_dir(small_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    saved = tmp_path / "model"
    _tiny_llama(SMALL_VOCAB).to(torch.bfloat16).save_pretrained(saved)  # stored in bf16
    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(saved)
    model, loaded = export.load_generator_model(saved)
    assert next(model.parameters()).dtype == torch.float32  # the device's weight dtype (fp32 on the CPU)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"  # no pad token: eos pads
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(saved)
    assert export.load_generator_model(saved)[1].pad_token == "<|endoftext|>"  # its own pad token is kept
    (saved / "config.yaml").write_text("model: {}\n")  # a stray run config beside config.json: still a model dir
    assert export.load_generator_model(saved)[1].pad_token == "<|endoftext|>"
    # moved to the generator's device: "meta" stands in for a GPU on a machine without one
    model, _ = export.load_generator_model(saved, Hardware(device="meta", precision="fp32", threads=1))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    with pytest.raises(ConfigError) as err:
        export.load_generator_model(tmp_path / "nothing")
    assert str(err.value) == (f"generator.model_dir={str(tmp_path / 'nothing')!r} is invalid: neither a run directory "
                              "(config.yaml + adapter/) nor a model directory (config.json)")
