"""Hostile input, generated (hypothesis): override values of every kind and small data files, good and bad. Each
ends in a start or exit 2 with one line, never a traceback; the pre-flight writes nothing, and an accepted run's
directory is one plain name inside output_root/runs."""

import json
import re
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsweep import cli, data
from medsweep.errors import DataError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# what a user might type as a value: numbers of every size and sign, special floats, booleans, paths, Hydra and
# OmegaConf syntax, quotes, unicode
_text = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=40)
value = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "auto", "", "../..", "/etc", "a/b", "${nope}", "${oc.env:NOPE}",
                     "'quoted'", "[1,2]", "{a: 1}", "~", "x" * 300, "cosine", "linear", "0", "1e-4", "0.5"]),
    _text,
)
key = st.sampled_from(["lora.r", "lora.alpha", "lora.dropout", "lora.bias", "train.lr", "train.seed",
                       "train.max_seq_length", "train.lr_scheduler", "train.batch_size", "train.max_steps",
                       "data.name", "model.name", "sweep_name", "eval.num_examples", "eval.top_p",
                       "eval.decoding", "profile.precision", "attempt", "+lora.extra", "+data.options.split",
                       "+unknown.key", "data.split_seed", "eval.temperature"])


def _main(argv: list[str], monkeypatch, capsys) -> tuple[int, str, list]:
    """The console script's main() in-process up to Hydra: the pre-flight decides exit 2 or a start. (Hydra's own
    run is not started in this process: it would configure logging onto pytest's captured streams.)"""
    started: list = []
    monkeypatch.setattr(sys, "argv", ["medsweep", *argv])
    monkeypatch.setattr(cli, "hydra_main", lambda: started.append(True))
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err, started


@SETTINGS
@given(overrides=st.lists(st.tuples(key, value), min_size=1, max_size=3))
def test_any_override_values_exit_0_or_2_with_one_line(overrides, tmp_path_factory, monkeypatch, capsys, compose):
    base = tmp_path_factory.mktemp("hostile")
    cwd, out = base / "cwd", base / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    typed = [f"{k}={v}" for k, v in overrides]
    argv = ["experiment=smoke", *typed, f"output_root={out}"]
    code, stderr, started = _main(argv, monkeypatch, capsys)
    assert code in (0, 2), (argv, code, stderr[-2000:])
    assert "Traceback" not in stderr, (argv, stderr[-2000:])
    assert not any(cwd.iterdir()) and not out.exists(), f"{argv}: the pre-flight wrote something"
    assert {p.name for p in base.iterdir()} == {"cwd"}
    if code == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("medsweep: error: ") and not started, (argv, stderr)
        return
    assert started == [True], argv
    # accepted: the run directory Hydra would create is one plain name inside output_root/runs
    cfg = compose(["experiment=smoke", *typed, f"output_root={out}"], return_hydra_config=True)
    run_dir = Path(str(cfg.hydra.run.dir))
    assert run_dir.parent == out / "runs" and not run_dir.name.startswith(".") and "/" not in run_dir.name, argv


row = st.fixed_dictionaries({}, optional={"question": st.one_of(_text, st.integers(), st.none()),
                                          "answer": st.one_of(_text, st.integers(), st.none(), st.lists(_text)),
                                          "id": st.one_of(_text, st.integers())})
line = st.one_of(row.map(json.dumps), _text, st.just("{oops"), st.just(""))


@SETTINGS
@given(lines=st.lists(line, max_size=12), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt"]))
def test_any_data_file_loads_or_is_one_line_data_error(lines, suffix, tmp_path_factory):
    from omegaconf import OmegaConf

    path = tmp_path_factory.mktemp("data") / f"d{suffix}"
    path.write_text("\n".join(lines), encoding="utf-8")
    cfg = OmegaConf.create({"name": "local", "loader": "local", "path": str(path), "hub": None, "hub_config": None,
                            "hub_split": "train", "question_col": "question", "answer_col": "answer",
                            "id_col": None, "context_col": None, "label_col": None, "options": {}, "limit": None,
                            "split_seed": 0, "max_question_words": 512, "max_answer_words": 2048,
                            "instruction": "x"})
    try:
        splits = data.build(cfg, eval_size=1)
    except DataError as exc:
        message = str(exc)  # one line naming the file, or the setting that cannot be met
        assert "\n" not in message and (path.name in message or re.search(r"\b(train|data)\.\w+=", message)), message
        return
    assert splits.eval and all(r["question"].strip() and r["answer"].strip() for r in splits.train + splits.eval)
