#!/usr/bin/env bash
# Install the Debian packages for the single-host test SLURM cluster.
# Idempotent: a quick no-op when everything is already installed.
set -euo pipefail

PKGS=(procps slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server mariadb-client)

log() { echo "[testcluster/install] $*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "[testcluster/install] ERROR: must run as root (apt-get install)" >&2
    exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    log "already installed: ${PKGS[*]}"
    exit 0
fi

log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep package maintainer scripts from starting daemons (there is no systemd here anyway;
# we start everything ourselves from start.sh).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi; }
trap cleanup EXIT

# apt-get update only when there are no package lists yet, or the install fails for stale lists.
if ! compgen -G "/var/lib/apt/lists/*_Packages*" > /dev/null; then
    log "apt-get update (no package lists yet)"
    apt-get update -q
fi
apt_install() {
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
}
if ! apt_install; then
    log "install failed; running apt-get update and retrying"
    apt-get update -q
    apt_install
fi
log "done"
