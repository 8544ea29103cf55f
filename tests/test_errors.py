"""Bad input answered with one clear line and exit code 2, nothing left behind, nothing lost, no secrets."""

import json
import os
import subprocess
import sys

import pytest

from medsweep import data, record
from medsweep.errors import DataError
from tests.conftest import MEDQUAD_JSONL, ROOT, SECRET_ENV, assert_no_secret, need_shared_data, run_medsweep


def _fails_cleanly(tmp_path, *overrides, key: str, multirun: bool = False):
    proc = run_medsweep(*overrides, f"output_root={tmp_path}", multirun=multirun, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("medsweep: error: "), proc.stderr
    assert key in lines[0] and "Traceback" not in proc.stderr
    assert not any(tmp_path.rglob("*")), "a run directory was left behind"
    return lines[0]


@pytest.mark.parametrize("override, key", [
    ("model=gpt5", "model=gpt5"),
    ("data=pubmed", "data=pubmed"),
    ("profile=8xh100", "profile=8xh100"),
    ("lora.r=0", "lora.r=0"),
    ("lora.r=-8", "lora.r=-8"),
    ("lora.r=eight", "lora.r='eight'"),
    ("lora.r=1.5", "lora.r"),
    ("lora.alpha=0", "lora.alpha=0"),
    ("lora.dropout=1", "lora.dropout=1.0"),
    ("lora.dropout=-0.2", "lora.dropout=-0.2"),
    ("train.max_seq_length=0", "train.max_seq_length=0"),
    ("train.max_seq_length=9000", "context length"),
    ("train.lr=0", "train.lr=0"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("eval.num_examples=50", "eval.num_examples=50"),
    ("model.load_in_4bit=true", "model.load_in_4bit"),
    # values the schema's types allow but the libraries or the code would reject after the model loaded
    ("train.lr_scheduler=cosine_annealing", "train.lr_scheduler='cosine_annealing'"),
    ("train.seed=-1", "train.seed=-1"),
    ("train.seed=4294967296", "train.seed=4294967296"),
    ("data.split_seed=-3", "data.split_seed=-3"),
    ("lora.r=100000", "lora.r=100000"),
    ("train.lr=${nope}", "train.lr is invalid: Interpolation key 'nope' not found"),
    ("data.instruction=${oc.env:MEDSWEEP_UNSET_VARIABLE}", "MEDSWEEP_UNSET_VARIABLE"),
    ("sweep_name=../elsewhere", "sweep_name='../elsewhere'"),
    # keys nothing reads
    ("+lora.rank=8", "lora.rank is invalid: nothing reads it"),
    ("+foo=1", "foo is invalid: nothing reads it"),
    ("+data.options.split=test", "data.options.split is invalid: nothing reads it"),  # the sample data has none
])
def test_config_errors_are_one_line_exit_2_no_run_dir(tmp_path, monkeypatch, capsys, override, key):
    """The console script's own main(), in-process (the pre-flight needs no subprocess; one subprocess case below
    proves the installed entrypoint)."""
    from medsweep import cli, run

    monkeypatch.setattr(sys, "argv", ["medsweep", override, f"output_root={tmp_path}"])
    monkeypatch.setattr(run, "hydra_main", lambda: pytest.fail("the pre-flight let the value through"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exited.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("medsweep: error: ") and key in lines[0], lines
    assert not any(tmp_path.rglob("*")), "a run directory was left behind"


@pytest.mark.parametrize("root, reason", [("/proc/medsweep-results", "cannot write in /proc"),
                                          ("/etc/hostname/results", "/etc/hostname is not a directory")])
def test_unwritable_output_root_is_one_line(monkeypatch, capsys, root, reason):
    from medsweep import cli, run

    monkeypatch.setattr(sys, "argv", ["medsweep", f"output_root={root}"])
    monkeypatch.setattr(run, "hydra_main", lambda: pytest.fail("the pre-flight let the value through"))
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and err == f"medsweep: error: output_root='{root}' is invalid: " + \
        err.split("is invalid: ", 1)[1] and reason in err and "\n" not in err


def test_run_names_stay_one_bounded_directory_name(compose):
    from medsweep.record import NAME_MAX, run_id

    for overrides in (["data.name=../../etc"], ["model.name=a/b/c"], ["data.name=" + "x" * 400],
                      ["data.name=.hidden"]):
        name = run_id(compose(["experiment=smoke", *overrides], return_hydra_config=True))
        readable, digest = name.rsplit("-", 1)
        assert "/" not in name and not name.startswith(".") and len(readable) <= NAME_MAX and len(digest) == 8, name
    plain = run_id(compose(["experiment=smoke"], return_hydra_config=True))
    assert plain.startswith("tiny_random_sample_r8_a16_d0.05_L128_s0_local_cpu-")  # ordinary names unchanged


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


def test_config_error_through_the_console_script(tmp_path):
    _fails_cleanly(tmp_path, "lora.dropout=1", key="lora.dropout=1.0")


def test_sweep_value_errors_are_caught_before_submission(tmp_path):
    line = _fails_cleanly(tmp_path, "lora.r=4,0", key="lora.r=0", multirun=True)
    assert "must be an integer > 0" in line


def test_model_that_does_not_fit_the_profile(tmp_path):
    line = _fails_cleanly(tmp_path, "model=llama3_8b", "profile=1cpu_1v100", key="does not fit")
    assert "llama3_8b" in line and "1cpu_1v100" in line and "GiB" in line


def test_full_traceback_on_request(tmp_path):
    proc = run_medsweep("lora.r=0", f"output_root={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_lora_target_missing_from_model(tmp_path, embedded_dir):
    proc = run_medsweep("experiment=smoke", "lora.target_modules=[q_proj,c_attn]", f"output_root={tmp_path}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medsweep: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "c_attn" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---- data errors: each a DataError with one line naming the file ------------------------------------

def _local(path, **kw):
    from omegaconf import OmegaConf

    base = {"name": "local", "loader": "local", "path": str(path), "hub": None, "hub_config": None,
            "hub_split": "train", "question_col": "question", "answer_col": "answer", "id_col": None,
            "context_col": None, "label_col": None, "options": {}, "limit": None, "split_seed": 0,
            "max_question_words": 512, "max_answer_words": 2048, "instruction": "x"}
    return OmegaConf.create({**base, **kw})


def _data_error(cfg, eval_size=2) -> str:
    with pytest.raises(DataError) as err:
        data.build(cfg, eval_size=eval_size)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_data_errors(tmp_path):
    assert "not found" in _data_error(_local(tmp_path / "nope.jsonl"))
    (tmp_path / "x.docx").write_text("hello")
    assert ".docx" in _data_error(_local(tmp_path / "x.docx")) or "x.docx" in _data_error(_local(tmp_path / "x.docx"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?", "answer": "d"}\n{oops\n')
    assert "bad.jsonl:3:" in _data_error(_local(bad))
    cols = tmp_path / "cols.jsonl"
    cols.write_text('{"q": "a?", "a": "b"}\n')
    assert "question" in _data_error(_local(cols))
    xml = tmp_path / "x.xml"
    xml.write_text("<html><body>not medquad</body></html>")
    assert "x.xml" in _data_error(_local(xml, loader="medquad"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"question": "a?", "answer": ""}\n{"question": " ", "answer": "b"}\n')
    assert "empty" in _data_error(_local(empty))


def test_eval_size_larger_than_dataset():
    need_shared_data()
    message = _data_error(_local(MEDQUAD_JSONL), eval_size=5000)
    assert "train.eval_split=5000" in message


def test_bad_rows_are_skipped_and_counted(tmp_path):
    f = tmp_path / "mixed.jsonl"
    rows = [{"question": f"q{i}?", "answer": f"answer {i}"} for i in range(6)]
    rows += [{"question": "empty?", "answer": ""}, {"question": "long?", "answer": "w " * 3000}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = data.build(_local(f), eval_size=2)
    assert len(splits.train) + len(splits.eval) == 6
    assert splits.stats["dropped_too_long"] == 1
    assert splits.stats["load"]["skipped_empty_answer"] == 1


def test_data_error_through_the_entrypoint(tmp_path, embedded_dir):
    proc = run_medsweep("experiment=smoke", "data=local", f"data.path={tmp_path / 'missing.jsonl'}",
                        f"output_root={tmp_path / 'out'}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medsweep: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "missing.jsonl" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ---- results: atomic writes, nothing finished is overwritten ----------------------------------------

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


def test_attempt_reruns_a_complete_config_into_a_new_directory(compose):
    from medsweep.record import run_id

    a = compose(["experiment=smoke"], return_hydra_config=True)
    b = compose(["experiment=smoke", "attempt=1"], return_hydra_config=True)
    assert run_id(a) != run_id(b)


# ---- secrets ----------------------------------------------------------------------------------------

def test_a_secret_on_the_command_line_is_refused_unechoed(tmp_path, monkeypatch, capsys):
    from medsweep import cli, run

    for override, env in (("+data.options.api_key=override-secret-55aa", {}),
                          ("data.instruction=say hf_secret_9d8c7b6a", {"HF_TOKEN": "hf_secret_9d8c7b6a"})):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "argv", ["medsweep", "experiment=smoke", override, f"output_root={tmp_path}"])
        monkeypatch.setattr(run, "hydra_main", lambda: pytest.fail("a secret got past the pre-flight"))
        with pytest.raises(SystemExit) as exited:
            cli.main()
        err = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and len(err.splitlines()) == 1 and "is refused" in err, err
        assert "override-secret-55aa" not in err and "hf_secret_9d8c7b6a" not in err
        assert not any(tmp_path.rglob("*"))


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
