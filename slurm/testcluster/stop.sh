#!/usr/bin/env bash
# Stop the test SLURM cluster started by start.sh: jobs, slurmd(s), slurmctld, slurmdbd, MariaDB,
# munged (only daemons started from this state dir), and in multi-node mode every process left in the
# nodes' namespaces, the namespaces, veths, bridge and /etc/hosts entries. Idempotent. Keeps the state
# dir (accounting DB, logs), so the next start.sh is warm; `--purge` also deletes the state dir.
# Reads the same environment variables as start.sh (CYCLEGAN_SLURM_DIR, SLURM_CONF, ...).
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
register_recorded_nodes

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
# shellcheck disable=SC2046
stop_daemon 15 $(all_slurmd_keys) slurmctld
stop_daemon 15 slurmdbd
stop_daemon 30 mariadbd munged

# 3. step daemons left behind (a job that outlived the cancel above) in the root namespace: those
#    reading our slurm.conf are ours (another cluster's are left alone): kill them and their jobs.
for pid in $(pids_with_our_conf slurmstepd); do
    kids=$(descendants "$pid")
    log "killing leftover slurmstepd $pid${kids:+ and its processes ${kids//$'\n'/ }}"
    # shellcheck disable=SC2086
    kill -KILL "$pid" $kids 2>/dev/null || true
done
# 4. multi-node mode: whatever is left in the nodes' namespaces, then the namespaces, veths, bridge, hosts
teardown_network
# a munged killed hard leaves its socket behind
if ! munge_works; then
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" 2>/dev/null || true
fi

if ((purge)); then
    log "removing $STATE_DIR"
    rm -rf "$STATE_DIR"
fi
log "stopped"
