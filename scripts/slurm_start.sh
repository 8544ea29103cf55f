#!/usr/bin/env bash
# Start a real single-node SLURM cluster (slurmctld + slurmd + slurmdbd with
# MariaDB accounting, munge auth, 6 fake GPUs) for the medsweep tests.
#
# Usage (as root, Debian 12 / slurm 22.05):
#     scripts/slurm_start.sh            # start (or confirm it is already up)
#     eval "$(scripts/slurm_start.sh)"  # same, and export SLURM_CONF here
#                                       # (stdout is only that export line;
#                                       #  progress/errors go to stderr)
#     scripts/slurm_stop.sh             # stop everything again
#
# Everything (configs, munge key/socket, MariaDB datadir, slurm state, logs,
# pid files) lives under one state directory:
#     MEDSWEEP_SLURM_DIR   state directory        (default /tmp/medsweep-slurm)
# Optional overrides (only needed if the defaults clash with something):
#     MEDSWEEP_SLURM_CTLD_PORT   slurmctld port   (default 6817)
#     MEDSWEEP_SLURM_SLURMD_PORT slurmd port      (default 6818)
#     MEDSWEEP_SLURM_DBD_PORT    slurmdbd port    (default 6819)
#     MEDSWEEP_SLURM_DB_PORT     MariaDB TCP port (default 33061, 127.0.0.1 only)
#
# The cluster: one node (this host, CPUs = nproc, RealMemory a bit under
# MemTotal), Features=v100,a100,rtx8000, Gres=gpu:v100:2,gpu:a100:2,
# gpu:rtx8000:2; partitions `debug` (default) and `gpu`, both MaxTime=INFINITE.
#
# Behaviour:
#   * installs slurm-wlm, munge, slurmdbd, mariadb-server via apt only if missing;
#   * idempotent: if every daemon is alive and the node is usable it just says so;
#     if only some daemons are alive it stops them (slurm_stop.sh) and restarts;
#   * records every daemon PID in $MEDSWEEP_SLURM_DIR/pids/<daemon>.pid;
#   * waits (<= 60 s) for the node to be idle, else fails with the log tails;
#   * the last line printed is `export SLURM_CONF=...` (also written to
#     $MEDSWEEP_SLURM_DIR/env.sh) - every slurm client command needs it.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATE_DIR="$SCRIPT_DIR/slurm"

STATE="${MEDSWEEP_SLURM_DIR:-/tmp/medsweep-slurm}"
STATE="${STATE%/}"
CTLD_PORT="${MEDSWEEP_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${MEDSWEEP_SLURM_SLURMD_PORT:-6818}"
DBD_PORT="${MEDSWEEP_SLURM_DBD_PORT:-6819}"
DB_PORT="${MEDSWEEP_SLURM_DB_PORT:-33061}"
DB_PASS="medsweep-slurm-db"
CLUSTER="medsweep"
NODE="$(hostname -s)"
READY_TIMEOUT=60

ETC="$STATE/etc"
PIDS="$STATE/pids"
LOGS="$STATE/log"
RUN="$STATE/run"
MUNGE_DIR="$STATE/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
DB_DIR="$STATE/mariadb"
DB_SOCKET="$RUN/mariadbd.sock"

export SLURM_CONF="$ETC/slurm.conf"
export MEDSWEEP_SLURM_DIR="$STATE"
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { echo "[slurm_start] $*" >&2; }

show_logs() {
    local f
    for f in "$@"; do
        if [[ -f "$f" ]]; then
            echo "----- tail of $f -----" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
}

fail() {  # fail "message" [logfile...]
    local msg="$1"
    shift
    log "ERROR: $msg"
    show_logs "$@"
    log "state directory: $STATE (stop leftovers with scripts/slurm_stop.sh)"
    exit 1
}

pid_alive() {  # pid_alive NAME -> 0 if recorded pid is a live process
    local f="$PIDS/$1.pid" pid
    [[ -s "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -d "/proc/$pid" ]] || return 1
    # a zombie is not alive
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]]
}

node_state() {
    timeout 10 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1 || true
}

node_usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

print_env() {
    echo "export SLURM_CONF=$SLURM_CONF" >"$STATE/env.sh"
    echo "export SLURM_CONF=$SLURM_CONF"
}

# ---------------------------------------------------------------- running?
all_alive=1
any_alive=0
for d in "${DAEMONS[@]}"; do
    if pid_alive "$d"; then any_alive=1; else all_alive=0; fi
done
if [[ $all_alive == 1 ]] && [[ -f "$SLURM_CONF" ]] && node_usable; then
    log "cluster already running and healthy (node $NODE: $(node_state))"
    print_env
    exit 0
