#!/usr/bin/env bash
# Stop the single-node SLURM test cluster started by scripts/slurm_start.sh.
#
# Usage:
#     scripts/slurm_stop.sh
#     MEDSWEEP_SLURM_DIR=/some/dir scripts/slurm_stop.sh   # non-default state dir
#
# What it does (idempotent; safe to run when nothing is running):
#   1. if slurmctld answers, cancels all jobs of the cluster and waits briefly
#      for them to finish (so no job processes are left behind);
#   2. stops every daemon by the PID recorded in $MEDSWEEP_SLURM_DIR/pids/*.pid
#      (slurmd, slurmctld, slurmdbd, mariadbd, munged): SIGTERM, wait, SIGKILL;
#      a recorded PID is only signalled if that process really is one of the
#      cluster's daemons (checked through its environment), never a reused PID;
#   3. removes the pid files, then kills any leftover process of this cluster
#      (a daemon whose pid file was lost, a stray slurmstepd, a job process),
#      identified by MEDSWEEP_SLURM_DAEMON=<state dir> in its environment
#      (set by slurm_start.sh), by being a slurmstepd holding a file under the
#      state dir open, or by SLURM_CONF=<state dir>/etc/slurm.conf +
#      SLURM_JOB_ID in its environment (job processes).
# State (configs, MariaDB data = accounting history, munge key, logs) is kept,
# so the next slurm_start.sh is fast. `rm -rf` the state dir for a clean slate.
set -euo pipefail

STATE="${MEDSWEEP_SLURM_DIR:-/tmp/medsweep-slurm}"
STATE="${STATE%/}"
PIDS="$STATE/pids"
export SLURM_CONF="$STATE/etc/slurm.conf"
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

# stop order: compute side first, munge last (the others use it on shutdown)
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)

log() { echo "[slurm_stop] $*" >&2; }

# PIDs of this script and its ancestors: never signalled
declare -A PROTECTED=()
p=$$
while [[ -n "$p" && "$p" != 0 ]]; do
    PROTECTED[$p]=1
    p="$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
done

alive() {  # alive PID -> live, non-zombie process
    [[ -d "/proc/$1" ]] &&
        [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo Z)" != "Z" ]]
}

has_env() {  # has_env PID VAR=VALUE...  -> process environment contains all
    local pid="$1" envs
    shift
    envs="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ")" || return 1
    local kv
    for kv in "$@"; do
        grep -qxF -- "$kv" <<<"$envs" || return 1
    done
}

MY_SID="$(awk '{print $6}' /proc/$$/stat)"

ours() {  # ours PID -> belongs to this cluster (daemon marker or one of its jobs)
    local pid="$1"
    [[ -z "${PROTECTED[$pid]:-}" ]] || return 1
    # never our own session (this script's subshells, its caller's shell)
    [[ "$(awk '{print $6}' "/proc/$pid/stat" 2>/dev/null)" != "$MY_SID" ]] || return 1
    has_env "$pid" "MEDSWEEP_SLURM_DAEMON=$STATE" && return 0
    # slurmstepd overwrites its environment (process title); recognise it by
    # its binary plus an open file of ours (it keeps slurmd's log open)
    if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */slurmstepd* ]]; then
        local fd
        for fd in "/proc/$pid/fd/"*; do
            [[ "$(readlink "$fd" 2>/dev/null)" == "$STATE/"* ]] && return 0
        done
    fi
    has_env "$pid" "SLURM_CONF=$SLURM_CONF" &&
        tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -q '^SLURM_JOB_ID='
}

terminate() {  # terminate NAME TIMEOUT PID... : TERM, wait up to TIMEOUT s, KILL
    local name="$1" tmo="$2" pid left deadline
    shift 2
    (($#)) || return 0
    log "stopping $name (pid $*)"
    kill -TERM "$@" 2>/dev/null || true
    deadline=$((SECONDS + tmo))
    while :; do
        left=()
        for pid in "$@"; do alive "$pid" && left+=("$pid"); done
        ((${#left[@]})) || return 0
        ((SECONDS < deadline)) || break
        sleep 0.2
    done
    log "$name did not exit after ${tmo}s; sending SIGKILL to ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null || true
    sleep 0.5
}

recorded_pid() {  # recorded_pid NAME -> prints the pid if it is a live daemon of ours
    local f="$PIDS/$1.pid" pid
    [[ -s "$f" ]] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [[ -n "$pid" ]] && alive "$pid" && has_env "$pid" "MEDSWEEP_SLURM_DAEMON=$STATE" || return 1
    echo "$pid"
}

# ---------------------------------------------------------------- 1. jobs
if pid="$(recorded_pid slurmctld)" && [[ -f "$SLURM_CONF" ]] &&
    timeout 5 scontrol ping >/dev/null 2>&1; then
    jobs="$(timeout 10 squeue -h -o '%i' 2>/dev/null | tr '\n' ' ' || true)"
    if [[ -n "${jobs// /}" ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs >/dev/null 2>&1 || true
        deadline=$((SECONDS + 20))
        while ((SECONDS < deadline)); do
            active="$(timeout 5 squeue -h -t PD,R,CG,CF,S,RQ,SE -o '%i' 2>/dev/null || true)"
            [[ -z "$active" ]] && break
            sleep 0.5
        done
    fi
fi

# ---------------------------------------------------------------- 2. daemons
for d in "${DAEMONS[@]}"; do
    if pid="$(recorded_pid "$d")"; then
        terminate "$d" 30 "$pid"
    fi
    rm -f "$PIDS/$d.pid"
done
rm -f "$PIDS"/*.pid 2>/dev/null || true

# ---------------------------------------------------------------- 3. leftovers
leftovers() {
    local d pid
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        alive "$pid" && ours "$pid" && echo "$pid"
    done
    return 0
}
mapfile -t rest < <(leftovers)
if ((${#rest[@]})); then
    for pid in "${rest[@]}"; do
        log "leftover: $pid $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-100)"
    done
    terminate leftovers 5 "${rest[@]}"
fi
mapfile -t rest < <(leftovers)
if ((${#rest[@]})); then
    log "ERROR: processes still running: ${rest[*]}"
    exit 1
fi
rm -f "$STATE/munge/munge.socket.2" "$STATE/munge/munge.socket.2.lock" \
    "$STATE/run/mariadbd.sock" 2>/dev/null || true
log "stopped (state kept in $STATE)"
