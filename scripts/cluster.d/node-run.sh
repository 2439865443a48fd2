#!/usr/bin/env bash
# One node of the local cluster: run by nodes.sh (spawn_node) as
#
#   nsenter --net=/run/netns/<netns> unshare --mount --uts -- node-run.sh NODE_DIR
#
# so it starts in the node's network namespace and fresh mount and UTS
# namespaces of its own. It makes that mount namespace the node's file
# system (per-node directories over the paths kubelet, containerd, the CNI
# plugin and Margay's DaemonSet use, a fresh bpffs), then starts containerd,
# imports the images, starts kubelet, and waits: containerd and kubelet share
# this mount namespace. NODE_DIR/node.env (written by nodes.sh) names the
# rest. Not sourced by scripts/cluster.
set -euo pipefail

NODE_DIR=$1
# shellcheck source=/dev/null
. "$NODE_DIR/node.env" # NODE CGROUP_ROOT LOGS PIDS K8S_BIN IMAGES NODE_IP KUBE_PROXY
# shellcheck source=/dev/null
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh" # pid_record

say() { echo "node[$NODE]: $*"; }

# Everything below stays in this mount namespace.
mount --make-rprivate /
hostname "$NODE"

# A sysfs of the node's network namespace (/sys/class/net shows its links),
# keeping the machine's cgroup hierarchies under it.
mkdir -p "$NODE_DIR/mnt/cgroup"
mount --rbind /sys/fs/cgroup "$NODE_DIR/mnt/cgroup"
# The machine's /sys tree goes (from this namespace only): shadowed mounts
# left under the new one would confuse containerd's mountinfo lookups (its
# check that /sys/fs/bpf is a shared mount finds the machine's bpffs).
umount -l /sys
mount -t sysfs sysfs /sys
mount --rbind "$NODE_DIR/mnt/cgroup" /sys/fs/cgroup
umount -l "$NODE_DIR/mnt/cgroup"
# A bpffs of its own (every mount is a new instance), shared within the node
# so the DaemonSet's Bidirectional mount of it is accepted.
mount -t bpf bpf /sys/fs/bpf
mount --make-shared /sys/fs/bpf

# The node's own directories over the machine's. The targets are made on
# the machine's file system when missing (empty directories, left there).
for pair in \
    cni-bin:/opt/cni/bin cni-conf:/etc/cni/net.d cni-lib:/var/lib/cni \
    kubelet:/var/lib/kubelet run-containerd:/run/containerd \
    containerd:/var/lib/containerd run-margay:/run/margay \
    log-pods:/var/log/pods log-containers:/var/log/containers \
    netns:/run/netns; do
    src=$NODE_DIR/fs/${pair%%:*} dst=${pair#*:}
    mkdir -p "$src" "$dst"
    mount --bind "$src" "$dst"
done

# The node's cgroup v2 directory where margay-agent links the programs that
# balance host-networked clients (MARGAY_CGROUP_V2's default path), as a
# node's own cgroup v2 root would be on a machine of its own.
unified=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
if [[ -n $unified && -d $unified/$CGROUP_ROOT ]]; then
    mkdir -p /run/margay/cgroup2
    mount --bind "$unified/$CGROUP_ROOT" /run/margay/cgroup2
fi

# This script, containerd, its shims and kubelet live in the node's cgroup
# (`down` finds every process of the node there), beside kubelet's kubepods.
for h in /sys/fs/cgroup/*/; do
    [[ -f $h$CGROUP_ROOT/node/cgroup.procs ]] || continue
    echo $$ >"$h$CGROUP_ROOT/node/cgroup.procs"
done

# supervise NAME CMD... : runs CMD (output to NAME's log) and starts it again
# a second after it exits, as a node's init system does: a test restarts
# containerd or kubelet by killing it. The pid file names the current one.
# While NODE_DIR/NAME.held exists it is not started (`scripts/cluster
# kube-proxy off`, a disabled unit).
supervise() {
    local name=$1 rc
    shift
    while :; do
        while [[ -e $NODE_DIR/$name.held ]]; do sleep 0.5; done
        "$@" >>"$LOGS/$name.log" 2>&1 &
        pid_record $! "$name"
        rc=0
        wait $! || rc=$?
        say "$name exited (status $rc); starting it again in 1 s"
        sleep 1
    done
}

supervise "$NODE-containerd" containerd --config "$NODE_DIR/containerd.toml" &
sock=/run/containerd/containerd.sock
for ((i = 0; i < 150; i++)); do
    ctr -a "$sock" version >/dev/null 2>&1 && break
    sleep 0.2
done
ctr -a "$sock" version >/dev/null 2>&1 ||
    { say "containerd does not answer on $sock (log: $LOGS/$NODE-containerd.log)"; exit 1; }
# Once: the images stay in containerd's store across its restarts.
for img in $IMAGES; do
    ctr -a "$sock" -n k8s.io images import "$img" >/dev/null ||
        { say "importing $img failed"; exit 1; }
done
say "containerd up, images imported"

supervise "$NODE-kubelet" "$K8S_BIN/kubelet" \
    --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --hostname-override="$NODE" \
    --node-ip="$NODE_IP" &
say "kubelet started"
if [[ $KUBE_PROXY != none ]]; then
    supervise "$NODE-kube-proxy" "$K8S_BIN/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml" &
    say "kube-proxy ($KUBE_PROXY) started"
fi
wait
