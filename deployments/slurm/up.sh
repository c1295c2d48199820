#!/usr/bin/env bash
# Start a single-node SLURM cluster with accounting on this machine, installing it first if needed.
#
# munged, a private MariaDB (own data directory, socket and port), slurmdbd, slurmctld and slurmd, all
# without systemd, with their configuration, data and logs under $LLC_SLURM_STATE. Idempotent: a
# cluster already up returns in well under 2 s; a half-up one (a daemon died, a stale pid file) is
# completed. Run as root. Stop it with down.sh. Environment (defaults in brackets):
#   LLC_SLURM_STATE    [/var/lib/llc-slurm]  configs, database, controller state, logs
#   LLC_SLURM_CPUS     [max(8, cores)]       CPUs the node offers (more than the cores: small jobs share)
#   LLC_SLURM_MEM_MB   [total RAM - 1 GiB]   memory the node offers to jobs
#   LLC_SLURM_DB_PORT  [43306]               port of the private MariaDB (127.0.0.1 only)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${LLC_SLURM_STATE:-/var/lib/llc-slurm}
DB_PORT=${LLC_SLURM_DB_PORT:-43306}
CORES=$(nproc)
CPUS=${LLC_SLURM_CPUS:-$((CORES > 8 ? CORES : 8))}
MEM_MB=${LLC_SLURM_MEM_MB:-$(($(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) - 1024))}
HOST=$(hostname -s)
# Names the tests and docs rely on.
CLUSTER=llc
NODE=llc
PARTITION=debug
ACCOUNT=llc
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)

ETC=$STATE/etc DB=$STATE/db RUN=$STATE/run LOG=$STATE/log
SOCKET=$DB/mysqld.sock

say() { echo "slurm-up: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# A daemon counts as running when its pid file names a live (not zombie) process with the expected name.
running() {
    local pidfile=$1 name=$2 pid stat
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != [ZX] ]]
}

# wait_for SECONDS WHAT LOG COMMAND...: poll COMMAND every 0.1 s; on time-out show LOG's tail and fail.
wait_for() {
    local seconds=$1 what=$2 log=$3
    shift 3
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            [[ -f $log ]] && tail -n 20 "$log" >&2
            die "$what not ready after ${seconds}s (log: $log)"
        fi
        sleep 0.1
    done
}

install_packages() {
    local missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return
    say "installing ${missing[*]}"
    # Keep the packages' own services (a system MariaDB on 3306, ...) from starting: this script
    # starts what it needs itself.
    local policy=/usr/sbin/policy-rc.d added=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -n $added ]] && rm -f "$policy"
    return 0
}

