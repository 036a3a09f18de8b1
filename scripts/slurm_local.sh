#!/usr/bin/env bash
# A throw-away two-node Slurm cluster on this machine, for the slurm test (tests/test_slurm.py)
# and for trying `snakemake --profile slurm` by hand (docs/cluster.md).
#
#   scripts/slurm_local.sh start DIR [--accounting]   # DIR: a new directory (state, logs, pids)
#   scripts/slurm_local.sh stop DIR                   # stops exactly what `start DIR` started
#
# Two slurmd on this host are the nodes n1 and n2 (SlurmdParameters=config_overrides, one port
# each), partition `debug`; --accounting adds slurmdbd on a MariaDB under DIR, so `sacct` works.
# Needs root (slurmd starts jobs as their user).  Missing Debian packages are installed with
# apt-get when root and a registry answer.
# Exit status of start: 0 up (every node idle), 3 cannot run here (why on stderr: not root,
# packages missing and not installable, another slurm.conf in /etc/slurm), 1 failed (what it
# had started is stopped again).
#
# Two system files are changed while the cluster runs and restored by `stop`:
# /etc/slurm/slurm.conf (the job step of snakemake-executor-plugin-slurm-jobstep strips
# SLURM_CONF, so srun / scontrol inside a job read the default path) and one line in
# /etc/hosts (n1 n2 -> this host's address, so the torchrun rendezvous host `n1` resolves).
set -uo pipefail

MARK="# pgopd scripts/slurm_local.sh"
CONF=/etc/slurm/slurm.conf
MYSQL_SOCK=/run/mysqld/mysqld.sock

die() { echo "slurm_local.sh: $2" >&2; exit "$1"; }
log() { echo "slurm_local.sh: $*" >&2; }

