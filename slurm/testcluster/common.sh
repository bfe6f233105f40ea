# Shared settings and helpers for start.sh / stop.sh (sourced, not run).
# shellcheck shell=bash disable=SC2034
#
# Every global resource can be moved with an environment variable, so that a second test cluster can run
# next to the default one (see README.md, "Two clusters on one machine"). Unset = the defaults below.

STATE_DIR=${CYCLEGAN_SLURM_DIR:-/tmp/cyclegan-slurm}
# The config the daemons and every client (sbatch, squeue, sacct, the launcher) read. gres.conf and
# slurmdbd.conf go next to it. Exported: everything started from these scripts uses it.
export SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
ETC_SLURM=$(dirname "$SLURM_CONF")
CLUSTER_NAME=${CYCLEGAN_SLURM_CLUSTER:-cyclegan}
PARTITION=debug
NODE_CPUS=${CYCLEGAN_SLURM_CPUS:-4}
NODE_GPUS=${CYCLEGAN_SLURM_GPUS:-2}
NODE_MEM_MB=${CYCLEGAN_SLURM_MEM_MB:-16000}
CTLD_PORT=${CYCLEGAN_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${CYCLEGAN_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${CYCLEGAN_SLURM_DBD_PORT:-6819}
DB_PORT=${CYCLEGAN_SLURM_DB_PORT:-33061}
DB_USER=slurm
DB_PASS=cyclegan-testcluster   # local test DB, bound to 127.0.0.1 only
SLURM_USER=root
# munged's socket: the system one by default (a munged already answering there is reused)
DEFAULT_MUNGE_SOCKET=/run/munge/munge.socket.2
MUNGE_SOCKET=${CYCLEGAN_SLURM_MUNGE_SOCKET:-$DEFAULT_MUNGE_SOCKET}
# first job id of a fresh cluster (empty: SLURM's default, 1)
FIRST_JOB_ID=${CYCLEGAN_SLURM_FIRST_JOB_ID:-}
# seconds without an answer from a slurmd before slurmctld sets its node DOWN (and requeues its jobs):
# start.sh uses $CYCLEGAN_SLURM_SLURMD_TIMEOUT, else 60 with one node and 20 with several (a lost node
# ends its jobs within about half a minute).

# Multi-node mode (start.sh --nodes N, N >= 2): one slurmd per network + UTS namespace, joined to the root
# namespace by a veth pair on a bridge. Names: netns/node/hostname $NET_PREFIX-node<i>, bridge $NET_PREFIX-br,
# host-side veths $NET_PREFIX-h<i> (the namespace side is called eth0). Addresses: <subnet>.1 the bridge
# (slurmctld, slurmdbd, clients), <subnet>.<10+i> node i. Only /24 subnets.
NET_PREFIX=${CYCLEGAN_SLURM_PREFIX:-cg}
SUBNET=${CYCLEGAN_SLURM_SUBNET:-10.199.0.0/24}
NET_BASE=${SUBNET%.*}            # 10.199.0
BRIDGE=$NET_PREFIX-br
BRIDGE_ADDR=$NET_BASE.1
HOSTS_FILE=/etc/hosts
HOSTS_TAG=${CYCLEGAN_SLURM_HOSTS_TAG:-cyclegan-testcluster}
NS_IFNAME=eth0

LOG_DIR=$STATE_DIR/log
RUN_DIR=$STATE_DIR/run
GEN_DIR=$STATE_DIR/gen           # freshly generated configs, compared with the installed ones
MUNGE_DIR=$STATE_DIR/munge          # owned by munge: pid, seed
MYSQL_DIR=$STATE_DIR/mysql          # MariaDB datadir, owned by mysql
MYSQL_RUN=$STATE_DIR/mysql-run      # MariaDB socket + pid, owned by mysql
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock
CTLD_SPOOL=$STATE_DIR/spool/slurmctld
SLURMD_SPOOL=$STATE_DIR/spool/slurmd
NET_STATE=$STATE_DIR/run/nodes      # node names of the running multi-node cluster, one a line

# daemon name -> pid file (slurmd of node NAME in multi-node mode: key slurmd@NAME)
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

# node i (1-based) of a multi-node cluster
node_name() { echo "$NET_PREFIX-node$1"; }
node_addr() { echo "$NET_BASE.$((10 + $1))"; }
node_veth() { echo "$NET_PREFIX-h$1"; }
# register the pid/log files of node NAME's slurmd (SlurmdPidFile/SlurmdLogFile use %n)
register_node() {
    PIDFILE[slurmd@$1]=$RUN_DIR/slurmd-$1.pid
    LOGFILE[slurmd@$1]=$LOG_DIR/slurmd-$1.log
}
# nodes of the multi-node cluster recorded by the last start.sh (none in single-node mode)
recorded_nodes() { [[ -f $NET_STATE ]] && grep -E '^[A-Za-z0-9_-]+$' "$NET_STATE" || true; }

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

# Echo the pid of daemon $1 (slurmctld, slurmd@NODE, ...) if its pid file names a live process of that
# program; else return 1. A stale pid file (dead process, or pid reused by another program) is removed.
daemon_pid() {
    local key=$1 name=${1%%@*} f=${PIDFILE[$1]:-} pid comm
    [[ -n $f && -f $f ]] || return 1
    pid=$(tr -dc '0-9' 2>/dev/null < "$f" || true)
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

# The slurm.conf a running SLURM program (pid $1) reads: -f FILE, else its SLURM_CONF, else /etc/slurm.
proc_conf() {
    local pid=$1 args conf=""
    # (2>/dev/null before <: the process may be gone, and a failed redirection is reported by the shell)
    mapfile -d '' -t args 2>/dev/null < "/proc/$pid/cmdline" || return 1
    local i
    for ((i = 1; i < ${#args[@]}; i++)); do
        if [[ ${args[i]} == -f ]]; then conf=${args[i + 1]:-}; fi
    done
    if [[ -z $conf ]]; then
        conf=$(tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ" | sed -n 's/^SLURM_CONF=//p' | head -n1)
    fi
    echo "${conf:-/etc/slurm/slurm.conf}"
}

# Pids of running programs named $1 (or $1-wlm) that read our slurm.conf.
pids_with_our_conf() {
    local pid
    for pid in $(pgrep -x "$1"; pgrep -x "$1-wlm"); do
        [[ $(proc_conf "$pid") == "$SLURM_CONF" ]] && echo "$pid"
    done
    return 0
}

# True when some socket of this network namespace listens on TCP port $1.
port_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
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
    for name in "$@"; do [[ -n ${PIDFILE[$name]:-} ]] && rm -f "${PIDFILE[$name]}"; done
    return 0
}

# All slurmd pid-file keys we may have: the single-node one and those of the recorded nodes
# (register_recorded_nodes must have run in this shell).
all_slurmd_keys() {
    local n
    echo slurmd
    for n in $(recorded_nodes); do echo "slurmd@$n"; done
}
register_recorded_nodes() {
    local n
    for n in $(recorded_nodes); do register_node "$n"; done
}

# True when munge credentials can be made and checked (some munged answers on our socket).
munge_works() {
    timeout 5 munge -S "$MUNGE_SOCKET" -n 2>/dev/null | timeout 5 unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

# ------------------------------------------------------------------------- network namespaces

# Pids of the processes in network namespace $1 (none if it does not exist).
netns_pids() {
    [[ -e /run/netns/$1 ]] || return 0
    ip netns pids "$1" 2>/dev/null || true
}

# True for a line of $HOSTS_FILE that we added (it ends with "# $HOSTS_TAG").
HOSTS_AWK_OURS='function ours(l) { return length(l) >= length(t) && substr(l, length(l) - length(t) + 1) == t }'

# Our /etc/hosts lines, as they are now.
hosts_ours() {
    [[ -f $HOSTS_FILE ]] || return 0
    awk -v t="# $HOSTS_TAG" "$HOSTS_AWK_OURS"' ours($0)' "$HOSTS_FILE"
}

# hosts_set LINE... : replace our /etc/hosts lines by LINEs (each gets the tag); none: remove ours.
# Rewritten in place (the file may be a bind mount), under a lock (two clusters may start at once).
hosts_set() {
    local lines=("$@")
    (
        flock -x 9
        local kept
        kept=$(awk -v t="# $HOSTS_TAG" "$HOSTS_AWK_OURS"' !ours($0)' "$HOSTS_FILE")
        {
            printf '%s\n' "$kept"
            for l in "${lines[@]}"; do printf '%s # %s\n' "$l" "$HOSTS_TAG"; done
        } > "$HOSTS_FILE"
    ) 9> /tmp/.cyclegan-testcluster-hosts.lock
}

hosts_remove() {
    [[ -n $(hosts_ours) ]] || return 0
    hosts_set
}

# Our namespaces: the recorded ones plus any $NET_PREFIX-node<i> left by a killed session.
our_namespaces() {
    {
        recorded_nodes
        ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NET_PREFIX-node[0-9]+\$" || true
    } | sort -u
}

# SIGKILL everything left in our namespaces, delete them, the bridge, the veths and the hosts entries.
teardown_network() {
    local ns pids i veth
    for ns in $(our_namespaces); do
        pids=$(netns_pids "$ns")
        if [[ -n $pids ]]; then
            log "killing processes left in namespace $ns: ${pids//$'\n'/ }"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -z $(netns_pids "$ns") ]] && break
                sleep 0.1
            done
        fi
        ip netns delete "$ns" 2>/dev/null || true
    done
    for veth in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' |
        grep -E "^$NET_PREFIX-h[0-9]+\$" || true); do
        ip link delete "$veth" 2>/dev/null || true
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link delete "$BRIDGE" 2>/dev/null || true
    fi
    hosts_remove
    rm -f "$NET_STATE"
    return 0
}
