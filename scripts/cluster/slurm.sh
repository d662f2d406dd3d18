#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the cluster tests (`make test-cluster`).
#
#   scripts/cluster/slurm.sh up     # install slurm-wlm and munge where missing, start, wait
#   scripts/cluster/slurm.sh down   # cancel its jobs, stop what `up` started
#   scripts/cluster/slurm.sh env    # the line that points SLURM's commands at it
#
# Everything lives in one folder ($LSMIX_SLURM_DIR, default /var/tmp/lsmix-slurm): the
# config, the controller's state, the daemons' pid files and logs. Nothing is written to
# /etc/slurm, so a machine with a real SLURM keeps its own; the commands find this one
# through SLURM_CONF (`eval "$(scripts/cluster/slurm.sh env)"`). The daemons run as root
# without systemd: munged (unless one already answers), slurmctld and slurmd, with process
# tracking by process group (proctrack/pgid: no cgroups needed inside a container). Both
# commands are idempotent: `up` on a running cluster only waits for its node, `down` on a
# stopped one does nothing. Needs root (apt-get, SlurmUser=root).
set -euo pipefail

STATE="${LSMIX_SLURM_DIR:-/var/tmp/lsmix-slurm}"
CONF="$STATE/slurm.conf"
HOST="$(hostname -s)"
WAIT_S="${LSMIX_SLURM_WAIT_S:-60}"

say() { echo "slurm.sh: $*" >&2; }
die() { say "$*"; exit 1; }

alive() {  # alive PIDFILE: the process it names runs
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pid() {  # stop_pid PIDFILE: SIGTERM, then SIGKILL after 10 s
    alive "$1" || { rm -f "$1"; return 0; }
    local pid; pid="$(cat "$1")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sinfo >/dev/null && return 0
    [[ $EUID -eq 0 ]] || die "slurm-wlm and munge are missing and installing them needs root"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get"
    say "installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi  # one answers
    [[ -s /etc/munge/munge.key ]] || mungekey --create >/dev/null
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 0700 /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged
    cp /run/munge/munged.pid "$STATE/munged.pid"  # ours to stop
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

write_conf() {
    local cpus mem tmp
    cpus="$(nproc)"
    # A modest share of the memory: no job here asks for more, and a node that reports less
    # than its config says would be drained.
    mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 4 ))
    tmp="$(mktemp)"
    cat >"$tmp" <<CONF
# Written by scripts/cluster/slurm.sh: a one-node cluster for the suite's cluster tests.
ClusterName=lsmix
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# A requeued job waits cred_expire + 1 s before it may start again (120 s by default).
AuthInfo=cred_expire=5
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Pending jobs (a requeued one) are looked at every 2 s instead of every 30-60 s.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to scontrol (there is no accounting database for sacct).
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# Seconds between a time limit's SIGTERM and SIGKILL, and the controller's patience.
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
    if [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; return 0; fi
    stop_daemons  # a changed config: start again from it
    mv "$tmp" "$CONF"
    chmod 0644 "$CONF"
}

stop_daemons() {
    stop_pid "$STATE/slurmd.pid"
    stop_pid "$STATE/slurmctld.pid"
}

node_state() {
    SLURM_CONF="$CONF" sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1 | tr -d '*~#!%$@^-'
}

up() {
    [[ $EUID -eq 0 ]] || die "bringing the cluster up needs root (SlurmUser=root)"
    install_packages
    mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/log"
    start_munge
    write_conf
    export SLURM_CONF="$CONF"
    # -c: a fresh controller forgets the jobs of an earlier cluster in this folder.
    alive "$STATE/slurmctld.pid" || slurmctld -c -f "$CONF"
    alive "$STATE/slurmd.pid" || slurmd -f "$CONF"
    local state=""
    for _ in $(seq $(( WAIT_S * 5 ))); do
        state="$(node_state)"
        case "$state" in
            idle|mix|alloc) say "node $HOST is $state (SLURM_CONF=$CONF)"; return 0 ;;
            drain|drng|down) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    say "node $HOST is not idle after ${WAIT_S} s (state: ${state:-none}); the logs:"
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
    exit 1
}

down() {
    if [[ -f "$CONF" ]] && alive "$STATE/slurmctld.pid"; then
        export SLURM_CONF="$CONF"
        # Jobs first: slurmd's steps outlive slurmd, so they are cancelled while it runs.
        local jobs; jobs="$(squeue -h -o %i 2>/dev/null || true)"
        if [[ -n "$jobs" ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 100); do
                [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemons
    stop_pid "$STATE/munged.pid"  # only a munged that `up` started
    rm -rf "$STATE/ctld" "$STATE/d"
    say "stopped (logs kept in $STATE/log)"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
