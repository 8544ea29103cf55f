"""Errors and secrets across a whole run: a model's or the data's error found after the job started is one line and
exit 2 with no run directory left; the values of secrets in the environment reach no file and no console line, even
in a crash; the model configs trust no remote code and load safetensors only. (The console script's pre-flight is in
test_cli.py, data errors of data.build in test_data.py, atomic record writes in test_record.py.)"""

import json

from tests.conftest import SECRET_ENV, assert_no_secret, run_medsweep


def test_lora_target_missing_from_model(tmp_path, embedded_dir):
    proc = run_medsweep("experiment=smoke", "lora.target_modules=[q_proj,c_attn]", f"output_root={tmp_path}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medsweep: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "c_attn" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_data_error_through_the_entrypoint(tmp_path, embedded_dir):
    proc = run_medsweep("experiment=smoke", "data=local", f"data.path={tmp_path / 'missing.jsonl'}",
                        f"output_root={tmp_path / 'out'}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medsweep: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "missing.jsonl" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_attempt_reruns_a_complete_config_into_a_new_directory(compose):
    from medsweep.record import run_id

    a = compose(["experiment=smoke"], return_hydra_config=True)
    b = compose(["experiment=smoke", "attempt=1"], return_hydra_config=True)
    assert run_id(a) != run_id(b)


# ---- secrets ----------------------------------------------------------------------------------------

def test_env_secrets_never_written_by_a_run_or_a_crash(tmp_path, embedded_dir):
    ok = run_medsweep("experiment=smoke", "eval.num_examples=2", f"output_root={tmp_path}", env=SECRET_ENV)
    assert ok.returncode == 0, ok.stderr[-2000:]  # a crash before any write would leak nothing either
    # fails after its start (record written): no prompt fits 16 tokens
    crash = run_medsweep("experiment=smoke", "eval.num_examples=2", "train.max_seq_length=16",
                         f"output_root={tmp_path / 'out'}", env=SECRET_ENV)
    assert crash.returncode != 0 and "train.max_seq_length=16" in crash.stderr, crash.stderr[-2000:]
    failed = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("*/metrics.json")]
    assert [r["status"] for r in failed] == ["failed"]
    searched = assert_no_secret(tmp_path, ok.stdout + ok.stderr + crash.stdout + crash.stderr)
    assert searched > 10  # records, configs, Hydra's files, predictions, adapter


def test_trust_remote_code_off_and_safetensors_only(compose):
    for name in ("smollm2_135m", "llama3_8b", "mistral_7b", "gemma_1.1_7b", "distilgpt2", "llama2_7b"):
        cfg = compose([f"model={name}"])
        assert cfg.model.trust_remote_code is False and cfg.model.use_safetensors is True


def test_bitsandbytes_cpu_kernel_lines_are_quiet_and_other_kernel_lines_are_not(caplog):
    # Emitted by hand: the real lines come only on a CPU with AVX512-BF16 at `import torch`, so CI's machine decides
    # whether they appear; what medsweep does with them must not depend on that.
    import logging

    import medsweep

    caplog.set_level(logging.INFO)
    repo = medsweep.BNB_CPU_KERNEL_REPO
    kernels_hub = logging.getLogger("kernels._internals.hf_hub")
    kernels_hub.warning(f"Skipping publisher trust check for '{repo}' because Hugging Face Hub is in offline mode.")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward from %s", repo)
    kernels_hub.warning("Skipping publisher trust check for 'someone/other-kernel' because Hugging Face Hub is in "
                        "offline mode.")
    logging.getLogger("bitsandbytes.backends.cpu.ops").error("a real bitsandbytes error")
    assert [r.getMessage() for r in caplog.records] == [
        "Skipping publisher trust check for 'someone/other-kernel' because Hugging Face Hub is in offline mode.",
        "a real bitsandbytes error"]
