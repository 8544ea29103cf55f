"""medsweep.cli, the console script's pre-flight: a bad override (unknown config name, wrong type, value out of range,
a key nothing reads, an unwritable output_root, a secret on the command line, a model that does not fit the profile,
a bad value anywhere in a sweep) is one line on stderr and exit 2 before Hydra creates any run directory;
HYDRA_FULL_ERROR=1 shows the traceback; a sweep may supply a key the fixed overrides require. In-process through
cli.main, and through the console script in a subprocess."""

import sys

import pytest

from tests.conftest import run_medsweep


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
    from medsweep import cli

    monkeypatch.setattr(sys, "argv", ["medsweep", override, f"output_root={tmp_path}"])
    monkeypatch.setattr(cli, "hydra_main", lambda: pytest.fail("the pre-flight let the value through"))
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
    from medsweep import cli

    monkeypatch.setattr(sys, "argv", ["medsweep", f"output_root={root}"])
    monkeypatch.setattr(cli, "hydra_main", lambda: pytest.fail("the pre-flight let the value through"))
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and err == f"medsweep: error: output_root='{root}' is invalid: " + \
        err.split("is invalid: ", 1)[1] and reason in err and "\n" not in err


def test_a_secret_on_the_command_line_is_refused_unechoed(tmp_path, monkeypatch, capsys):
    from medsweep import cli

    for override, env in (("+data.options.api_key=override-secret-55aa", {}),
                          ("data.instruction=say hf_secret_9d8c7b6a", {"HF_TOKEN": "hf_secret_9d8c7b6a"})):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "argv", ["medsweep", "experiment=smoke", override, f"output_root={tmp_path}"])
        monkeypatch.setattr(cli, "hydra_main", lambda: pytest.fail("a secret got past the pre-flight"))
        with pytest.raises(SystemExit) as exited:
            cli.main()
        err = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and len(err.splitlines()) == 1 and "is refused" in err, err
        assert "override-secret-55aa" not in err and "hf_secret_9d8c7b6a" not in err
        assert not any(tmp_path.rglob("*"))


# ---- through the console script (a subprocess) -----------------------------------------------------------------------

def _fails_cleanly(tmp_path, *overrides, key: str, multirun: bool = False):
    proc = run_medsweep(*overrides, f"output_root={tmp_path}", multirun=multirun, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("medsweep: error: "), proc.stderr
    assert key in lines[0] and "Traceback" not in proc.stderr
    assert not any(tmp_path.rglob("*")), "a run directory was left behind"
    return lines[0]


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


def test_a_sweep_may_supply_a_key_the_fixed_overrides_require(tmp_path):
    """data=local needs data.path; here the sweep over data.path supplies it, and each value is checked."""
    good = tmp_path / "a.jsonl"
    good.write_text('{"question": "q?", "answer": "a."}\n')
    proc = run_medsweep("experiment=smoke", "data=local", f"data.path={good},{tmp_path / 'b.jsonl'}",
                        f"output_root={tmp_path / 'out'}", "--plan", multirun=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 jobs: 2 to run" in proc.stdout and "b.jsonl" in proc.stdout
    assert not (tmp_path / "out" / "sweeps" / "sweep" / "sweep_jobs.json").exists()  # --plan: nothing launched
    bad = run_medsweep("experiment=smoke", "data=local", "data.path=a.jsonl,b.jsonl", "lora.r=4,0",
                       f"output_root={tmp_path / 'out'}", "--plan", multirun=True, timeout=300)
    assert bad.returncode == 2 and "lora.r=0" in bad.stderr


def test_the_preflight_knows_the_users_own_configs_on_hydras_search_path(tmp_path):
    from medsweep import cli
    from medsweep.errors import ConfigError

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrain:\n  max_steps: 3\n")
    search = f"hydra.searchpath=[file://{tmp_path}]"
    cli.preflight([search, "experiment=mine", "model=tiny_random", f"output_root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^experiment=mine is invalid: unknown experiment; allowed: .*, smoke$"):
        cli.preflight(["experiment=mine", f"output_root={tmp_path}"])  # without the search path: unknown
    with pytest.raises(ConfigError, match=r"^experiment=theirs is invalid: .*, example_sweep, mine, paper_grid, "):
        cli.preflight([search, "experiment=theirs", f"output_root={tmp_path}"])


def test_a_sweeps_values_are_checked_with_one_hydra_composition_per_structure(tmp_path, monkeypatch):
    """The pre-flight's variants go through the plan's typed path: Hydra composes the structure and checks the first
    variant; the other values are typed in, and a bad one among them is still named."""
    import hydra

    from medsweep import cli
    from medsweep.errors import ConfigError

    calls: list = []
    real = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda *a, **k: calls.append(k["overrides"]) or real(*a, **k))
    sweep = ["lora.r=4,8,16", "lora.alpha=8,16", "lora.dropout=0.1,0.7", f"output_root={tmp_path}"]
    cli.preflight(["-m", *sweep])
    assert calls == [[], [f"output_root={tmp_path}", "lora.r=4", "lora.alpha=8", "lora.dropout=0.1"]]
    with pytest.raises(ConfigError, match=r"lora.dropout=1.0 is invalid: must be in \[0, 1\)"):
        cli.preflight(["-m", *sweep[:2], "lora.dropout=0.1,0.7,1", f"output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="lora.r='eight' is invalid"):  # a value Hydra refuses: its own line
        cli.preflight(["-m", "lora.r=4,eight", f"output_root={tmp_path}"])
    assert not any(tmp_path.rglob("*"))
    mine = tmp_path / "conf" / "experiment"  # the user's own experiment on Hydra's search path, in a sweep
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ntrain:\n  max_steps: 3\n")
    calls.clear()
    with pytest.raises(ConfigError, match="lora.r=0 is invalid"):
        cli.preflight(["-m", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=mine", "lora.r=4,8,0",
                       f"output_root={tmp_path / 'out'}"])
    assert len(calls) == 2 and all("experiment=mine" in c for c in calls)