slurm_conf() {
    cat <<EOF
# Written by deployments/slurm/up.sh: the llc single-node development cluster. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# A requeued job (time limit, preemption) may start again after 10 s instead of the default 120 s.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups here: processes are tracked through /proc and tasks are not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Schedule a submitted job at once (a trivial job's round trip drops from ~3 s to ~1 s), and a
# requeued one as soon as it may start again (the main scheduler runs every 2 s, not every 60 s).
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2
# Without cgroups, memory limits are enforced by polling each job's RSS every second.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# The node offers the CPUs configured below even where the machine has fewer cores.
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=300
MaxArraySize=10001
DefMemPerCPU=1024
FirstJobId=$(first_job_id)
NodeName=$NODE NodeHostname=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

slurmdbd_conf() {
    cat <<EOF
# Written by deployments/slurm/up.sh. Edits are overwritten.
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$ETC/db.password")
StorageLoc=slurm_acct_db
EOF
}

# Job ids start from the clock when the state is new, so a wiped cluster never hands out old ids again.
first_job_id() {
    [[ -s $ETC/first_job_id ]] || echo $(($(date +%s) % 50000000 + 1000)) >"$ETC/first_job_id"
    cat "$ETC/first_job_id"
}

# write_if_changed FILE OWNER MODE: stdin to FILE when it differs; returns 0 when it wrote.
write_if_changed() {
    local file=$1 owner=$2 mode=$3 tmp
    tmp=$(mktemp "$file.XXXX")
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    chown "$owner" "$tmp" && chmod "$mode" "$tmp" && mv "$tmp" "$file"
}

link_config() {
    local name=$1 link=/etc/slurm/$1
    mkdir -p /etc/slurm
    if [[ -e $link && ! -L $link ]]; then
        die "$link exists and is not this script's: refusing to replace a real cluster's configuration"
    fi
    [[ "$(readlink "$link" 2>/dev/null)" == "$ETC/$name" ]] || ln -sfn "$ETC/$name" "$link"
}

prepare_state() {
    install -d -m 755 "$STATE" "$ETC"
    install -d -m 755 -o slurm -g slurm "$RUN" "$LOG"
    install -d -m 700 -o slurm -g slurm "$STATE/ctld"
    install -d -m 755 "$STATE/spool"
    install -d -m 700 -o mysql -g mysql "$DB"
    [[ -s $ETC/db.password ]] || (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/db.password")
    slurm_conf | write_if_changed "$ETC/slurm.conf" root:root 644 && SLURM_CONF_CHANGED=1
    slurmdbd_conf | write_if_changed "$ETC/slurmdbd.conf" slurm:slurm 600 && DBD_CONF_CHANGED=1
    link_config slurm.conf
    link_config slurmdbd.conf
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    say "starting munged"
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create --keyfile /etc/munge/munge.key
    install -d -m 755 -o munge -g munge /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 munged /var/log/munge/munged.log bash -c 'munge -n | unmunge'
}

db() { mariadb --no-defaults --protocol=socket -S "$SOCKET" -u root "$@"; }

start_mariadb() {
    if running "$DB/mysqld.pid" mariadbd && db -e 'select 1' >/dev/null 2>&1; then return; fi
    if [[ ! -d $DB/mysql ]]; then
        say "creating the accounting database in $DB"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed, see $LOG/mariadb-install.log"
    fi
    say "starting mariadbd on 127.0.0.1:$DB_PORT"
    rm -f "$DB/mysqld.pid" "$SOCKET"
    setsid mariadbd --no-defaults --user=mysql --datadir="$DB" --socket="$SOCKET" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --pid-file="$DB/mysqld.pid" --log-error="$DB/mariadb.err" \
        --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 &
    wait_for 30 mariadbd "$DB/mariadb.err" db -e 'select 1'
    local password
    password=$(<"$ETC/db.password")
    db <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

# stop_if_changed CHANGED PIDFILE NAME: stop a running daemon whose configuration file was rewritten.
stop_if_changed() {
    local changed=$1 pidfile=$2 name=$3 pid
    if [[ -n $changed ]] && running "$pidfile" "$name"; then
        say "configuration changed: stopping $name"
        pid=$(<"$pidfile")
        kill "$pid"
        wait_for 30 "$name to stop" /dev/null bash -c "! kill -0 $pid"
    fi
}

start_slurmdbd() {
    stop_if_changed "${DBD_CONF_CHANGED:-}" "$RUN/slurmdbd.pid" slurmdbd
    if ! running "$RUN/slurmdbd.pid" slurmdbd; then
        say "starting slurmdbd"
        rm -f "$RUN/slurmdbd.pid"
        slurmdbd
        wait_for 10 "slurmdbd (started)" "$LOG/slurmdbd.log" running "$RUN/slurmdbd.pid" slurmdbd
    fi
    wait_for 30 slurmdbd "$LOG/slurmdbd.log" sacctmgr -n list cluster
}

# The cluster, an account and its users; AccountingStorageEnforce=associations rejects other users.
register_accounts() {
    local users=(root) user
    [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] && users+=("$SUDO_USER")
    [[ -n "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster)" ]] ||
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    [[ -n "$(sacctmgr -n -P list account "$ACCOUNT" format=account)" ]] ||
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="llc sweeps" Organization=llc >/dev/null
    for user in "${users[@]}"; do
        [[ -n "$(sacctmgr -n -P list assoc user="$user" account="$ACCOUNT" format=user)" ]] ||
            sacctmgr -i add user "$user" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
    done
}

start_slurmctld() {
    stop_if_changed "${SLURM_CONF_CHANGED:-}" "$RUN/slurmctld.pid" slurmctld
    if ! running "$RUN/slurmctld.pid" slurmctld; then
        say "starting slurmctld"
        rm -f "$RUN/slurmctld.pid"
        slurmctld
        wait_for 10 "slurmctld (started)" "$LOG/slurmctld.log" running "$RUN/slurmctld.pid" slurmctld
    fi
    wait_for 30 slurmctld "$LOG/slurmctld.log" bash -c 'scontrol ping | grep -q UP'
}

start_slurmd() {
    stop_if_changed "${SLURM_CONF_CHANGED:-}" "$RUN/slurmd.pid" slurmd
    if ! running "$RUN/slurmd.pid" slurmd; then
        say "starting slurmd -N $NODE"
        rm -f "$RUN/slurmd.pid"
        slurmd -N "$NODE"
        wait_for 10 "slurmd (started)" "$LOG/slurmd.log" running "$RUN/slurmd.pid" slurmd
    fi
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }

node_ready() { [[ "$(node_state)" =~ ^(idle|mix|alloc)$ ]]; }

wait_node_ready() {
    local state
    state=$(node_state)
    # A node left down or drained by an earlier, killed slurmd is put back into service.
    if [[ $state =~ ^(down|drain|drng|fail) ]]; then
        scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
    fi
    wait_for 30 "node $NODE" "$LOG/slurmd.log" node_ready
}

all_up() {
    running /run/munge/munged.pid munged && running "$DB/mysqld.pid" mariadbd &&
        running "$RUN/slurmdbd.pid" slurmdbd && running "$RUN/slurmctld.pid" slurmctld &&
        running "$RUN/slurmd.pid" slurmd && node_ready
}

main() {
    [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts system daemons)"
    if command -v slurmctld >/dev/null && [[ -f $ETC/db.password ]]; then
        prepare_state
        if [[ -z ${SLURM_CONF_CHANGED:-}${DBD_CONF_CHANGED:-} ]] && all_up; then
            say "up (state in $STATE)"
            return
        fi
    fi
    install_packages
    prepare_state
    start_munge
    start_mariadb
    start_slurmdbd
    register_accounts
    start_slurmctld
    start_slurmd
    wait_node_ready
    wait_for 30 sacct "$LOG/slurmdbd.log" sacct -n -X -S now-1minutes
    say "up: partition $PARTITION, node $NODE ($CPUS CPUs, $MEM_MB MB), account $ACCOUNT; state in $STATE"
    say "stop it with $HERE/down.sh"
}

main "$@"
