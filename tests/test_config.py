"""Every config in conf/ composes against the schemas and validates; range checks name key and value."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medsweep.checks import validate
from medsweep.errors import ConfigError
from tests.conftest import CONF_DIR, MEDQUAD_JSONL

GROUPS = ["model", "lora", "data", "train", "eval", "profile", "logger", "judge", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _required_extras(group: str, option: str, tmp_path) -> list[str]:
    """Overrides some options need to validate: a path for the generic local loader, the stage-1 run
    directory that curation stage 2 continues from."""
    if group == "data" and option == "local":
        return [f"data.path={MEDQUAD_JSONL}"]
    if group == "experiment" and option == "curation_stage2":
        return [f"train.init_adapter={tmp_path}"]
    if group == "judge" and option == "openai":
        return ["judge.model=gpt-4o-mini"]
    return []


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_composes_and_validates(compose, group, option, tmp_path):
    cfg = compose([f"{group}={option}", *_required_extras(group, option, tmp_path)])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    validate(cfg)


def test_every_key_in_conf_is_commented():
    """Each key line of each YAML file carries a comment (its meaning and default), or is inside a commented block."""
    for path in CONF_DIR.rglob("*.yaml"):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#"), f"{path} must open with a comment naming the command that uses it"
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped.startswith("- ") or stripped.endswith(":"):
                continue
            if line.startswith(" ") and ":" in stripped:  # nested values under a commented parent are fine
                continue
            assert "#" in line, f"{path.relative_to(CONF_DIR)}:{i + 1}: key without a comment: {stripped!r}"


def test_default_config(compose):
    cfg = compose()
    assert cfg.model.name == "smollm2_135m" and cfg.data.name == "sample" and cfg.profile.name == "local_cpu"
    assert cfg.logger.name == "none" and cfg.eval.baseline is False


@pytest.mark.parametrize("override, key", [
    ("lora.r=0", "lora.r"),
    ("lora.r=-4", "lora.r"),
    ("lora.alpha=0", "lora.alpha"),
    ("lora.dropout=1.0", "lora.dropout"),
    ("lora.dropout=-0.1", "lora.dropout"),
    ("train.max_seq_length=0", "train.max_seq_length"),
    ("train.max_seq_length=100000", "train.max_seq_length"),
    ("train.lr=0", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("eval.num_examples=500", "eval.num_examples"),
    ("lora.bias=some", "lora.bias"),
    ("eval.decoding=beam", "eval.decoding"),
    ("pack_eval=together", "pack_eval"),
])
def test_validate_names_key_and_value(compose, override, key):
    cfg = compose([override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}=") and "\n" not in message


def test_type_errors_are_caught_at_composition(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["lora.r=eight"])


def test_run_dir_is_config_hash_not_timestamp(compose):
    from medsweep.record import run_id

    a = compose(["lora.r=8"], return_hydra_config=True)
    b = compose(["lora.r=8", "profile.time_limit_min=999"], return_hydra_config=True)  # not identity
    c = compose(["lora.r=16"], return_hydra_config=True)
    assert run_id(a) == run_id(b)
    assert run_id(a) != run_id(c)
    assert run_id(a).startswith("smollm2_135m_sample_r8_a16_d0.05_L512_s0_local_cpu-")
    assert Path(a.hydra.run.dir).name == run_id(a)


def test_scheduler_names_are_the_ones_transformers_accepts():
    """The pre-flight refuses a scheduler name without importing transformers: its pinned list must stay a list of
    names the installed transformers accepts (a name it dropped would pass the pre-flight and fail in the job)."""
    from transformers import SchedulerType

    from medsweep.config import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}
    assert {"linear", "cosine", "constant_with_warmup"} <= set(LR_SCHEDULERS)


def test_a_random_model_needs_a_tokenizer(compose):
    with pytest.raises(ConfigError, match=r"^model.tokenizer=None is invalid: required when model.source=random"):
        validate(compose(["model=tiny_random", "model.tokenizer=null"]))


def test_the_composed_config_is_the_schema_dataclasses_and_each_checks_its_own_ranges(compose):
    """config.typed gives the stages real dataclasses (what their signatures say); each group's check sits on its
    dataclass, so a config built in Python is checked the same way as a composed one."""
    import dataclasses

    from medsweep import config

    run = config.typed(compose(["lora.r=16"]))
    assert isinstance(run, config.RunConfig) and isinstance(run.lora, config.LoraConfig)
    assert run.lora.r == 16 and isinstance(run.model.lora_target_modules, list)
    run.check()
    with pytest.raises(ConfigError, match=r"^lora.dropout=1.0 is invalid"):
        dataclasses.replace(run.lora, dropout=1.0).check(run.model)
    with pytest.raises(ConfigError, match=r"^train.seed=-1 is invalid"):
        validate(dataclasses.replace(run, train=dataclasses.replace(run.train, seed=-1)))
