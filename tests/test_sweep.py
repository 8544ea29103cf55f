"""medsweep/sweep.py, the end of a sweep: each job's status read from its run's record, the list printed, the report,
the failure message, and the end-of-multirun hook. (Planning a sweep is in test_launcher.py, the fit arithmetic in
test_fit.py.)"""

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from medsweep import sweep
from medsweep.errors import MedsweepError


def _sweep(tmp_path, records: dict) -> Path:
    """A sweep directory: sweep_jobs.json with one job per entry, and each run's metrics.json (text, or absent)."""
    jobs = []
    for idx, (name, (outcome, error, text)) in enumerate(records.items()):
        run_dir = tmp_path / name
        run_dir.mkdir()
        if text is not None:
            (run_dir / "metrics.json").write_text(text)
        jobs.append({"idx": idx, "overrides": [f"lora.r={idx + 4}", "train.seed=0"], "run_dir": str(run_dir),
                     "status": "submit", "outcome": outcome, "error": error})
    (tmp_path / sweep.JOBS_FILE).write_text(json.dumps(jobs))
    return tmp_path


RECORDS = {
    "done": ("completed", "", json.dumps({"status": "complete"})),
    "crashed": ("failed", "RuntimeError: job 12 failed", json.dumps({"status": "failed", "error": "OSError: x"})),
    "lost": ("completed", "", None),
    "torn": ("completed", "", '{"status": "comp'),
    "nostatus": ("completed", "", json.dumps({"metrics": {}})),
    "bad": ("", "", json.dumps({"status": "failed", "error": "DataError: missing.jsonl not found"})),
}


def test_job_statuses_read_each_runs_record(tmp_path):
    jobs = sweep.job_statuses(_sweep(tmp_path, RECORDS))
    assert [(j["idx"], j["record"], j["error"]) for j in jobs] == [
        (0, "complete", ""),
        (1, "failed", "RuntimeError: job 12 failed"),  # the launcher's error first
        (2, "missing", ""),
        (3, "corrupt", ""),
        (4, "corrupt", ""),  # a record without a status
        (5, "failed", "DataError: missing.jsonl not found"),  # else the record's
    ]
    assert sweep.job_statuses(tmp_path / "elsewhere") == []


def test_finish_prints_every_job_and_returns_the_failed(tmp_path, monkeypatch, capsys):
    import medsweep.report

    reported = []
    monkeypatch.setattr(medsweep.report, "report_sweep", lambda d: reported.append(d) or Path(d) / "report.md")
    failed = sweep.finish(_sweep(tmp_path, RECORDS))
    assert [j["idx"] for j in failed] == [1, 3, 4, 5]  # failed outcome, corrupt records, a failed record
    assert reported == [tmp_path]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "  #0   completed  record=complete  lora.r=4 train.seed=0  ",
        "  #1   failed     record=failed    lora.r=5 train.seed=0  RuntimeError: job 12 failed",
        "  #2   completed  record=missing   lora.r=6 train.seed=0  ",
        "  #3   completed  record=corrupt   lora.r=7 train.seed=0  ",
        "  #4   completed  record=corrupt   lora.r=8 train.seed=0  ",
        "  #5   submit     record=failed    lora.r=9 train.seed=0  DataError: missing.jsonl not found",
        f"report: {tmp_path / 'report.md'}",
    ]


def test_finish_without_a_report_still_names_the_failures(tmp_path, monkeypatch, capsys, caplog):
    import medsweep.report

    def no_report(sweep_dir):
        raise MedsweepError("no run records under the sweep")

    monkeypatch.setattr(medsweep.report, "report_sweep", no_report)
    long = "E" * 300
    with caplog.at_level(logging.WARNING, logger="medsweep.sweep"):
        failed = sweep.finish(_sweep(tmp_path, {"a": ("failed", long, None)}))
    assert [j["idx"] for j in failed] == [0]
    assert capsys.readouterr().out == f"  #0   failed     record=missing   lora.r=4 train.seed=0  {'E' * 200}\n"
    assert [r.getMessage() for r in caplog.records] == ["no report: no run records under the sweep"]


def test_failure_message_names_each_failed_job():
    failed = [{"idx": 1, "overrides": ["lora.r=8", "data.path=b.jsonl"], "error": "DataError: b.jsonl not found"},
              {"idx": 3, "overrides": ["lora.r=16"], "error": "x" * 250},
              {"idx": 4, "overrides": []}]
    assert sweep.failure_message(failed, 5) == (
        "3 of 5 job(s) failed: #1 (lora.r=8 data.path=b.jsonl): DataError: b.jsonl not found; "
        f"#3 (lora.r=16): {'x' * 200}; #4 (): ")


def test_the_end_of_multirun_hook(tmp_path, monkeypatch, caplog, capsys):
    import medsweep.report

    monkeypatch.setattr(medsweep.report, "report_sweep", lambda d: Path(d) / "report.md")
    _sweep(tmp_path, {"ok": ("completed", "", json.dumps({"status": "complete"})),
                      "bad": ("failed", "ValueError: boom", None)})
    config = OmegaConf.create({"plan": False, "hydra": {"sweep": {"dir": str(tmp_path)}}})
    with caplog.at_level(logging.ERROR, logger="medsweep.sweep"):
        sweep.SweepReport().on_multirun_end(config)
    assert [r.getMessage() for r in caplog.records] == ["1 of 2 job(s) failed: #1 (lora.r=5 train.seed=0): "
                                                        "ValueError: boom"]
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="medsweep.sweep"):
        sweep.SweepReport().on_multirun_end(OmegaConf.create({"plan": True, "hydra": {"sweep": {"dir": "/nowhere"}}}))
    assert caplog.records == [] and capsys.readouterr().out == ""  # a plan ran nothing: nothing to report
    good = tmp_path / "good"
    good.mkdir()
    _sweep(good, {"ok": ("completed", "", json.dumps({"status": "complete"}))})
    with caplog.at_level(logging.ERROR, logger="medsweep.sweep"):
        sweep.SweepReport().on_multirun_end(OmegaConf.create({"plan": False, "hydra": {"sweep": {"dir": str(good)}}}))
    assert caplog.records == [] and f"report: {good / 'report.md'}" in capsys.readouterr().out
