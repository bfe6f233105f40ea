# Shared settings and helpers for start.sh / stop.sh (sourced, not run).
# shellcheck shell=bash disable=SC2034

STATE_DIR=${CYCLEGAN_SLURM_DIR:-/tmp/cyclegan-slurm}
CLUSTER_NAME=cyclegan
NODE_NAME=localhost
PARTITION=debug
NODE_CPUS=${CYCLEGAN_SLURM_CPUS:-4}
NODE_GPUS=${CYCLEGAN_SLURM_GPUS:-2}
NODE_MEM_MB=${CYCLEGAN_SLURM_MEM_MB:-16000}
DB_PORT=${CYCLEGAN_SLURM_DB_PORT:-33061}
DB_USER=slurm
DB_PASS=cyclegan-testcluster   # local test DB, bound to 127.0.0.1 only
SLURM_USER=root
ETC_SLURM=/etc/slurm

LOG_DIR=$STATE_DIR/log
RUN_DIR=$STATE_DIR/run
MUNGE_DIR=$STATE_DIR/munge          # owned by munge: pid, seed
MYSQL_DIR=$STATE_DIR/mysql          # MariaDB datadir, owned by mysql
MYSQL_RUN=$STATE_DIR/mysql-run      # MariaDB socket + pid, owned by mysql
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock
CTLD_SPOOL=$STATE_DIR/spool/slurmctld
SLURMD_SPOOL=$STATE_DIR/spool/slurmd

# daemon name -> pid file
declare -A PIDFILE=(
    [munged]=$MUNGE_DIR/munged.pid
    [mariadbd]=$MYSQL_RUN/mariadbd.pid
    [slurmdbd]=$RUN_DIR/slurmdbd.pid
    [slurmctld]=$RUN_DIR/slurmctld.pid
    [slurmd]=$RUN_DIR/slurmd.pid
)
# daemon name -> log file
declare -A LOGFILE=(
    [munged]=$LOG_DIR/munged.log
    [mariadbd]=$LOG_DIR/mariadb.log
    [slurmdbd]=$LOG_DIR/slurmdbd.log
    [slurmctld]=$LOG_DIR/slurmctld.log
    [slurmd]=$LOG_DIR/slurmd.log
)

log() { echo "[testcluster] $*"; }
warn() { echo "[testcluster] WARNING: $*" >&2; }

# Print the tail of a log file to stderr.
show_log() {
    local f=$1 n=${2:-40}
    if [[ -s $f ]]; then
        echo "---- last $n lines of $f ----" >&2
        tail -n "$n" "$f" >&2
        echo "---- end of $f ----" >&2
    else
        echo "(log $f is empty or missing)" >&2
    fi
}

# Echo the pid of daemon $1 if its pid file names a live process of that program; else
# return 1. A stale pid file (dead process, or pid reused by another program) is removed.
daemon_pid() {
    local name=$1 f=${PIDFILE[$1]} pid comm
    [[ -f $f ]] || return 1
    pid=$(tr -dc '0-9' < "$f" 2>/dev/null || true)
    if [[ -n $pid && -r /proc/$pid/comm ]]; then
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        # comm may be e.g. "slurmctld" or "slurmctld-wlm" (Debian alternatives)
        if [[ $comm == "$name"* ]]; then
            echo "$pid"
            return 0
        fi
    fi
    rm -f "$f"
    return 1
}

# Pids (one per line) of all descendants of $1.
descendants() {
    local p
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$p"
        descendants "$p"
    done
}

# stop_daemon WAIT_S NAME... : SIGTERM the named daemons (by their pid files) together, wait up
# to WAIT_S seconds for all of them to exit, then SIGKILL what is left.
stop_daemon() {
    local wait_s=$1 name pid i alive
    shift
    local -a pids=()
    for name in "$@"; do
        pid=$(daemon_pid "$name") || continue
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
    done
    for ((i = 0; i < wait_s * 10; i++)); do
        alive=0
        for pid in "${pids[@]}"; do [[ -d /proc/$pid ]] && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if [[ -d /proc/$pid ]]; then
            warn "pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) did not exit after ${wait_s}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for name in "$@"; do rm -f "${PIDFILE[$name]}"; done
}

# True when munge credentials can be made and checked (some munged answers on the socket).
munge_works() {
    timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1
}
