# Names, paths and process helpers shared by every part of scripts/cluster.
# Sourced by scripts/cluster, never run on its own.
#
# Every object a cluster makes on the machine carries its prefix
# `mgc-<name>` and is found again by its exact name, never by a pattern
# another cluster could match: so `down` can run from any state, and never
# touches what is not its own.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
K8S_BIN=$ROOT/target/k8s/bin
KUBECTL=$K8S_BIN/kubectl
CLUSTERS_DIR=$ROOT/target/cluster

# The default cluster's state lives in target/cluster/ itself (so its env
# file is target/cluster/env) and named clusters' in subdirectories of it:
# these are the default cluster's entries, and no named cluster may use them.
DEFAULT_STATE_ENTRIES=(certs logs pids data nodes lan env admin.kubeconfig .lock)

# The one machine-wide lock: held while a cluster picks its LAN subnet and
# claims it on the host, so two `up`s never pick the same one.
ALLOC_LOCK=/run/lock/margay-cluster.lock

say() { echo "cluster[$CLUSTER_NAME]: $*"; }
err() { echo "cluster[${CLUSTER_NAME:-?}]: $*" >&2; }
die() { err "$@"; exit 1; }

# Sets every name and path of the cluster named by $MARGAY_CLUSTER.
cluster_init() {
    CLUSTER_NAME=${MARGAY_CLUSTER:-default}
    # A DNS label, so it fits namespace names, file names and a regex as is.
    [[ $CLUSTER_NAME =~ ^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$ ]] ||
        die "MARGAY_CLUSTER must be lower-case letters, digits and '-' (at most 40), not '$CLUSTER_NAME'"
    local e
    for e in "${DEFAULT_STATE_ENTRIES[@]}"; do
        [[ $CLUSTER_NAME != "$e" ]] || die "'$e' names a file of the default cluster: pick another MARGAY_CLUSTER"
    done

    if [[ $CLUSTER_NAME == default ]]; then STATE=$CLUSTERS_DIR; else STATE=$CLUSTERS_DIR/$CLUSTER_NAME; fi
    CERTS=$STATE/certs
    LOGS=$STATE/logs
    PIDS=$STATE/pids
    DATA=$STATE/data
    NODES_DIR=$STATE/nodes
    LAN_FILE=$STATE/lan
    ENV_FILE=$STATE/env
    ADMIN_KUBECONFIG=$STATE/admin.kubeconfig

    PREFIX=mgc-$CLUSTER_NAME
    LAN_NETNS=$PREFIX-lan
    CONTROL_NETNS=$PREFIX-cp
    # The one link in the host's namespace. Link names have at most 15
    # characters: a long cluster name is replaced by a digest of it.
    if ((${#PREFIX} <= 15)); then
        HOST_LINK=$PREFIX
    else
        HOST_LINK=mgc-$(printf %s "$CLUSTER_NAME" | sha256sum | cut -c1-11)
    fi
}

# Prints the cluster's network namespaces that exist: the LAN, the control
# plane, and (later) nodes `<prefix>-n<i>` and the external client `<prefix>-ext`.
cluster_netns() {
    ip netns list 2>/dev/null | awk -v re="^$PREFIX-(lan|cp|ext|n[0-9]+)\$" '$1 ~ re { print $1 }'
}

# try CMD... : for teardown steps: a failure is reported and remembered
# (TEARDOWN_FAILED), and the rest of `down` still runs.
TEARDOWN_FAILED=0
try() { "$@" || { err "failed: $*"; TEARDOWN_FAILED=1; }; }

netns_exists() { [[ -e /run/netns/$1 ]]; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# Serialises `up` and `down` of one cluster: a second `up` would otherwise
# take the first one's half-made cluster for remnants and remove it. The lock
# is a file in the state dir, which `down` deletes while holding it: a waiter
# then finds that its file is no longer the one there, and locks anew. Every
# short-lived child inherits the lock, so an `up` killed midway holds it
# until its last command is done; the daemons do not (spawn).
cluster_lock() {
    local fd
    while :; do
        mkdir -p "$STATE"
        exec {fd}>>"$STATE/.lock"
        flock -w 300 "$fd" || die "$STATE/.lock: still locked after 300 s (another up or down?)"
        [[ $(stat -L -c %d:%i "/dev/fd/$fd") == "$(stat -c %d:%i "$STATE/.lock" 2>/dev/null)" ]] && break
        exec {fd}>&-
    done
    CLUSTER_LOCK_FD=$fd
}

# --- processes ---------------------------------------------------------------
# A pid file holds "<pid> <start time>": the start time (in clock ticks since
# boot) tells our process from a later one that got the same pid.

pid_start() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }            # the command name may hold spaces: skip past it
    # shellcheck disable=SC2086
    set -- $stat                 # now $1 is field 3 (state), $20 field 22 (starttime)
    [[ $1 != Z ]] || return 1    # a zombie is as good as gone
    echo "${20}"
}

pid_alive() { pid_start "$1" >/dev/null; }

# pid_record PID NAME : records PID (with its start time, so a reused pid is
# not mistaken for it) as component NAME's. Written aside and renamed: a
# reader such as `up`'s liveness check must never see the file half written,
# or it takes a running component for a dead one.
pid_record() {
    echo "$1 $(pid_start "$1")" >"$PIDS/$2.pid.new" && mv -f "$PIDS/$2.pid.new" "$PIDS/$2.pid"
}

# Prints the pid recorded for component $1 if that very process still runs.
component_pid() {
    local file=$PIDS/$1.pid pid start
    [[ -f $file ]] || return 1
    read -r pid start <"$file" || return 1
    [[ -n $pid && $(pid_start "$pid" 2>/dev/null) == "$start" ]] || return 1
    echo "$pid"
}

# spawn NAME NETNS CMD... : runs CMD in network namespace NETNS, detached
# from this script (own session, stdin closed, output to logs/NAME.log, the
# cluster lock not inherited) so it outlives it, and records its pid. The
# subshell, setsid and `ip netns exec` all exec rather than fork here, so $!
# is the component's own pid.
spawn() {
    local name=$1 netns=$2
    shift 2
    (
        if [[ -n ${CLUSTER_LOCK_FD:-} ]]; then exec {CLUSTER_LOCK_FD}>&-; fi
        exec setsid ip netns exec "$netns" "$@" </dev/null >>"$LOGS/$name.log" 2>&1
    ) &
    pid_record $! "$name"
}

# stop_pids PID... : TERM, up to 20 s for a clean exit, then KILL.
stop_pids() {
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    local deadline=$((SECONDS + 20)) p alive
    while :; do
        alive=()
        for p in "$@"; do pid_alive "$p" && alive+=("$p"); done
        ((${#alive[@]})) || return 0
        ((SECONDS < deadline)) || break
        sleep 0.1
    done
    err "killing what did not stop on TERM: ${alive[*]}"
    kill -KILL "${alive[@]}" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    while ((SECONDS < deadline)); do
        alive=()
        for p in "$@"; do pid_alive "$p" && alive+=("$p"); done
        ((${#alive[@]})) || return 0
        sleep 0.1
    done
    err "still running after KILL: ${alive[*]}"
    TEARDOWN_FAILED=1
}

# Stops every process of the cluster: those its pid files name (if still the
# same processes), and any process inside one of its namespaces, which covers
# a component whose pid was never written (an `up` killed in between) and,
# later, the nodes' daemons.
stop_cluster_processes() {
    local pids=() f c pid ns
    if [[ -d $PIDS ]]; then
        for f in "$PIDS"/*.pid; do
            [[ -e $f ]] || continue
            c=$(basename "$f" .pid)
            pid=$(component_pid "$c") && pids+=("$pid")
        done
    fi
    for ns in $(cluster_netns); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do pids+=("$pid"); done
    done
    # shellcheck disable=SC2207
    pids=($(printf '%s\n' "${pids[@]}" | sort -un))
    ((${#pids[@]})) || return 0
    say "stopping ${#pids[@]} processes"
    # etcd last: an apiserver that loses etcd before it stops was seen to
    # sit out the whole TERM grace below, rather than the usual second.
    local clients=() stores=()
    for pid in "${pids[@]}"; do
        if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$K8S_BIN/etcd" ]]; then stores+=("$pid"); else clients+=("$pid"); fi
    done
    stop_pids "${clients[@]}"
    stop_pids "${stores[@]}"
}

# wait_until SECONDS WHAT CMD... : runs CMD every 0.2 s until it succeeds.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || { err "gave up after ${timeout}s waiting for $what"; return 1; }
        sleep 0.2
    done
}

# The admin's kubectl against this cluster, failing fast when it is down.
kc() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" --request-timeout=3s "$@"; }
