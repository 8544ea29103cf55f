"""medsweep.record: the comparison axes, secret redaction (keys, environment values, command-line values), Hydra's
saved configs scrubbed, atomic writes (under the umask; a writer killed at any moment leaves the old record or the
new one, whole), reading a record back, timestamps, and the environment block of a record. Run ids are in
test_run_ids.py."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from medsweep import record
from tests.conftest import ROOT

ENV_SECRET = "hf_envsecret_1234"


@pytest.fixture(autouse=True)
def clean_secrets(monkeypatch):
    """No secret from the environment or from earlier overrides, unless a test sets one."""
    for key in record.SECRET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(record, "_OVERRIDE_SECRETS", set())


def test_axes_of_a_run(compose):
    cfg = compose(["experiment=smoke", "lora.r=16", "lora.alpha=32", "lora.dropout=0.1", "train.seed=2",
                   "train.lr=0.001", "train.epochs=2", "model.load_in_4bit=auto"])
    assert record.axes(cfg) == {
        "model": "tiny_random", "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.1, "train.max_seq_length": 128,
        "data": "sample", "profile": "local_cpu", "train.seed": 2, "train.lr": 0.001, "train.epochs": 2.0,
        "model.load_in_4bit": "auto"}
    assert record.axes(compose([]))["model.load_in_4bit"] == "False"  # a string: one column type in the tables


@pytest.mark.parametrize("key", ["hf_token", "token", "api_key", "apikey", "api-key", "WANDB_API_KEY", "db.password",
                                 "passwd", "my_secret", "credentials", "credential", "auth", "x.auth.y",
                                 "access_key", "AccessKey".lower(), "AUTH_TOKEN"])
def test_secret_looking_keys(key):
    assert record.is_secret_key(key)


@pytest.mark.parametrize("key", ["max_new_tokens", "pad_token", "EOS_TOKEN", "bos_token", "unk_token", "sep_token",
                                 "cls_token", "mask_token", "tokenizer", "author", "authority", "keyword", "secretary",
                                 "tokens", 3, None])
def test_keys_that_are_not_secret(key):
    assert not record.is_secret_key(key)


def test_redact_masks_secret_keys_and_known_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "abc")  # too short to mask inside text
    monkeypatch.setenv("WANDB_API_KEY", "wxyz")  # 4 characters: long enough
    data = {"hf_token": "abc", "api_key": None, "password": "", "pad_token": "<pad>",
            "nested": {"auth": 12, "path": f"/cache/{ENV_SECRET}/x", "list": [f"a {ENV_SECRET}", {"token": "t"}, 3]},
            "note": "abc is fine", "w": "wxyz"}
    assert record.redact(data) == {
        "hf_token": "***", "api_key": None, "password": "", "pad_token": "<pad>",
        "nested": {"auth": "***", "path": "/cache/***/x", "list": ["a ***", {"token": "***"}, 3]},
        "note": "abc is fine", "w": "***"}
    assert record.redact(5) == 5 and record.redact(None) is None


def test_every_secret_env_variable_is_masked(monkeypatch):
    for i, key in enumerate(record.SECRET_ENV):
        monkeypatch.setenv(key, f"value-{i}-xyz")
    text = " ".join(f"value-{i}-xyz" for i in range(len(record.SECRET_ENV)))
    assert record.redact(text) == " ".join(["***"] * len(record.SECRET_ENV))
    assert set(record.SECRET_ENV) == {"WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY"}


def test_redact_override():
    assert record.redact_override("+data.options.hf_token=s3cr3t-value") == "+data.options.hf_token=***"
    # the value is remembered: masked wherever it shows up later
    assert record.redact("dir=run,data.options.hf_token=s3cr3t-value") == "dir=run,data.options.hf_token=***"
    assert record.redact_override("~logger.api_key=abcd") == "~logger.api_key=***"
    assert record.redact_override("wandb.api_key=abc") == "wandb.api_key=***"  # masked here, too short to remember
    assert record.redact("abc") == "abc" and record.redact("abcd") == "***"
    assert record._OVERRIDE_SECRETS == {"s3cr3t-value", "abcd"}
    assert record.redact_override("hf_token=") == "hf_token="
    assert record.redact_override("hf_token=null") == "hf_token=null"
    assert record.redact_override("lora.r=8") == "lora.r=8"
    assert record.redact_override("-m") == "-m"
    assert record.redact_override("max_new_tokens=64") == "max_new_tokens=64"
    assert record.redact_override("+token=tok1") == "+token=***"  # the leading +/~ is not part of the key
    assert record.redact_override("+x.hf_token=ab=cd") == "+x.hf_token=***"  # the value may hold "="
    # the last dotted part of the key decides: an auth.method is not a secret, and neither is an Xauth
    assert record.redact_override("+data.options.auth.method=basic") == "+data.options.auth.method=basic"
    assert record.redact_override("~Xauth=basic1") == "~Xauth=basic1"


def test_redact_override_masks_env_secrets_in_other_values(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", ENV_SECRET)
    assert record.redact_override(f"data.path=/x/{ENV_SECRET}.jsonl") == "data.path=/x/***.jsonl"


def test_scrub_yaml_files(tmp_path):
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(["lora.r=8", "+data.options.auth_token=tok-9876", 3]))
    hydra_yaml = tmp_path / "hydra.yaml"
    hydra_yaml.write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["+logger.api_key=key-5555"], "hydra": ["hydra.run.dir=x", "+hydra.x.auth=hy-3333"]},
        "job": {"override_dirname": "+logger.api_key=key-5555,lora.r=8", "env": "hy-3333"}}}))
    multirun = tmp_path / "multirun.yaml"
    multirun.write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["+data.hf_token=mr-4444"]}},
                                        "data": {"note": "given mr-4444"}, "logger": {"api_key": "k"}},
                                       sort_keys=False))
    clean = tmp_path / "config.yaml"
    clean.write_text("lora:\n  r: 8\n")
    before = clean.stat().st_mtime_ns
    text = tmp_path / "text.yaml"
    text.write_text("just text\n")
    record.scrub_yaml_files([tmp_path / "absent.yaml", overrides, hydra_yaml, multirun, clean, text])
    assert text.read_text() == "just text\n"
    assert yaml.safe_load(overrides.read_text()) == ["lora.r=8", "+data.options.auth_token=***", 3]
    assert yaml.safe_load(hydra_yaml.read_text()) == {"hydra": {
        "overrides": {"task": ["+logger.api_key=***"], "hydra": ["hydra.run.dir=x", "+hydra.x.auth=***"]},
        "job": {"override_dirname": "+logger.api_key=***,lora.r=8", "env": "***"}}}
    assert yaml.safe_load(multirun.read_text()) == {"hydra": {"overrides": {"task": ["+data.hf_token=***"]}},
                                                    "data": {"note": "given ***"}, "logger": {"api_key": "***"}}
    assert clean.read_text() == "lora:\n  r: 8\n" and clean.stat().st_mtime_ns == before  # nothing to scrub
    assert not (tmp_path / "absent.yaml").exists()
    assert multirun.read_text().startswith("hydra:")  # the key order is kept


def test_scrub_a_config_without_a_hydra_node(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"overrides": {"task": ["x.token=tt-7777"]}, "note": "tt-7777"}))
    record.scrub_yaml_files([path])
    assert yaml.safe_load(path.read_text()) == {"overrides": {"task": ["x.token=***"]}, "note": "***"}


def test_atomic_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    target = tmp_path / "new" / "deeper" / "metrics.json"
    record.atomic_write_json(target, {"status": "complete", "ppl": math.nan, "path": Path("/p"),
                                      "hf_token": "x", "note": ENV_SECRET})
    assert target.read_text() == ('{\n  "status": "complete",\n  "ppl": NaN,\n  "path": "/p",\n  "hf_token": "***",\n'
                                  '  "note": "***"\n}\n')
    rows = tmp_path / "p.jsonl"
    record.atomic_write_jsonl(rows, [{"q": "Fièvre?", "token": "t"}, {"a": ENV_SECRET, "p": Path("/d")}])
    assert rows.read_text(encoding="utf-8") == '{"q": "Fièvre?", "token": "***"}\n{"a": "***", "p": "/d"}\n'
    record.atomic_write_text(tmp_path / "t.txt", "ünï")
    assert (tmp_path / "t.txt").read_bytes() == "ünï".encode()
    record.atomic_write_jsonl(rows, [])
    assert rows.read_text() == ""
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace",
                        lambda src, dst: replaced.append((Path(src), Path(dst))) or real_replace(src, dst))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(Path(f"/proc/self/fd/{fd}").read_text())
                        or real_fsync(fd))
    record.atomic_write_text(tmp_path / "new" / "x.json", "complete text")
    ((src, dst),) = replaced
    # a hidden temp file next to the target, renamed over it; the text is on its way to the disk before the rename
    assert dst == tmp_path / "new" / "x.json" and src.parent == dst.parent
    assert src.name.startswith(".x.json.") and src.name.endswith(".tmp")
    assert synced == ["complete text"]
    monkeypatch.setattr(os, "replace", real_replace)
    (tmp_path / "new" / "x.json").unlink()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["metrics.json", "p.jsonl", "t.txt"]


def test_a_failed_write_leaves_no_temp_file_and_raises(tmp_path, monkeypatch):
    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        record.atomic_write_text(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_records_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        record.atomic_write_json(tmp_path / "metrics.json", {"status": "running"})
        assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644  # colleagues can read the record
        os.umask(0o077)
        record.atomic_write_json(tmp_path / "private.json", {"status": "running"})
        assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_atomic_write_never_leaves_a_half_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    record.atomic_write_json(target, {"status": "complete", "x": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed between write and rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        record.atomic_write_json(target, {"status": "running", "x": 2})
    assert json.loads(target.read_text()) == {"status": "complete", "x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


# The writer child SIGKILLs itself at one exact point of atomic_write_text, so every point is hit on every run.
_KILL_AT = {
    # half of the new text reached the disk
    "mid-write": "_open = os.fdopen\nclass Half:\n    def __init__(s, fh): s.fh = fh\n"
                 "    def __enter__(s): return s\n    def __exit__(s, *a): s.fh.close()\n"
                 "    def write(s, text):\n"
                 "        s.fh.write(text[:len(text) // 2]); s.fh.flush(); os.kill(os.getpid(), 9)\n"
                 "os.fdopen = lambda *a, **k: Half(_open(*a, **k))\n",
    # the new text is complete and synced, not yet renamed over the record
    "before-rename": "def replace(*a):\n    os.kill(os.getpid(), 9)\nos.replace = replace\n",
    # renamed: the new record is in place
    "after-rename": "_r = os.replace\ndef replace(*a):\n    _r(*a); os.kill(os.getpid(), 9)\nos.replace = replace\n",
}


@pytest.mark.parametrize("moment, expected", [("mid-write", 0), ("before-rename", 0), ("after-rename", 1)])
def test_killed_writer_process_leaves_old_or_new_record(tmp_path, moment, expected):
    """SIGKILL inside the writer at each moment: the record is the old one or the new one, whole, never a mix."""
    target = tmp_path / "metrics.json"
    record.atomic_write_json(target, {"status": "running", "n": 0, "pad": "x" * 200_000})
    code = ("import os, sys\nfrom pathlib import Path\nfrom medsweep import record\n" + _KILL_AT[moment]
            + "record.atomic_write_json(Path(sys.argv[1]), {'status': 'running', 'n': 1, 'pad': 'y' * 200000})\n"
            + "print('not killed')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]  # the writer ran and died at that point, not before
    rec = json.loads(target.read_text())
    assert rec["n"] == expected and set(rec["pad"]) == {"xy"[expected]}


def test_read_record(tmp_path):
    """A metrics.json is read through RunRecord.load (record.py's one-time read_record helper folded into it)."""
    from medsweep.runrecord import RunRecord

    def read_record(run_dir):
        rec = RunRecord.load(run_dir)
        return rec.to_dict() if rec is not None else None

    assert read_record(tmp_path) is None
    (tmp_path / "metrics.json").write_text('{"status": "running"')
    assert read_record(tmp_path) is None
    (tmp_path / "metrics.json").write_text('{"status": "complete", "n": 1}')
    assert read_record(str(tmp_path)) == {"status": "complete", "n": 1}
    (tmp_path / "metrics.json").write_bytes(b"\xff\xfe")
    assert read_record(tmp_path) is None


def test_now_is_utc_seconds(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9: a local time would be 9 hours off
    time.tzset()
    try:
        _check_now()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def _check_now():
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = record.now()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert before <= datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) <= after


class _Run:
    """A stand-in for subprocess.run answering git's two questions."""

    def __init__(self, head="0123abcd", head_rc=0, status="", error=None):
        self.head, self.head_rc, self.status, self.error, self.calls = head, head_rc, status, error, []

    def __call__(self, cmd, **kwargs):
        self.calls.append((cmd, kwargs))
        if self.error:
            raise self.error
        out = self.head + "\n" if cmd[1] == "rev-parse" else self.status
        return subprocess.CompletedProcess(cmd, self.head_rc if cmd[1] == "rev-parse" else 0, stdout=out, stderr="")


def test_git_commit(monkeypatch):
    run = _Run()
    monkeypatch.setattr(record.subprocess, "run", run)
    assert record._git_commit() == "0123abcd"
    here = Path(record.__file__).parent
    assert run.calls == [
        (["git", "rev-parse", "HEAD"], {"cwd": here, "capture_output": True, "text": True, "timeout": 5}),
        (["git", "status", "--porcelain", "--untracked-files=no"],
         {"cwd": here, "capture_output": True, "text": True, "timeout": 5})]
    monkeypatch.setattr(record.subprocess, "run", _Run(status=" M medsweep/fit.py\n"))
    assert record._git_commit() == "0123abcd-dirty"
    monkeypatch.setattr(record.subprocess, "run", _Run(status="\n"))
    assert record._git_commit() == "0123abcd"
    monkeypatch.setattr(record.subprocess, "run", _Run(head_rc=128, status=" M x\n"))  # not a git checkout
    assert record._git_commit() is None
    monkeypatch.setattr(record.subprocess, "run", _Run(error=FileNotFoundError("git")))  # no git installed
    assert record._git_commit() is None
    monkeypatch.setattr(record.subprocess, "run", _Run(error=subprocess.TimeoutExpired("git", 5)))
    assert record._git_commit() is None


def test_environment(monkeypatch):
    from importlib import metadata

    import torch

    monkeypatch.setattr(record, "_git_commit", lambda: "c0ffee")
    real_version = metadata.version

    def version(pkg):
        if pkg == "bitsandbytes":
            raise metadata.PackageNotFoundError(pkg)
        return real_version(pkg)

    monkeypatch.setattr(record.metadata, "version", version)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS",
                "SLURM_GPUS_ON_NODE", "SLURM_RESTART_COUNT", "SLURM_JOB_CPUS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    slurm = {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_PARTITION": "gpu",
             "SLURM_JOB_GPUS": "0,1", "SLURM_GPUS_ON_NODE": "2", "SLURM_RESTART_COUNT": "1",
             "SLURM_JOB_CPUS_PER_NODE": "4"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    import platform

    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    monkeypatch.setenv("SLURM_OTHER", "x")
    monkeypatch.setattr(sys, "argv", ["medsweep", "lora.r=8", "+data.options.hf_token=argv-secret"])
    env = record.environment()
    assert env["git_commit"] == "c0ffee"
    assert env["python"] == sys.version.split()[0] and env["host"] == socket.gethostname()
    assert list(env["packages"]) == ["medsweep", "torch", "transformers", "peft", "datasets", "hydra-core",
                                     "omegaconf", "submitit", "bitsandbytes", "sacrebleu", "rouge-score", "wandb",
                                     "pandas"]
    assert env["packages"]["medsweep"] == "0.1.0" and env["packages"]["bitsandbytes"] is None
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] == torch.__version__
    assert env["device"] == {"cuda": False, "cpu_threads": torch.get_num_threads(), "cpu_bf16": True}  # AMX only
    assert env["cuda_visible_devices"] == "1,3"
    assert env["slurm"] == slurm  # SLURM_OTHER is not one of them
    assert env["argv"] == ["medsweep", "lora.r=8", "+data.options.hf_token=***"]
    assert env["processor"] == "riscv64" and env["platform"] == platform.platform()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(platform, "processor", lambda: "x86_64")
    assert record.environment()["device"]["cpu_bf16"] is False and record.environment()["processor"] == "x86_64"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert record.environment()["device"]["cpu_bf16"] is True


