"""Run ids are stable across schema changes: a key added later is left out of the hash at its default, a key
removed is hashed at the value it always had, so a sweep re-run after an upgrade still finds its complete jobs.
The ids below were computed by the code before profile.parallel / profile.processes / model.kv_width /
model.tie_word_embeddings were added and model.dtype removed."""

import pytest

from medsweep.record import run_id


@pytest.mark.parametrize("overrides, expected", [
    ([], "smollm2_135m_sample_r8_a16_d0.05_L512_s0_local_cpu-e8788746"),
    (["model=llama3_8b", "profile=4cpu_2a100"], "llama3_8b_sample_r8_a16_d0.05_L512_s0_4cpu_2a100-b13cde08"),
    (["experiment=smoke"], "tiny_random_sample_r8_a16_d0.05_L128_s0_local_cpu-477ee657"),
    (["model=gemma_1.1_7b", "lora.r=16", "profile=1cpu_1v100"],
     "gemma_1.1_7b_sample_r16_a16_d0.05_L512_s0_1cpu_1v100-bdfef580"),
])
def test_run_ids_of_earlier_runs_are_kept(compose, overrides, expected):
    assert run_id(compose(overrides)) == expected


def test_a_new_key_away_from_its_default_makes_a_new_run(compose):
    base = run_id(compose(["experiment=smoke"]))
    assert run_id(compose(["experiment=smoke", "profile.processes=2"])) != base
