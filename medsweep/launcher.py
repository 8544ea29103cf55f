"""Sweep dispatch through hydra-submitit-launcher: per-job resources from each job's profile, fit check
and skip-if-complete before anything is submitted, `--plan`, detached SLURM sweeps, and honest failures.

`SweepLauncherMixin` sits in front of hydra-submitit-launcher's SlurmLauncher / LocalLauncher (the plugin
classes in hydra_plugins/medsweep_launcher). For every job of the sweep it composes the job's config,
validates it, computes its run directory (config hash) and its fit; then
- `plan=true` (`--plan`): prints the table and submits nothing;
- any refused or invalid job, or more jobs than the cluster lets one queue: prints why and submits nothing (exit 2);
- otherwise submits the jobs that are not complete (nor, on SLURM, still queued from an earlier submission of the
  same sweep), grouped by resources (one submitit array per group, split at the cluster's MaxArraySize;
  medsweep/submit.py), and writes `sweep_jobs.json` (medsweep/sweep.py). Then
  - detached (`detach`, the default on SLURM): submits the report job that SLURM starts after them, prints how to
    follow the sweep, and returns;
  - otherwise waits for every job with a live line of counts. A failed job does not stop the others; once they are
    done the sweep ends at once through `sweep.end` (status list, report, the failures named on stderr, exit 1).
    A sweep without a failed job ends in Hydra's end-of-multirun callback, through the same `end`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig

from medsweep import config as config_schema
from medsweep import fit, packplan, record, submit
from medsweep.compose import ComposeCache
from medsweep.errors import MedsweepError
from medsweep.packjob import PackJob
from medsweep.runrecord import RunRecord
from medsweep.submit import chunks, cluster_limits
from medsweep.sweep import PlannedJob, detached, end, read_jobs, write_jobs
from medsweep.typedjobs import TypedJobs

if TYPE_CHECKING:
    from medsweep.config import RunConfig

log = logging.getLogger("medsweep.launcher")


def resources(cfg: RunConfig, executor: str, processes: int = 1) -> dict[str, Any]:
    """submitit parameters of one job, from its profile and the site settings; `processes` (the fit estimate's
    world size): data parallel runs one task per GPU (or per CPU process), on one node."""
    p, site = cfg.profile, cfg.site
    res: dict[str, Any] = {"timeout_min": p.time_limit_min, "cpus_per_task": max(1, p.cpus // processes),
                           "mem_gb": p.memory_gb, "nodes": 1, "tasks_per_node": processes}
    if executor == "local":
        res["gpus_per_node"] = p.gpus
        return res
    res["slurm_partition"] = site.partition or p.partition
    res["slurm_account"] = site.account
    res["slurm_qos"] = site.qos
    res["slurm_constraint"] = p.constraint
    if p.gpus:
        if site.gpu_request == "gres" and p.gpu_type:
            res["slurm_gres"] = f"gpu:{p.gpu_type}:{p.gpus}"
        else:
            res["gpus_per_node"] = p.gpus
            res["slurm_constraint"] = "&".join(c for c in (p.gpu_type, p.constraint) if c) or None  # no empty flag
    res["slurm_setup"] = list(site.setup) or None
    res["slurm_additional_parameters"] = dict(site.additional_parameters) or None
    res["slurm_array_parallelism"] = site.max_parallel
    if processes > 1:  # one task dying (a failed rendezvous, OOM) ends its job instead of leaving the others waiting
        res["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    return {k: v for k, v in res.items() if v is not None}


def plan_jobs(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, executor: str,
              pack_keys: dict[int, tuple[str, int]] | None = None) -> list[PlannedJob]:
    """Every job of the sweep, checked, with its run directory and resources; `pack_keys` (pack > 1) gets each
    job to run's pack key and pack size (packplan.units)."""
    jobs = []
    typed = TypedJobs(ComposeCache(launcher.hydra_context.config_loader, launcher.config))
    texts = {o for overrides in job_overrides for o in overrides}
    for text in texts:  # every secret given for a secret-looking key first, so each is masked in every job's row
        record.redact_override(text)
    shown = {text: record.redact_override(text) for text in texts}
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        job_cfg = typed.job(list(overrides))
        job = PlannedJob(idx=idx, run_dir=job_cfg.run_dir, status="submit",
                         overrides=[shown[o] for o in filter_overrides(overrides)
                                    if not o.startswith(("plan=", "detach=", "pack="))])
        try:
            run, estimate = job_cfg.check()
        except MedsweepError as exc:
            job.status, job.reason, job.axes = "invalid", str(exc), job_cfg.axes()
            jobs.append(job)
            continue
        job.axes = record.axes(run)
        job.need_gib, job.have_gib, job.gpu_hours = estimate.need_gib, estimate.have_gib, estimate.gpu_hours
        job.mode, job.processes = estimate.mode, estimate.world_size
        job.resources = resources(run, executor, estimate.world_size)
        done = RunRecord.load(job.run_dir)
        if done and done.is_complete:
            job.status, job.reason = "complete", "record complete: skipped"
        elif not estimate.fits:
            job.status, job.reason = "refused", f"does not fit: {estimate.detail}"
        elif pack_keys is not None and run.pack != 1:
            size = fit.pack_size(run) if run.pack == "auto" else int(run.pack)
            pack_keys[idx] = (packplan.pack_key(job_cfg.run_config()) + json.dumps(job.resources, sort_keys=True),
                              size)
        jobs.append(job)
    log.debug("plan: %d job configs, %d composed by Hydra, %d typed from their structure's", len(jobs),
              typed.configs.full, typed.fast)
    return jobs


