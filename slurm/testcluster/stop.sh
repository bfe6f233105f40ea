#!/usr/bin/env bash
# Stop the single-host test SLURM cluster started by start.sh: jobs, slurmd, slurmctld,
# slurmdbd, MariaDB, munged. Idempotent. Keeps the state dir (accounting DB, logs), so the
# next start.sh is warm; `--purge` also deletes the state dir.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/testcluster/common.sh
source "$HERE/common.sh"
export PATH=$PATH:/usr/sbin:/sbin

purge=0
case ${1:-} in
    --purge) purge=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

[[ $(id -u) -eq 0 ]] || { echo "[testcluster] ERROR: stop.sh must run as root" >&2; exit 1; }

# 1. cancel jobs while slurmctld is still there, so slurmstepd and job processes end cleanly
if daemon_pid slurmctld >/dev/null && command -v squeue >/dev/null; then
    jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        log "cancelling jobs: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        # KillWait=10: a job that ignores SIGTERM is killed after 10 s
        for ((i = 0; i < 150; i++)); do
            [[ -z $(timeout 5 squeue -h -o '%A' 2>/dev/null || true) ]] && break
            sleep 0.1
        done
    fi
fi

# 2. the SLURM daemons, then the database, then munge
stop_daemon 15 slurmd slurmctld
stop_daemon 15 slurmdbd
stop_daemon 30 mariadbd munged

# 3. step daemons left behind (a job that outlived the cancel above). With our slurmd gone and
#    no other slurmd on this host, any slurmstepd left is one of ours: kill it and its job.
if [[ -z $(pgrep -x slurmd || pgrep -x slurmd-wlm || true) ]]; then
    for pid in $(pgrep -x slurmstepd || pgrep -x slurmstepd-wlm || true); do
        kids=$(descendants "$pid")
        log "killing leftover slurmstepd $pid${kids:+ and its processes ${kids//$'\n'/ }}"
        # shellcheck disable=SC2086
        kill -KILL "$pid" $kids 2>/dev/null || true
    done
fi
# a munged killed hard leaves its socket behind
if ! munge_works; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock 2>/dev/null || true
fi

if ((purge)); then
    log "removing $STATE_DIR"
    rm -rf "$STATE_DIR"
fi
log "stopped"
