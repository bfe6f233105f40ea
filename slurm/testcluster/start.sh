#!/usr/bin/env bash
# Start a real SLURM cluster on this one machine (munge, MariaDB, slurmdbd, slurmctld, N x slurmd) for tests.
#
#   start.sh [--nodes N]      N = 1 (default, or $CYCLEGAN_SLURM_NODES): one slurmd, node "localhost"
#                             N >= 2: N slurmds, each in its own network + UTS namespace (node NAME-node<i>)
#
# Idempotent: when the cluster is already up and healthy with the same N it returns in about a second;
# a different N restarts the SLURM daemons with the new node set. No systemd, no cgroups. State, logs and
# pid files live in $CYCLEGAN_SLURM_DIR (default /tmp/cyclegan-slurm); configs go next to $SLURM_CONF
# (default /etc/slurm/slurm.conf, where the client tools read them).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/testcluster/common.sh
source "$HERE/common.sh"

NODES=${CYCLEGAN_SLURM_NODES:-1}
while (($#)); do
    case $1 in
        --nodes) NODES=${2:-}; shift 2 || { echo "usage: $0 [--nodes N]" >&2; exit 2; } ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--nodes N]" >&2; exit 2 ;;
    esac
done

T0=$(date +%s%N)
elapsed() {
    local ms=$((($(date +%s%N) - T0) / 1000000))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

fail() {
    echo "[testcluster] ERROR: $1" >&2
    shift
    local f
    for f in "$@"; do show_log "$f"; done
    exit 1
}

# wait_for SECONDS WHAT COMMAND... : poll COMMAND every 0.2 s until it succeeds; on timeout
# print what its last attempt said. When WHAT is a daemon we started, give up early once it
# has died (no live process behind its pid file 5 s after the start).
wait_for() {
    local secs=$1 what=$2 start deadline out
    shift 2
    start=$(date +%s)
    deadline=$((start + secs))
    until out=$("$@" 2>&1); do
        if [[ -n ${PIDFILE[$what]:-} ]] && (($(date +%s) >= start + 5)) && ! daemon_pid "$what" >/dev/null; then
            echo "[testcluster] $what is not running (it exited or never wrote ${PIDFILE[$what]})" >&2
            return 1
        fi
        if (($(date +%s) >= deadline)); then
            echo "[testcluster] $what: still failing after ${secs}s; last attempt ($*) said:" >&2
            echo "${out:-(nothing)}" | tail -n 10 >&2
            return 1
        fi
        sleep 0.2
    done
}

[[ $(id -u) -eq 0 ]] || fail "start.sh must run as root"
[[ $NODES =~ ^[0-9]+$ ]] || fail "--nodes (or CYCLEGAN_SLURM_NODES) must be a number, got '$NODES'"
SLURMD_TIMEOUT=${CYCLEGAN_SLURM_SLURMD_TIMEOUT:-$((NODES > 1 ? 20 : 60))}
for v in CPUS:NODE_CPUS GPUS:NODE_GPUS MEM_MB:NODE_MEM_MB DB_PORT:DB_PORT CTLD_PORT:CTLD_PORT \
    SLURMD_PORT:SLURMD_PORT DBD_PORT:DBD_PORT SLURMD_TIMEOUT:SLURMD_TIMEOUT; do
    var=${v#*:}
    val=${!var}
    [[ $val =~ ^[0-9]+$ ]] || fail "CYCLEGAN_SLURM_${v%%:*} must be a number, got '$val'"
done
((NODES >= 1 && NODES <= 200)) || fail "--nodes must be 1..200, got $NODES"
[[ -z $FIRST_JOB_ID || $FIRST_JOB_ID =~ ^[0-9]+$ ]] || fail "CYCLEGAN_SLURM_FIRST_JOB_ID must be a number"
[[ $SUBNET =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)\.0/24$ ]] ||
    fail "CYCLEGAN_SLURM_SUBNET must be a /24 like 10.199.0.0/24, got '$SUBNET'"
[[ $NET_PREFIX =~ ^[a-z][a-z0-9]{0,7}$ ]] ||
    fail "CYCLEGAN_SLURM_PREFIX must be 1-8 lowercase letters/digits (it names interfaces), got '$NET_PREFIX'"
[[ $SLURM_CONF == /* && $(basename "$SLURM_CONF") == slurm.conf ]] ||
    fail "SLURM_CONF must be an absolute path to a file named slurm.conf, got '$SLURM_CONF'"

# The node set: single-node mode keeps today's node "localhost" on 127.0.0.1 in the root namespace.
declare -a NODE_NAMES NODE_ADDRS
if ((NODES == 1)); then
    NODE_NAMES=(localhost)
    NODE_ADDRS=(127.0.0.1)
    CTLD_ADDR=127.0.0.1
else
    for ((i = 1; i <= NODES; i++)); do
        NODE_NAMES+=("$(node_name "$i")")
        NODE_ADDRS+=("$(node_addr "$i")")
        register_node "$(node_name "$i")"
    done
    CTLD_ADDR=$BRIDGE_ADDR
fi
register_recorded_nodes  # the running node set may differ (it is restarted below)
# pid-file key of node i's slurmd, and the file its stdout/stderr go to
slurmd_out() { local k=${1#slurmd}; echo "$LOG_DIR/slurmd${k/@/-}.out"; }
slurmd_key() { if ((NODES == 1)); then echo slurmd; else echo "slurmd@${NODE_NAMES[$1]}"; fi; }

# ---------------------------------------------------------------- install if needed
need_install=0
for b in slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mungekey mariadbd mariadb-install-db mariadb; do
    command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || need_install=1
done
if ((need_install)); then
    log "SLURM/munge/MariaDB binaries missing; running install.sh"
    bash "$HERE/install.sh"
fi
export PATH=$PATH:/usr/sbin:/sbin


# ---------------------------------------------------------------- never take over another cluster's config
# $SLURM_CONF written by start.sh for another state dir whose slurmctld runs: that cluster is in use.
if [[ -f $SLURM_CONF ]]; then
    owner=$(sed -n 's/^# it is rewritten on every start\. State dir: //p' "$SLURM_CONF" | head -n1)
    if [[ -n $owner && $owner != "$STATE_DIR" && -f $owner/run/slurmctld.pid ]]; then
        opid=$(tr -dc '0-9' < "$owner/run/slurmctld.pid" || true)
        if [[ -n $opid ]] && [[ $(cat "/proc/$opid/comm" 2>/dev/null || true) == slurmctld* ]]; then
            fail "$SLURM_CONF belongs to the running test cluster of $owner (slurmctld pid $opid); give this one its\
 own config with SLURM_CONF=$STATE_DIR/etc/slurm.conf (and its own ports, see README.md)"
        fi
    fi
fi

# ---------------------------------------------------------------- directories
mkdir -p "$STATE_DIR" "$LOG_DIR" "$RUN_DIR" "$CTLD_SPOOL" "$GEN_DIR"
if ((NODES == 1)); then
    mkdir -p "$SLURMD_SPOOL"
else
    for n in "${NODE_NAMES[@]}"; do mkdir -p "$SLURMD_SPOOL-$n"; done
fi
chmod 755 "$STATE_DIR"
install -d -o munge -g munge -m 700 "$MUNGE_DIR"
install -d -o mysql -g mysql -m 750 "$MYSQL_DIR"
install -d -o mysql -g mysql -m 755 "$MYSQL_RUN"
if [[ $MUNGE_SOCKET == "$DEFAULT_MUNGE_SOCKET" ]]; then
    install -d -o munge -g munge -m 755 /run/munge
else
    [[ -d $(dirname "$MUNGE_SOCKET") ]] || install -d -o munge -g munge -m 755 "$(dirname "$MUNGE_SOCKET")"
fi
install -d -m 755 "$ETC_SLURM"
for f in "${LOGFILE[munged]}" "${LOGFILE[mariadbd]}"; do
    touch "$f"
done
chown munge:munge "${LOGFILE[munged]}"
chmod 640 "${LOGFILE[munged]}"
chown mysql:mysql "${LOGFILE[mariadbd]}"

# ---------------------------------------------------------------- configs
gpu_max=$((NODE_GPUS - 1))
if ((NODE_GPUS > 0)); then
    node_gres="Gres=gpu:$NODE_GPUS"
else
    node_gres=""
fi
auth_info=cred_expire=10
dbd_auth_info=""
if [[ $MUNGE_SOCKET != "$DEFAULT_MUNGE_SOCKET" ]]; then
    auth_info+=",socket=$MUNGE_SOCKET"
    dbd_auth_info="AuthInfo=socket=$MUNGE_SOCKET"
fi
if ((NODES == 1)); then
    ctld_host=localhost
    spool=$SLURMD_SPOOL
    slurmd_pid=${PIDFILE[slurmd]}
    slurmd_log=${LOGFILE[slurmd]}
    node_lines="NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB $node_gres State=UNKNOWN"
    part_nodes=localhost
else
    # the controller's address is the bridge's: reachable from the root namespace and from every node
    ctld_host="localhost($BRIDGE_ADDR)"
    spool="$SLURMD_SPOOL-%n"
    slurmd_pid="$RUN_DIR/slurmd-%n.pid"
    slurmd_log="$LOG_DIR/slurmd-%n.log"
    node_lines=""
    for ((i = 0; i < NODES; i++)); do
        node_lines+="NodeName=${NODE_NAMES[i]} NodeAddr=${NODE_ADDRS[i]} NodeHostname=${NODE_NAMES[i]}"
        node_lines+=" CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB $node_gres State=UNKNOWN"$'\n'
    done
    node_lines=${node_lines%$'\n'}
    part_nodes="$NET_PREFIX-node[1-$NODES]"
fi

cat > "$GEN_DIR/slurm.conf" <<EOF
# Generated by slurm/testcluster/start.sh (cyclegan-dist test cluster). Do not edit:
# it is rewritten on every start. State dir: $STATE_DIR
ClusterName=$CLUSTER_NAME
SlurmctldHost=$ctld_host
SlurmUser=$SLURM_USER
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=$auth_info
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$spool
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=${LOGFILE[slurmctld]}
SlurmdLogFile=$slurmd_log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
# advertise the configured CPUs/memory even if the host has fewer
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=$SLURMD_TIMEOUT
InactiveLimit=0
Waittime=0
KillWait=10
MinJobAge=300
JobRequeue=1
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
${FIRST_JOB_ID:+FirstJobId=$FIRST_JOB_ID
}$node_lines
PartitionName=$PARTITION Nodes=$part_nodes Default=YES MaxTime=INFINITE OverSubscribe=NO State=UP
EOF

{
    echo "# Generated by slurm/testcluster/start.sh. Fake GPUs: character devices aliasing /dev/null."
    echo "AutoDetect=off"
    if ((NODE_GPUS > 0)); then
        echo "NodeName=$part_nodes Name=gpu File=/dev/fakegpu[0-$gpu_max]"
    fi
} > "$GEN_DIR/gres.conf"

cat > "$GEN_DIR/slurmdbd.conf" <<EOF
# Generated by slurm/testcluster/start.sh (cyclegan-dist test cluster).
AuthType=auth/munge
${dbd_auth_info:+$dbd_auth_info
}DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=$SLURM_USER
DebugLevel=info
LogFile=${LOGFILE[slurmdbd]}
PidFile=${PIDFILE[slurmdbd]}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

configs_changed=0
for f in slurm.conf gres.conf slurmdbd.conf; do
    if ! cmp -s "$GEN_DIR/$f" "$ETC_SLURM/$f"; then
        configs_changed=1
    fi
done
# the node set the running daemons were started with (multi-node mode), one name a line
want_nodes=""
((NODES == 1)) || want_nodes=$(printf '%s\n' "${NODE_NAMES[@]}")
nodes_changed=0
[[ $(recorded_nodes) == "$want_nodes" ]] || nodes_changed=1

# ---------------------------------------------------------------- network (multi-node mode)
hosts_lines=()
if ((NODES > 1)); then
    hosts_lines+=("$BRIDGE_ADDR $NET_PREFIX-ctl")
    for ((i = 0; i < NODES; i++)); do hosts_lines+=("${NODE_ADDRS[i]} ${NODE_NAMES[i]}"); done
fi
hosts_wanted() { local l; for l in "${hosts_lines[@]}"; do printf '%s # %s\n' "$l" "$HOSTS_TAG"; done; }

# True when the bridge, every namespace (lo and eth0 up with the node's address, its veth on the bridge)
# and the /etc/hosts lines are as they should be. NET_PROBLEM says what is not. (grep >/dev/null, not
# grep -q: under pipefail, ip killed by SIGPIPE when grep -q stops reading would fail the check.)
NET_PROBLEM=""
network_ok() {
    ((NODES > 1)) || return 0
    NET_PROBLEM="bridge $BRIDGE has no address $BRIDGE_ADDR/24"
    ip -o addr show dev "$BRIDGE" 2>/dev/null | grep " $BRIDGE_ADDR/24 " >/dev/null || return 1
    NET_PROBLEM="the /etc/hosts lines tagged $HOSTS_TAG differ"
    [[ $(hosts_ours) == "$(hosts_wanted)" ]] || return 1
    local i ns veth
    for ((i = 0; i < NODES; i++)); do
        ns=${NODE_NAMES[i]}
        veth=$(node_veth $((i + 1)))
        NET_PROBLEM="no network namespace $ns"
        [[ -e /run/netns/$ns ]] || return 1
        # administratively up (the UP flag; the operational state follows a moment later)
        NET_PROBLEM="$veth is not up on $BRIDGE"
        ip -o link show "$veth" 2>/dev/null | grep -E "[<,]UP[,>].* master $BRIDGE " >/dev/null || return 1
        NET_PROBLEM="$NS_IFNAME in $ns has no address ${NODE_ADDRS[i]}/24"
        ip -n "$ns" -o addr show dev "$NS_IFNAME" 2>/dev/null | grep " ${NODE_ADDRS[i]}/24 " >/dev/null || return 1
        NET_PROBLEM="$NS_IFNAME or lo in $ns is not up"
        ip -n "$ns" -o link show "$NS_IFNAME" 2>/dev/null | grep -E '[<,]UP[,>]' >/dev/null || return 1
        ip -n "$ns" -o link show lo 2>/dev/null | grep -E '[<,]UP[,>]' >/dev/null || return 1
    done
    NET_PROBLEM=""
}

# Create what is missing of the bridge, namespaces, veths and hosts entries (idempotent).
setup_network() {
    local i ns veth peer addr
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge || fail "cannot create bridge $BRIDGE"
    fi
    ip addr replace "$BRIDGE_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for ((i = 0; i < NODES; i++)); do
        ns=${NODE_NAMES[i]}
        addr=${NODE_ADDRS[i]}
        veth=$(node_veth $((i + 1)))
        peer=$NET_PREFIX-n$((i + 1))
        [[ -e /run/netns/$ns ]] || ip netns add "$ns" || fail "cannot create network namespace $ns"
        if ! ip -n "$ns" link show "$NS_IFNAME" >/dev/null 2>&1; then
            ip link delete "$veth" 2>/dev/null || true
            ip link add "$veth" type veth peer name "$peer" || fail "cannot create veth pair $veth/$peer"
            ip link set "$peer" netns "$ns"
            ip -n "$ns" link set "$peer" name "$NS_IFNAME"
        fi
        ip link set "$veth" master "$BRIDGE"
        ip link set "$veth" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr replace "$addr/24" dev "$NS_IFNAME"
        ip -n "$ns" link set "$NS_IFNAME" up
    done
    [[ $(hosts_ours) == "$(hosts_wanted)" ]] || hosts_set "${hosts_lines[@]}"
    printf '%s\n' "${NODE_NAMES[@]}" > "$NET_STATE"
}

# ---------------------------------------------------------------- health check
# "NAME STATE" for every node SLURM knows
node_states() { timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }
# the state of node $1 from node_states output $2
state_of() { awk -v n="$1" '$1 == n { print $2; exit }' <<< "$2"; }
ready_state() { [[ $1 == idle || $1 == mixed || $1 == allocated || $1 == completing ]]; }
nodes_ready() {
    local states n
    states=$(node_states) || return 1
    for n in "${NODE_NAMES[@]}"; do ready_state "$(state_of "$n" "$states")" || return 1; done
}
sacct_works() { timeout 10 sacct -n -X -S now-1minutes >/dev/null 2>&1; }

summary() {
    local gres states s="" n
    gres=$(timeout 10 sinfo -h -N -n "${NODE_NAMES[0]}" -o '%G' 2>/dev/null | head -n1 || true)
    states=$(node_states || true)
    for n in "${NODE_NAMES[@]}"; do s+="${s:+,}$(state_of "$n" "$states")"; done
    local where=$part_nodes
    ((NODES == 1)) || where+=" ($NET_BASE.11-$((10 + NODES)))"
    log "up in $(elapsed)s: cluster=$CLUSTER_NAME partition=$PARTITION nodes=$NODES node=$where" \
        "cpus=$NODE_CPUS mem=${NODE_MEM_MB}M gres=$gres state=$s dir=$STATE_DIR conf=$SLURM_CONF"
}

all_running=1
for d in munged mariadbd slurmdbd slurmctld; do
    if [[ $d == munged ]]; then
        munge_works || all_running=0
    else
        daemon_pid "$d" >/dev/null || all_running=0
    fi
done
for ((i = 0; i < NODES; i++)); do daemon_pid "$(slurmd_key "$i")" >/dev/null || all_running=0; done
if ((all_running && !configs_changed && !nodes_changed)) && network_ok && nodes_ready && sacct_works; then
    summary
    exit 0
fi

# ---------------------------------------------------------------- refuse foreign daemons
# Another SLURM may run on this machine (another state dir, config and ports). Refuse only what would clash
# with this one: a daemon reading our config that we did not start, or a port of ours taken by something else.
declare -A PORT_OF=([slurmdbd]=$DBD_PORT [slurmctld]=$CTLD_PORT [slurmd]=$SLURMD_PORT [mariadbd]=$DB_PORT)
root_daemons=(mariadbd slurmdbd slurmctld)
((NODES == 1)) && root_daemons+=(slurmd)
ours=" "  # pids of the daemons we started (the slurmds of the previous node set included)
for key in "${!PIDFILE[@]}"; do
    pid=$(daemon_pid "$key") && ours+="$pid "
done
for d in "${root_daemons[@]}"; do
    daemon_pid "$d" >/dev/null && continue
    if [[ $d != mariadbd ]]; then
        other=""
        for pid in $(pids_with_our_conf "$d"); do
            [[ $ours == *" $pid "* ]] || other+="${other:+ }$pid"
        done
        if [[ -n $other ]]; then
            fail "a $d reading $SLURM_CONF but not started from $STATE_DIR is running (pid $other);\
 stop it first (e.g. CYCLEGAN_SLURM_DIR=<its dir> bash $HERE/stop.sh, or kill it)"
        fi
    fi
    # a single-node slurmd we are about to restart may still hold its port for a moment
    if port_listening "${PORT_OF[$d]}"; then
        fail "TCP port ${PORT_OF[$d]} (for $d) is already in use on this machine; stop what listens there or\
 move this cluster (CYCLEGAN_SLURM_CTLD_PORT/_SLURMD_PORT/_DBD_PORT/_DB_PORT, see README.md)"
    fi
done

# ---------------------------------------------------------------- install configs
if ((configs_changed || nodes_changed)); then
    # running SLURM daemons would keep the old config (and node set): restart them
    # shellcheck disable=SC2046
    stop_daemon 15 $(all_slurmd_keys) slurmctld
    stop_daemon 15 slurmdbd
    if ((nodes_changed)); then
        teardown_network  # namespaces of the old node set (and whatever still ran in them)
    fi
    install -m 644 -o root -g root "$GEN_DIR/slurm.conf" "$ETC_SLURM/slurm.conf"
    install -m 644 -o root -g root "$GEN_DIR/gres.conf" "$ETC_SLURM/gres.conf"
    ((configs_changed)) && log "wrote $ETC_SLURM/slurm.conf, gres.conf, slurmdbd.conf"
fi
# always (re)assert owner and mode: slurmdbd refuses a readable slurmdbd.conf
install -m 600 -o "$SLURM_USER" -g "$(id -gn "$SLURM_USER")" "$GEN_DIR/slurmdbd.conf" "$ETC_SLURM/slurmdbd.conf"

# ---------------------------------------------------------------- munge
if ! munge_works; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 700 /etc/munge
        if ! mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null; then
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 600 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 700 /var/lib/munge
    # no munged answers: a socket left there is stale
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    stop_daemon 5 munged
    log "starting munged (socket $MUNGE_SOCKET)"
    runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" \
        --pid-file="${PIDFILE[munged]}" --log-file="${LOGFILE[munged]}" \
        --seed-file="$MUNGE_DIR/munged.seed" ||
        fail "munged failed to start" "${LOGFILE[munged]}"
    wait_for 10 munged munge_works || fail "munged does not answer" "${LOGFILE[munged]}"
fi

# ---------------------------------------------------------------- MariaDB
# shellcheck disable=SC2120
mysql_cmd() { mariadb --no-defaults --protocol=socket --socket="$MYSQL_SOCK" -u root "$@"; }
if ! daemon_pid mariadbd >/dev/null; then
    if [[ ! -d $MYSQL_DIR/mysql ]]; then
        log "initialising MariaDB datadir $MYSQL_DIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
            --auth-root-authentication-method=socket --skip-test-db \
            > "$LOG_DIR/mariadb-install-db.log" 2>&1 ||
            fail "mariadb-install-db failed" "$LOG_DIR/mariadb-install-db.log"
    fi
    rm -f "$MYSQL_SOCK" "$MYSQL_SOCK.lock"
    log "starting MariaDB on 127.0.0.1:$DB_PORT"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
        --socket="$MYSQL_SOCK" --pid-file="${PIDFILE[mariadbd]}" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --skip-name-resolve --log-error="${LOGFILE[mariadbd]}" \
        --skip-log-bin --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
        --innodb-lock-wait-timeout=900 --max-connections=50 --performance-schema=OFF \
        < /dev/null >> "$LOG_DIR/mariadb.out" 2>&1 &
    disown || true
    wait_for 45 mariadbd mysql_cmd -e 'SELECT 1' ||
        fail "MariaDB did not come up" "${LOGFILE[mariadbd]}" "$LOG_DIR/mariadb.out"
fi
# shellcheck disable=SC2119
mysql_cmd <<EOF || fail "could not create the accounting database/user" "${LOGFILE[mariadbd]}"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
EOF

# ---------------------------------------------------------------- slurmdbd
if ! daemon_pid slurmdbd >/dev/null; then
    log "starting slurmdbd"
    setsid /usr/sbin/slurmdbd < /dev/null >> "$LOG_DIR/slurmdbd.out" 2>&1 ||
        fail "slurmdbd failed to start" "${LOGFILE[slurmdbd]}" "$LOG_DIR/slurmdbd.out"
fi
wait_for 45 slurmdbd timeout 10 sacctmgr -n list cluster ||
    fail "slurmdbd does not answer" "${LOGFILE[slurmdbd]}" "$LOG_DIR/slurmdbd.out"
if [[ -z $(timeout 10 sacctmgr -n -P list cluster "$CLUSTER_NAME" format=cluster 2>/dev/null) ]]; then
    log "adding cluster $CLUSTER_NAME to the accounting database"
    timeout 20 sacctmgr -i add cluster "$CLUSTER_NAME" > "$LOG_DIR/sacctmgr.log" 2>&1 ||
        fail "sacctmgr add cluster failed" "$LOG_DIR/sacctmgr.log" "${LOGFILE[slurmdbd]}"
fi

# ---------------------------------------------------------------- fake GPUs
for ((i = 0; i < NODE_GPUS; i++)); do
    dev=/dev/fakegpu$i
    if [[ ! -c $dev ]]; then
        rm -f "$dev"
        # major 1 minor 3 = /dev/null: any access is harmless
        mknod -m 666 "$dev" c 1 3 2>/dev/null || ln -s /dev/null "$dev" ||
            fail "cannot create fake GPU device $dev"
    fi
done

# ---------------------------------------------------------------- network namespaces
if ((NODES > 1)) && ! network_ok; then
    log "setting up $NODES nodes on bridge $BRIDGE ($SUBNET): ${NODE_NAMES[*]}"
    setup_network
    network_ok || fail "the network of the nodes is not as expected after setting it up: $NET_PROBLEM"
fi

# ---------------------------------------------------------------- slurmctld
if ! daemon_pid slurmctld >/dev/null; then
    log "starting slurmctld"
    # -i: ignore errors in state files left by an older run
    setsid /usr/sbin/slurmctld -i < /dev/null >> "$LOG_DIR/slurmctld.out" 2>&1 ||
        fail "slurmctld failed to start" "${LOGFILE[slurmctld]}" "$LOG_DIR/slurmctld.out"
fi
wait_for 45 slurmctld timeout 10 scontrol ping ||
    fail "slurmctld does not answer" "${LOGFILE[slurmctld]}" "$LOG_DIR/slurmctld.out"
ctld_up() { timeout 10 scontrol ping 2>/dev/null | grep 'is UP' >/dev/null; }
wait_for 45 slurmctld ctld_up ||
    fail "slurmctld is not UP" "${LOGFILE[slurmctld]}" "$LOG_DIR/slurmctld.out"

# ---------------------------------------------------------------- slurmd(s)
# Start node i's slurmd: in the root namespace (single-node), or in the node's network namespace and a
# UTS namespace of its own whose hostname is the node's name (what socket.gethostname() says in a job).
start_slurmd() {
    local i=$1 key node out
    key=$(slurmd_key "$i")
    node=${NODE_NAMES[i]}
    daemon_pid "$key" >/dev/null && return 0
    out=$(slurmd_out "$key")
    if ((NODES == 1)); then
        log "starting slurmd -N $node"
        setsid /usr/sbin/slurmd -N "$node" < /dev/null >> "$out" 2>&1 ||
            fail "slurmd failed to start" "${LOGFILE[$key]}" "$out"
        return 0
    fi
    # whatever still runs in the namespace is a leftover of ours (a killed slurmd, its steps): clear it
    local left
    left=$(netns_pids "$node")
    if [[ -n $left ]]; then
        log "killing processes left in namespace $node: ${left//$'\n'/ }"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        sleep 0.2
    fi
    log "starting slurmd -N $node in namespace $node (${NODE_ADDRS[i]})"
    # nsenter, not `ip netns exec`: that one remounts /sys, hiding /sys/fs/cgroup, and slurmd needs it
    setsid nsenter --net="/run/netns/$node" -- unshare --uts -- /bin/sh -c 'hostname "$1" && exec /usr/sbin/slurmd -N "$1"' \
        sh "$node" < /dev/null >> "$out" 2>&1 || fail "slurmd of $node failed to start" "${LOGFILE[$key]}" "$out"
}
for ((i = 0; i < NODES; i++)); do start_slurmd "$i"; done

t_slurmd=$(date +%s)
deadline=$((t_slurmd + 45))
until nodes_ready; do
    states=$(node_states || true)
    for ((i = 0; i < NODES; i++)); do
        key=$(slurmd_key "$i")
        n=${NODE_NAMES[i]}
        if (($(date +%s) >= t_slurmd + 5)) && ! daemon_pid "$key" >/dev/null; then
            fail "slurmd of $n is not running (it exited or never wrote ${PIDFILE[$key]})" \
                "${LOGFILE[$key]}" "$(slurmd_out "$key")"
        fi
        s=$(state_of "$n" "$states")
        # down/drained from an earlier crash or an unclean stop: put it back
        if [[ $s == down* || $s == drain* || $s == *'*' ]] && daemon_pid "$key" >/dev/null; then
            timeout 10 scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
        fi
    done
    if (($(date +%s) >= deadline)); then
        timeout 10 sinfo -N -l >&2 || true
        fail "not every node is idle (states: ${states//$'\n'/, })" \
            "${LOGFILE[$(slurmd_key 0)]}" "${LOGFILE[slurmctld]}"
    fi
    sleep 0.3
done

# ---------------------------------------------------------------- accounting answers
wait_for 45 sacct sacct_works ||
    fail "sacct does not answer" "${LOGFILE[slurmdbd]}" "${LOGFILE[slurmctld]}"

summary