PLAN_ROWS = 1000  # a longer plan lists its refused and invalid jobs and counts the others by group


def plan_table(jobs: list[PlannedJob]) -> str:
    import pandas as pd

    def need(j: PlannedJob) -> str:
        return f"{j.need_gib:.1f}/{j.have_gib:.1f}" if j.have_gib not in (0.0, float("inf")) else "cpu"

    def gpus(j: PlannedJob) -> Any:
        return j.resources.get("slurm_gres") or j.resources.get("gpus_per_node") or 0

    def mode(j: PlannedJob) -> str:
        return f"{j.mode} x{j.processes}" if j.processes > 1 else j.mode

    listed = jobs if len(jobs) <= PLAN_ROWS else [j for j in jobs if j.status in ("refused", "invalid")]
    packed = any(j.pack for j in jobs)  # the column only where pack=K made packs
    rows = [{"#": j.idx, "overrides": " ".join(j.overrides), "status": j.status,
             **({"pack": "+".join(f"#{i}" for i in j.pack)} if packed else {}),
             "cpus": j.resources.get("cpus_per_task"), "gpus": gpus(j), "time_min": j.resources.get("timeout_min"),
             "mode": mode(j), "need/have GiB": need(j), "est_gpu_h": round(j.gpu_hours, 2),
             "run_dir": Path(j.run_dir).name, "reason": j.reason}
            for j in listed]
    total = sum(j.gpu_hours for j in jobs if j.status == "submit")
    counts = {s: sum(j.status == s for j in jobs) for s in ("submit", "complete", "queued", "refused", "invalid")}
    queued = f"{counts['queued']} still queued in SLURM (not submitted again), " if counts["queued"] else ""
    summary = (f"{len(jobs)} jobs: {counts['submit']} to run, {counts['complete']} complete (skipped), {queued}"
               f"{counts['refused']} refused (do not fit), {counts['invalid']} invalid; "
               f"estimated {total:.2f} GPU-hours to run")
    if len(jobs) <= PLAN_ROWS:
        return pd.DataFrame(rows).to_markdown(index=False) + "\n" + summary
    groups: dict[tuple, list[PlannedJob]] = {}
    for j in jobs:
        key = (j.status, j.axes.get("model", ""), j.axes.get("profile", ""), mode(j),
               j.resources.get("cpus_per_task"), gpus(j), j.resources.get("timeout_min"))
        groups.setdefault(key, []).append(j)
    grouped = [{"status": k[0], "model": k[1], "profile": k[2], "mode": k[3], "cpus": k[4], "gpus": k[5],
                "time_min": k[6], "jobs": len(g), "need/have GiB": need(max(g, key=lambda j: j.need_gib)),
                "est_gpu_h": round(sum(j.gpu_hours for j in g), 2)} for k, g in groups.items()]
    out = [f"{len(jobs)} jobs in {len(grouped)} groups (status, model, profile, resources; need/have: the largest "
           f"need of the group); more than {PLAN_ROWS} jobs: only the refused and invalid ones are listed",
           pd.DataFrame(grouped).to_markdown(index=False)]
    if rows:
        out.append(pd.DataFrame(rows).to_markdown(index=False))
    return "\n".join(out) + "\n" + summary