fi
if [[ $any_alive == 1 ]] || compgen -G "$PIDS/*.pid" >/dev/null; then
    log "cluster partially running or stale pid files; stopping it first"
    MEDSWEEP_SLURM_DIR="$STATE" "$SCRIPT_DIR/slurm_stop.sh"
fi

# ---------------------------------------------------------------- packages
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || fail "packages missing (${missing[*]}) and not root to install them"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for b in munged mungekey munge unmunge mariadbd mariadb-install-db mariadb mariadb-admin \
    slurmdbd slurmctld slurmd sinfo sacct sacctmgr sbatch; do
    command -v "$b" >/dev/null || fail "required program '$b' not found after installation"
done

# ---------------------------------------------------------------- layout
t_start=$(date +%s)
mkdir -p "$STATE" "$ETC" "$PIDS" "$LOGS" "$RUN" "$MUNGE_DIR" "$STATE/ctld" \
    "$STATE/spool" "$STATE/dev"
chmod 755 "$STATE" "$ETC" "$PIDS" "$LOGS" "$RUN"
chmod 755 "$MUNGE_DIR" # key inside stays 0400; clients need to reach the socket

# fake GPU device files (char 1,3 == /dev/null)
for i in 0 1 2 3 4 5; do
    dev="$STATE/dev/nvidia$i"
    if [[ ! -c "$dev" ]]; then
        rm -f "$dev"
        mknod "$dev" c 1 3
        chmod 666 "$dev"
    fi
done

# ---------------------------------------------------------------- configs
CPUS="$(nproc)"
mem_total_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
# leave ~5% (at least 512 MiB) so slurmd never sees less than it was promised
reserve=$((mem_total_mb / 20))
((reserve < 512)) && reserve=512
REAL_MEMORY=$((mem_total_mb - reserve))
((REAL_MEMORY < 256)) && REAL_MEMORY=256
# jobs without --mem get this per CPU (otherwise each job would claim the
# whole node's memory and jobs could never share the node)
DEF_MEM_PER_CPU=$((REAL_MEMORY / CPUS / 2))
((DEF_MEM_PER_CPU > 2048)) && DEF_MEM_PER_CPU=2048

render() {  # render TEMPLATE OUTPUT
    sed -e "s|@STATE@|$STATE|g" \
        -e "s|@CLUSTER@|$CLUSTER|g" \
        -e "s|@NODE@|$NODE|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" \
        -e "s|@DB_PORT@|$DB_PORT|g" \
        -e "s|@DB_PASS@|$DB_PASS|g" \
        -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" \
        -e "s|@CPUS@|$CPUS|g" \
        -e "s|@REAL_MEMORY@|$REAL_MEMORY|g" \
        -e "s|@DEF_MEM_PER_CPU@|$DEF_MEM_PER_CPU|g" \
        "$1" >"$2.tmp"
    if grep -q '@[A-Z_]*@' "$2.tmp"; then
        fail "unfilled placeholder in $2: $(grep -o '@[A-Z_]*@' "$2.tmp" | sort -u | tr '\n' ' ')"
    fi
    mv "$2.tmp" "$2"
}
render "$TEMPLATE_DIR/slurm.conf.in" "$ETC/slurm.conf"
render "$TEMPLATE_DIR/gres.conf.in" "$ETC/gres.conf"
render "$TEMPLATE_DIR/slurmdbd.conf.in" "$ETC/slurmdbd.conf"
chmod 644 "$ETC/slurm.conf" "$ETC/gres.conf"
chmod 600 "$ETC/slurmdbd.conf" # slurmdbd refuses a readable one

# ---------------------------------------------------------------- helpers
launch() {  # launch NAME CMD... : start CMD detached (foreground mode), record its PID
    local name="$1"
    shift
    rm -f "$PIDS/$name.pid"
    # setsid: own session, so the daemon survives this shell and its terminal;
    # all std fds redirected so callers capturing our output do not hang.
    # MEDSWEEP_SLURM_DAEMON marks the daemon (and what it spawns, e.g.
    # slurmstepd) so slurm_stop.sh can find leftovers of this cluster only.
    MEDSWEEP_SLURM_DAEMON="$STATE" setsid "$@" </dev/null >>"$LOGS/$name.out" 2>&1 &
    local pid=$!
    echo "$pid" >"$PIDS/$name.pid"
}