def test_environment_lists_the_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(record, "_git_commit", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA A100 #{i}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = record.environment()
    assert env["device"]["cuda"] is True and env["device"]["gpus"] == ["NVIDIA A100 #0", "NVIDIA A100 #1"]
    assert env["cuda_visible_devices"] is None and env["git_commit"] is None


def test_the_run_id_resolver(compose):
    OmegaConf.clear_resolver("run_id")  # registered by an earlier import: this test's registration must be the one used
    record.register_resolvers()
    record.register_resolvers()  # twice: no error
    assert OmegaConf.has_resolver("run_id")
    cfg = compose(["experiment=smoke"], return_hydra_config=True)
    assert cfg.hydra.sweep.subdir == "tiny_random_sample_r8_a16_d0.05_L128_s0_local_cpu-477ee657"
    cfg.lora.r = 4  # not cached: the id follows the config
    assert cfg.hydra.sweep.subdir.startswith("tiny_random_sample_r4_a16_d0.05_L128_s0_local_cpu-")


def test_a_secret_value_is_masked_under_every_key_that_holds_it():
    """A value held by a secret-looking key (a site YAML's api_key) is masked where a plain key repeats it too."""
    cfg = {"site": {"api_key": "k-9f8e7d6c"}, "data": {"note": "use k-9f8e7d6c here"}, "tags": ["k-9f8e7d6c"]}
    assert record.redact(cfg) == {"site": {"api_key": "***"}, "data": {"note": "use *** here"}, "tags": ["***"]}


def test_safe_name_edge_cases():
    assert record.safe_name("model=a/b c") == "model=a_b_c"
    assert record.safe_name("..") == "_" and record.safe_name("") == "_" and record.safe_name("...x.") == "x."
    assert record.safe_name("a:b") == "a_b" and len(record.safe_name("x" * 500)) == record.NAME_MAX


def test_secret_values_thresholds_and_sources(monkeypatch):
    """Well-known tokens count from 4 characters, other secret-looking variables from 8 (shorter values would mask
    common words everywhere); override secrets are labelled as such; plain variables never count."""
    for name in list(os.environ):
        if record.is_secret_key(name) or name in record.SECRET_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setattr(record, "_OVERRIDE_SECRETS", {"ovr-secret-1"})
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "12345678")
    monkeypatch.setenv("OTHER_API_KEY", "1234567")  # 7 characters: not masked
    monkeypatch.setenv("PLAIN_SETTING", "not-a-secret-value")
    found = record.secret_values()
    assert ("HF_TOKEN", "hf_x") in found and ("MY_SERVICE_TOKEN", "12345678") in found
    assert ("override", "ovr-secret-1") in found and not any(v == "1234567" for _, v in found)
    assert not any(k == "PLAIN_SETTING" for k, _ in found)
    assert ("override", "ovr-secret-1") not in record.secret_values(overrides=False)