class SweepLauncherMixin:
    """Put in front of hydra-submitit-launcher's SlurmLauncher / LocalLauncher (see the plugin module)."""

    _EXECUTOR: str
    # set by hydra-submitit-launcher's BaseSubmititLauncher (__init__: params, setup(): config)
    params: dict[str, Any]
    config: DictConfig

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Runs on the compute node. A failed task raises, so submitit and SLURM mark the job FAILED."""
        import submitit

        config_schema.register_configs()
        record.register_resolvers()
        if submitit.JobEnvironment().global_rank > 0 and args:  # data parallel: Hydra's files come from rank 0 only
            args = (list(args[0]) + ["hydra.output_subdir=null"], *args[1:])
        ret = super().__call__(*args, **kwargs)  # type: ignore[misc]
        if ret.status == JobStatus.FAILED:
            ret.return_value  # re-raises the task's exception  # noqa: B018
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        kind = self._EXECUTOR
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()  # the report job may start elsewhere
        detach = detached(self.config) and not self.config.plan
        if detach and kind != "slurm":
            _refuse("detach=true needs hydra/launcher=slurm: a local sweep's jobs end with this command")
        record.scrub_yaml_files([sweep_dir / "multirun.yaml"])
        pack_keys: dict[int, tuple[str, int]] = {}
        jobs = plan_jobs(self, job_overrides, initial_job_idx, kind, pack_keys)
        units = packplan.units([j for j in jobs if j.status == "submit"], pack_keys)
        visible = _visible_gpus() if kind == "local" and not self.config.plan \
            and any(j.resources.get("gpus_per_node") for j in jobs) else []  # a plan asks no GPU (nor torch)
        if kind == "local" and not self.config.plan:  # a plan may be for the cluster: only a launch checks
            for j in jobs:
                wanted = j.resources.get("gpus_per_node", 0)
                if j.status == "submit" and wanted > len(visible):
                    j.status, j.reason = "refused", f"needs {wanted} GPU(s), {len(visible)} visible on this machine"
        if kind == "slurm" and not self.config.plan:
            _keep_queued(sweep_dir, jobs)
        print(plan_table(jobs), flush=True)
        bad = [j for j in jobs if j.status in ("refused", "invalid")]
        if self.config.plan:
            return []
        if bad:  # refuse the whole sweep before anything is submitted: one line, exit 2
            _refuse(f"{len(bad)} job(s) refused before submission, nothing submitted: "
                    + "; ".join(f"#{j.idx} {j.reason}" for j in bad))
        todo = [j for j in jobs if j.status == "submit"]
        array_size, submit_limit = cluster_limits(self.config.site) if kind == "slurm" and todo else (None, None)
        if submit_limit is not None and len(todo) + detach > submit_limit:
            _refuse(f"{len(todo)} job(s){' and the report job' if detach else ''} to submit, but at most "
                    f"{submit_limit} may be queued (MaxSubmitJobs; site.max_submit_jobs): nothing submitted; "
                    "submit the grid in parts (each part skips what is complete or queued)")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        for j in jobs:
            if j.status == "complete":
                j.outcome = "skipped"
        groups: dict[str, list[list[PlannedJob]]] = {}
        for unit in units:  # a pack (pack=K) is one submitit job
            if unit[0].status == "submit":
                groups.setdefault(json.dumps(unit[0].resources, sort_keys=True), []).append(unit)
        returns, pending = [], []
        for key, group in groups.items():
            executor = self._executor(json.loads(key))
            if kind == "local":  # each job its own GPUs, at most visible // gpus at once
                gpus = group[0][0].resources.get("gpus_per_node", 0)
                size = min(self.config.site.max_parallel, len(visible) // gpus if gpus else len(group))
                for wave in chunks(group, size):
                    returns += submit.wait(self._submit_local(executor, wave, job_overrides, initial_job_idx,
                                                              visible, gpus))
            else:  # one array per resource group, split where the cluster caps an array's size
                for array in chunks(group, array_size):
                    solo = [u[0] for u in array if len(u) == 1]
                    if solo:
                        handles = executor.map_array(self, *zip(*self._args(solo, job_overrides, initial_job_idx),
                                                                strict=True))
                        pending += _submitted(solo, handles)
                    packs = [u for u in array if len(u) > 1]
                    if packs:
                        handles = executor.map_array(PackJob(self), [self._args(u, job_overrides, initial_job_idx)
                                                                     for u in packs])
                        pending += _submitted_packs(packs, handles)
        write_jobs(sweep_dir, jobs)
        if detach:
            self._detach(sweep_dir, jobs, pending)
            return returns
        returns += submit.wait(pending, ask_slurm=kind == "slurm")
        _diverged_members(jobs)
        write_jobs(sweep_dir, jobs)
        if any(j.outcome == "failed" for j in jobs):  # the sweep ends here, through its one end (sweep.py)
            sys.exit(end(sweep_dir, launched=len(jobs)))
        return returns

    def _executor(self, resources: dict[str, Any]) -> Any:
        import submitit

        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         **self._init_params())
        executor.update_parameters(**resources, name=str(self.config.hydra.job.name), **self._extra_params())
        return executor

    def _args(self, jobs: list[PlannedJob], job_overrides: Sequence[Sequence[str]], initial_job_idx: int
              ) -> list[tuple[Any, ...]]:
        """Hydra's job arguments of each job (its overrides, the sweep dir key, its index, its name, Hydra's state)."""
        return [(list(job_overrides[j.idx - initial_job_idx]), "hydra.sweep.dir", j.idx, f"job_id_for_{j.idx}",
                 Singleton.get_state()) for j in jobs]

    def _submit_local(self, executor: Any, wave: list[list[PlannedJob]], job_overrides: Sequence[Sequence[str]],
                      initial_job_idx: int, visible: list[int], gpus: int) -> list[tuple[PlannedJob, Any]]:
        """One local process per unit of the wave: a job alone, or a pack (PackJob)."""
        solo = [u[0] for u in wave if len(u) == 1]
        if not gpus and len(solo) == len(wave):
            return _submitted(solo, executor.map_array(self, *zip(*self._args(solo, job_overrides, initial_job_idx),
                                                                  strict=True)))
        pairs = []
        for k, unit in enumerate(wave):
            args = self._args(unit, job_overrides, initial_job_idx)
            if gpus:
                ids = ",".join(str(i) for i in visible[k * gpus:(k + 1) * gpus])
                # AutoExecutor passes no visible_gpus to the local executor; its setup lines run in the job's shell
                # after submitit set CUDA_VISIBLE_DEVICES, so this export wins
                executor.update_parameters(local_setup=[f"export CUDA_VISIBLE_DEVICES={ids}"])
            if len(unit) == 1:
                pairs += _submitted(unit, [executor.submit(self, *args[0])])
            else:
                pairs += _submitted_packs([unit], [executor.submit(PackJob(self), args)])
        return pairs

    def _detach(self, sweep_dir: Path, jobs: list[PlannedJob], pending: list[tuple[PlannedJob, Any]]) -> None:
        """Submit the report job after the sweep's jobs (new and still queued ones), say how to follow, return."""
        waits_for = [j.job_id for j in jobs if j.outcome == "submitted"]
        if not waits_for:  # nothing runs: the report of what is complete, now
            end(sweep_dir)
            return
        if not pending:  # the report job of their submission waits for them already
            print(f"medsweep: nothing submitted: {len(waits_for)} job(s) still queued from an earlier submission, "
                  f"whose report job writes the report when they end\n  follow:  medsweep-status {sweep_dir} --watch",
                  flush=True)
            return
        import submitit

        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"])
        executor.update_parameters(**submit.report_parameters(jobs, waits_for, str(self.config.hydra.job.name)))
        report = executor.submit(submit.report_job, str(sweep_dir))
        queued = len(waits_for) - len(pending)
        arrays = submit.master_ids([j.job_id for j, _ in pending])
        print(f"medsweep: submitted {len(pending)} job(s) as SLURM job(s) {', '.join(arrays)}"
              + (f" ({queued} already queued)" if queued else "")
              + f"; report job {report.job_id} starts when they have ended\n"
              f"  follow:  medsweep-status {sweep_dir} --watch\n"
              f"  report:  {sweep_dir / 'report' / 'report.md'}", flush=True)

    def _init_params(self) -> dict[str, Any]:
        if "max_num_timeout" in self.params:
            return {f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]}
        return {}

    def _extra_params(self) -> dict[str, Any]:
        """Launcher-level settings that are not per-profile (signal delay, stderr handling)."""
        extra = {}
        if self._EXECUTOR == "slurm" and "signal_delay_s" in self.params:
            extra["slurm_signal_delay_s"] = self.params["signal_delay_s"]
        return extra