wait_for() {  # wait_for NAME TIMEOUT LOGFILES -- CMD... : poll CMD until it succeeds
    local name="$1" tmo="$2" logs=() deadline
    shift 2
    while [[ $# -gt 0 && "$1" != "--" ]]; do logs+=("$1"); shift; done
    shift
    deadline=$((SECONDS + tmo))
    until "$@" >/dev/null 2>&1; do
        pid_alive "$name" || fail "$name died during startup" "${logs[@]}"
        ((SECONDS < deadline)) || fail "$name not ready after ${tmo}s" "${logs[@]}"
        sleep 0.2
    done
}

# ---------------------------------------------------------------- munge
MUNGE_KEY="$MUNGE_DIR/munge.key"
if [[ ! -s "$MUNGE_KEY" ]]; then
    mungekey --create --keyfile="$MUNGE_KEY" >/dev/null 2>&1 ||
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
fi
chmod 400 "$MUNGE_KEY"
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
launch munged munged --foreground --force \
    --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
    --pid-file="$RUN/munged.pid" --log-file="$LOGS/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed"
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
wait_for munged 15 "$LOGS/munged.log" "$LOGS/munged.out" -- munge_ok
log "munged up (pid $(cat "$PIDS/munged.pid"))"

# ---------------------------------------------------------------- mariadb
if [[ ! -d "$DB_DIR/mysql" ]]; then
    log "initialising MariaDB datadir $DB_DIR"
    rm -rf "$DB_DIR"
    mariadb-install-db --no-defaults --user=root --basedir=/usr --datadir="$DB_DIR" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$LOGS/mariadb-install.log" 2>&1 ||
        fail "mariadb-install-db failed" "$LOGS/mariadb-install.log"
fi
rm -f "$DB_SOCKET"
launch mariadbd mariadbd --no-defaults --user=root --basedir=/usr --datadir="$DB_DIR" \
    --socket="$DB_SOCKET" --pid-file="$RUN/mariadbd.pid" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --log-error="$LOGS/mariadb.log" \
    --innodb-buffer-pool-size=256M --innodb-log-file-size=64M \
    --innodb-lock-wait-timeout=900 --max-connections=200
db_sql() { mariadb --no-defaults --protocol=socket --socket="$DB_SOCKET" -uroot; }
wait_for mariadbd 30 "$LOGS/mariadb.log" "$LOGS/mariadbd.out" -- \
    mariadb-admin --no-defaults --protocol=socket --socket="$DB_SOCKET" -uroot ping
db_sql <<SQL || fail "creating the slurm database/user failed" "$LOGS/mariadb.log"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
log "mariadbd up (pid $(cat "$PIDS/mariadbd.pid"), 127.0.0.1:$DB_PORT)"

# ---------------------------------------------------------------- slurmdbd
launch slurmdbd slurmdbd -D
wait_for slurmdbd 30 "$LOGS/slurmdbd.log" "$LOGS/slurmdbd.out" -- \
    timeout 10 sacctmgr -n -P list cluster format=cluster
if ! timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null ||
        fail "sacctmgr add cluster $CLUSTER failed" "$LOGS/slurmdbd.log"
fi
log "slurmdbd up (pid $(cat "$PIDS/slurmdbd.pid"))"

# ---------------------------------------------------------------- slurmctld
# -i: ignore (rather than abort on) unreadable state left by an older config
launch slurmctld slurmctld -D -i
wait_for slurmctld 30 "$LOGS/slurmctld.log" "$LOGS/slurmctld.out" -- \
    timeout 10 scontrol ping
log "slurmctld up (pid $(cat "$PIDS/slurmctld.pid"))"

# ---------------------------------------------------------------- slurmd
launch slurmd slurmd -D
log "slurmd started (pid $(cat "$PIDS/slurmd.pid")); waiting for node $NODE to become idle"

deadline=$((SECONDS + READY_TIMEOUT))
resumed=0
while :; do
    state="$(node_state)"
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        *drain* | down | inval | fail*)
            # e.g. left "down" by a previous unclean stop; try once to resume it
            if [[ $resumed == 0 ]]; then
                resumed=1
                timeout 10 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
            fi
            ;;
    esac
    pid_alive slurmd || fail "slurmd died during startup" "$LOGS/slurmd.log" "$LOGS/slurmd.out"
    pid_alive slurmctld || fail "slurmctld died" "$LOGS/slurmctld.log" "$LOGS/slurmctld.out"
    if ((SECONDS >= deadline)); then
        timeout 10 scontrol show node "$NODE" >&2 || true
        fail "node $NODE not idle after ${READY_TIMEOUT}s (state: '${state:-?}')" \
            "$LOGS/slurmctld.log" "$LOGS/slurmd.log" "$LOGS/slurmd.out"
    fi
    sleep 0.5
done

for d in "${DAEMONS[@]}"; do
    pid_alive "$d" || fail "$d is not running after startup" "$LOGS/$d.out"
done
log "cluster '$CLUSTER' ready in $(($(date +%s) - t_start))s: node $NODE $(node_state)," \
    "$(sinfo -h -N -n "$NODE" -o 'features=%f gres=%G cpus=%c mem=%m' | head -n 1)"
print_env