def test_values_under_secret_keys_in_nested_lists_and_longest_first(monkeypatch):
    obj = {"site": {"api_key": "wxyz", "nested": [{"token": "abwxyzcd"}, "plain"]}, "short": {"token": "abc"}}
    assert sorted(record._values_under_secret_keys(obj)) == ["abwxyzcd", "wxyz"]  # 4 characters and up
    monkeypatch.setattr(record, "secret_values", lambda overrides=True: [])
    # the longer secret is replaced first, so a secret containing a shorter one is masked whole
    # (not alphabetical order: "wxyz" sorts after "abwxyzcd" and would leave "ab...cd" around the mask)
    assert record.redact({"note": "x abwxyzcd y", "site": obj["site"]})["note"] == f"x {record.REDACTED} y"


def test_umask_is_read_without_setting_it_and_the_fallback_restores_it(monkeypatch):
    """_umask reads /proc/self/status (setting the umask to read it would change it for every thread meanwhile);
    where that file is unreadable it sets and restores it."""
    real_umask, real_open = os.umask, open
    old = real_umask(0o027)
    try:
        calls: list[int] = []
        monkeypatch.setattr(record.os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
        assert record._umask() == 0o027 and calls == []

        def no_proc(path, *args, **kwargs):
            if str(path) == "/proc/self/status":
                raise OSError("no /proc here")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", no_proc)
        assert record._umask() == 0o027 and calls == [0o022, 0o027]
        assert real_umask(0o027) == 0o027  # restored
    finally:
        real_umask(old)


def test_safe_name_strips_only_leading_dots():
    """Only dots go from the front (never `..`); a name that starts with another allowed character keeps it."""
    from medsweep.record import safe_name

    assert [safe_name(t) for t in ("Xformer_r8", "..X", "._x", "x.")] == ["Xformer_r8", "X", "_x", "x."]
