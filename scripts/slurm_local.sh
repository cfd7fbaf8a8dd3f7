#!/usr/bin/env bash
# A real one-machine SLURM cluster from Debian's packages, for robustlab's cluster tests (tests/test_slurm.py)
# and for trying `hydra/launcher=slurm` without a cluster:
#
#   bash scripts/slurm_local.sh start     install slurm-wlm and munge if missing (root), start munged, slurmctld
#                                         and slurmd: one node with this machine's CPUs and memory, partition debug
#   bash scripts/slurm_local.sh status    what sinfo and squeue say
#   bash scripts/slurm_local.sh stop      cancel every job, stop the three daemons, remove the cluster's state
#
# The cluster has no accounting (sacct answers nothing) and no GPUs; proctrack/linuxproc and task/none need no
# cgroups. It writes /etc/slurm/slurm.conf only where none exists or where the one there is its own.
set -euo pipefail

STATE=${ROBUSTLAB_SLURM_STATE:-/var/lib/robustlab-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by robustlab's scripts/slurm_local.sh"

say() { echo "slurm_local: $*"; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null && return 0
    [ "$(id -u)" = 0 ] || { say "slurm-wlm and munge are not installed, and installing them needs root"; exit 3; }
    say "installing slurm-wlm and munge (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null \
        || { say "apt-get install slurm-wlm munge failed"; exit 3; }
}

write_config() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        say "$CONF exists and is not this script's: not touching a real cluster's configuration"; exit 3
    fi
    local node
    node=$(slurmd -C | head -1)   # NodeName=<host> CPUs=... RealMemory=... as slurmd sees this machine
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" "$STATE/log"
    cat > "$CONF" <<EOF
$MARK
ClusterName=robustlab
SlurmctldHost=$(hostname -s)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=300
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    pgrep -x munged >/dev/null && return 0
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    else
        /usr/sbin/munged --force
    fi
}

start() {
    install_packages
    write_config
    start_munge
    pgrep -x slurmctld >/dev/null || slurmctld -c   # -c: a clean start, no jobs from an earlier cluster
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            say "up: $(sinfo -h -o 'partition %P, %D node(s), %c CPUs, %m MB per node')"; return 0
        fi
        sleep 0.5
    done
    say "the node did not come up; $STATE/log says why:"; tail -5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log"
    exit 1
}

stop() {
    command -v scancel >/dev/null && scancel --user="$(id -un)" 2>/dev/null || true
    for daemon in slurmd slurmctld munged; do
        pkill -x "$daemon" 2>/dev/null || true
    done
    for _ in $(seq 40); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || break
        sleep 0.25
    done
    pkill -9 -x 'slurmstepd' 2>/dev/null || true
    rm -rf "$STATE"
    [ -e "$CONF" ] && grep -qF "$MARK" "$CONF" && rm -f "$CONF"
    say "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo; squeue ;;
    *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