def _visible_gpus() -> list[int]:
    """The GPU ids this machine lets the sweep use (CUDA_VISIBLE_DEVICES when set, else every GPU torch sees),
    handed out to local jobs as disjoint slices."""
    import os

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [x.strip() for x in listed.split(",") if x.strip()]
        if all(x.isdigit() for x in ids):
            return [int(x) for x in ids]
    import torch

    return list(range(torch.cuda.device_count()))


def _submitted(jobs: list[PlannedJob], handles: Sequence[Any]) -> list[tuple[PlannedJob, Any]]:
    pairs = list(zip(jobs, handles, strict=True))
    for j, handle in pairs:
        j.job_id, j.outcome = str(handle.job_id), "submitted"
        log.info("#%d submitted as %s: %s", j.idx, handle.job_id, " ".join(j.overrides))
    return pairs


def _submitted_packs(packs: list[list[PlannedJob]], handles: Sequence[Any]) -> list[tuple[PlannedJob, Any]]:
    """Each member of a pack waits on its pack's submitit job."""
    return [pair for unit, handle in zip(packs, handles, strict=True)
            for pair in _submitted(unit, [handle] * len(unit))]


def _diverged_members(jobs: list[PlannedJob]) -> None:
    """A pack's job ends well when one of its runs diverged (it fails alone): that run's record says so."""
    for j in jobs:
        if j.pack and j.outcome == "completed":
            rec = RunRecord.load(j.run_dir)
            if rec is not None and rec.status == "failed":
                j.outcome, j.error = "failed", rec.error or "failed"
                log.error("#%d failed (pack job %s): %s", j.idx, j.job_id, j.error)