# ----------------------------------------------------------------------------- packages
install_missing() {  # $1: 1 with accounting
    local need=(slurmctld slurmd sinfo srun munged) pkgs=(slurmctld slurmd slurm-client munge)
    if [ "$1" = 1 ]; then need+=(slurmdbd mariadbd mariadb-install-db); pkgs+=(slurmdbd mariadb-server); fi
    local missing=()
    for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    [ ${#missing[@]} = 0 ] && return 0
    command -v apt-get >/dev/null || die 3 "missing ${missing[*]} and no apt-get to install them"
    log "installing ${pkgs[*]} (missing: ${missing[*]})"
    # policy-rc.d-less machines would start the packaged services: ours run from DIR instead
    if ! { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${pkgs[@]}" >/dev/null; }; then
        die 3 "missing ${missing[*]}; 'apt-get install ${pkgs[*]}' failed (no package registry?)"
    fi
}

# ----------------------------------------------------------------------------- helpers
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

any_alive() {  # $1: a pids file
    local _n p
    while read -r _n p; do alive "$p" && return 0; done <"$1"
    return 1
}

wait_for() {  # $1 seconds, $2 what, rest: command that succeeds when ready
    local t=$1 what=$2; shift 2
    local name pid
    for _ in $(seq $((t * 4))); do
        "$@" >/dev/null 2>&1 && return 0
        while read -r name pid; do  # a daemon that died will not come up: say which, at once
            alive "$pid" || { log "$name exited; see $DIR/log/$name.out and $DIR/log/"; return 1; }
        done <"$DIR/pids"
        sleep 0.25
    done
    log "$what not ready after ${t}s"; return 1
}

launch() {  # $1 name; rest: command (in the foreground mode of the daemon); records its pid
    local name=$1; shift
    setsid "$@" >"$DIR/log/$name.out" 2>&1 </dev/null &
    echo "$name $!" >>"$DIR/pids"
}

nodes_idle() { [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u | grep -c ' idle$')" = 2 ]; }

write_conf() {  # $1: 1 with accounting
    cat >"$DIR/slurm.conf" <<EOF
$MARK for $DIR
ClusterName=pgopd
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
# SIGTERM -> SIGKILL: time for the train job to write its checkpoint (scancel, time limit)
KillWait=20
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=2 RealMemory=10000
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=2 RealMemory=10000
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$1" = 1 ]; then
        cat >>"$DIR/slurm.conf" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
EOF
        (umask 077; cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
        )
    fi
}

# ----------------------------------------------------------------------------- start
start() {
    local acct=0
    [ "${1:-}" = --accounting ] && acct=1
    [ "$(id -u)" = 0 ] || die 3 "needs root (slurmd starts each job as its user); running as $(id -un)"
    install_missing "$acct"
    if [ -e "$CONF" ]; then
        local owner
        owner=$(head -n 1 "$CONF")
        case "$owner" in
            "$MARK for "*) other=${owner#"$MARK for "}
                if [ -f "$other/pids" ] && any_alive "$other/pids"; then
                    die 3 "another local cluster runs (from $other): scripts/slurm_local.sh stop $other"
                fi ;;
            *) die 3 "$CONF exists and was not written by this script (a real cluster?); not touching it" ;;
        esac
    fi
    [ -e "$DIR/pids" ] && die 1 "$DIR was used before: give a new directory"
    if [ "$acct" = 1 ] && mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; then
        die 3 "a MariaDB already answers on $MYSQL_SOCK (slurmdbd would use it); stop it or run without --accounting"
    fi
    mkdir -p "$DIR"/{log,state,spool} || die 1 "cannot create $DIR"
    chmod 755 "$DIR"  # MariaDB (user mysql) writes under it
    : >"$DIR/pids"
    trap 'log "start failed; stopping what it started (logs: $DIR/log)"; stop; exit 1' ERR
    set -E

    write_conf "$acct"
    cp "$DIR/slurm.conf" "$CONF"
    echo conf >>"$DIR/undo"
    local addr
    addr=$(getent hosts "$(hostname)" | awk '{print $1; exit}')
    addr=${addr:-127.0.0.1}
    grep -v "$MARK" /etc/hosts >"$DIR/hosts.new"
    echo "$addr n1 n2 $MARK" >>"$DIR/hosts.new"
    cat "$DIR/hosts.new" >/etc/hosts   # in place: /etc/hosts is often a bind mount
    echo hosts >>"$DIR/undo"

    # munge: reuse a running munged (e.g. the system's), else start one
    if ! (munge -n </dev/null | unmunge) >/dev/null 2>&1; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        launch munged setpriv --reuid=munge --regid=munge --clear-groups /usr/sbin/munged -F
        wait_for 15 munged sh -c 'munge -n </dev/null | unmunge'
    fi

    if [ "$acct" = 1 ]; then
        mkdir -p /run/mysqld "$DIR/mysql" && chown mysql:mysql /run/mysqld "$DIR/mysql"
        mariadb-install-db --user=mysql --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
            --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1
        launch mariadbd mariadbd --user=mysql --datadir="$DIR/mysql" --socket="$MYSQL_SOCK" \
            --skip-networking --pid-file="$DIR/mysql/mariadb.pid" --log-error="$DIR/log/mariadb.err"
        wait_for 60 MariaDB mariadb-admin --socket="$MYSQL_SOCK" ping
        # slurmdbd has no -f: it reads slurmdbd.conf beside $SLURM_CONF
        launch slurmdbd env SLURM_CONF="$DIR/slurm.conf" slurmdbd -D
        wait_for 60 slurmdbd sacctmgr -n show cluster
    fi
    launch slurmctld slurmctld -D -f "$CONF"
    wait_for 30 slurmctld scontrol ping
    launch slurmd-n1 slurmd -D -f "$CONF" -N n1
    launch slurmd-n2 slurmd -D -f "$CONF" -N n2
    wait_for 60 "both nodes idle (sinfo)" nodes_idle
    [ "$acct" = 0 ] || wait_for 60 "sacct" sacct -n -X
    trap - ERR
    log "up: $(sinfo -h -N -o '%N:%t' | sort -u | tr '\n' ' ')(pids: $DIR/pids)"
}

# ----------------------------------------------------------------------------- stop
stop() {
    trap - ERR
    [ -f "$DIR/pids" ] || { log "nothing started in $DIR"; return 0; }
    if grep -q '^slurmctld ' "$DIR/pids" && scontrol ping >/dev/null 2>&1; then
        # jobs first: their processes (slurmstepd and the job's own) end with them
        scancel --full $(squeue -h -o %i 2>/dev/null) >/dev/null 2>&1 || true
        for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    local name pid
    tac "$DIR/pids" | while read -r name pid; do
        alive "$pid" || continue
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 80); do alive "$pid" || break; sleep 0.25; done
        if alive "$pid"; then log "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
    done
    if grep -qx conf "$DIR/undo" 2>/dev/null && head -n 1 "$CONF" 2>/dev/null | grep -qx "$MARK for $DIR"; then
        rm -f "$CONF"
    fi
    if grep -qx hosts "$DIR/undo" 2>/dev/null; then
        grep -v "$MARK" /etc/hosts >"$DIR/hosts.old" && cat "$DIR/hosts.old" >/etc/hosts
    fi
    rm -f "$DIR/undo"
    rm -rf "$DIR/mysql"  # the throw-away accounting database (~180 MB); logs stay in $DIR/log
    local left
    left=$(while read -r name pid; do alive "$pid" && echo "$name:$pid"; done <"$DIR/pids")
    [ -z "$left" ] || { log "still running: $left"; return 1; }
    log "stopped: $(awk '{printf "%s:%s ", $1, $2}' "$DIR/pids")"
}

cmd=${1:-}
DIR=${2:-}
[ -n "$DIR" ] || die 2 "usage: $0 start DIR [--accounting] | stop DIR"
DIR=$(realpath -m "$DIR")
case "$cmd" in
    start) start "${3:-}" ;;
    stop) stop ;;
    *) die 2 "usage: $0 start DIR [--accounting] | stop DIR" ;;
esac
