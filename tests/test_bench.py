"""scripts/bench.py runs end to end on the tiny model (figures are printed, not asserted: only that both
recipes ran, the table is complete and medsweep's kernels leave the loss curve where the library's is)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import MEDQUAD_JSONL, ROOT, need_shared_data


@pytest.mark.slow
def test_bench_quick_run(tmp_path):
    need_shared_data()
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--model", "tiny_random", "--data", str(MEDQUAD_JSONL),
                           "--steps", "3", "--eval-questions", "2", "--max-new-tokens", "8", "--seq", "256",
                           "--startup-runs", "0", "--no-cold-load",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    naive, fast, ref = res["naive"]["train"], res["medsweep"]["train"], res["medsweep_reference"]["train"]
    assert len(naive["loss"]) == len(fast["loss"]) == len(ref["loss"]) == 3
    assert fast["real_fraction"] > naive["real_fraction"]  # the same pairs: padding to 256 vs length-grouped
    assert sum(fast["real_tokens"]) == pytest.approx(sum(naive["real_tokens"]), rel=0.01)  # the same examples
    assert res["loss_curve_max_abs_diff"] < 0.05  # same batches and seed; only the dropout draws differ
    assert res["medsweep"]["eval"]["answers_per_s"] > 0 and res["naive"]["eval"]["answers_per_s"] > 0
    assert "train: real tokens/s" in proc.stdout and "eval: answers/s" in proc.stdout