def _keep_queued(sweep_dir: Path, jobs: list[PlannedJob]) -> None:
    """A job whose earlier submission is still pending or running in SLURM is not submitted again: re-running the
    command of a sweep submits only what failed or never ran (a complete record is skipped in the plan). A skipped
    job keeps the id of the SLURM job that completed it, for the status command and the report job."""
    previous = {p["run_dir"]: p for p in read_jobs(sweep_dir) if p.get("job_id")}
    for j in jobs:
        if j.status == "complete" and j.run_dir in previous:
            j.job_id = str(previous[j.run_dir]["job_id"])
    earlier = {d: p for d, p in previous.items() if p.get("outcome") == "submitted"}
    mine = {j.run_dir: earlier[j.run_dir] for j in jobs if j.status == "submit" and j.run_dir in earlier}
    if not mine:
        return
    from medsweep import slurm

    try:
        states = slurm.job_states([p["job_id"] for p in mine.values()])
    except MedsweepError as exc:  # a second copy of a running job fails on its run lock rather than racing it
        log.warning("cannot ask SLURM about the earlier submission (%s): every unfinished job is submitted", exc)
        return
    for j in jobs:
        known = mine.get(j.run_dir)
        state = states.get(known["job_id"]) if known else None
        if known and state is not None and state.state in slurm.ACTIVE:
            j.status, j.job_id, j.outcome = "queued", known["job_id"], "submitted"
            j.reason = f"already in SLURM as job {j.job_id} ({state.state})"


def _refuse(message: str) -> None:
    """One line on stderr and exit 2: the whole sweep is refused before anything is submitted."""
    print(f"medsweep: error: {message}", file=sys.stderr)
    sys.exit(2)
