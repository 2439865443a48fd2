# The nodes and the external client: NOT WRITTEN YET (issue 10, the node
# part). These are the places scripts/cluster already calls; today they
# accept zero nodes only. Sourced by scripts/cluster.
#
# What the node part fills in (see DESIGN.md, "The local cluster"):
#  - nodes_up N: for i in 0..N-1, node `$PREFIX-n$i` (name e.g.
#    "$CLUSTER_NAME-n$i"): `ip netns add $PREFIX-n$i`, `lan_plug $PREFIX-n$i
#    n$i $(node_ip $i)`, a mount and UTS namespace (hostname = node name)
#    with per-node dirs under $NODES_DIR/<node>/ bind-mounted over
#    /opt/cni/bin, /etc/cni/net.d, /var/lib/cni, /var/lib/kubelet,
#    /run/containerd, /run/margay, a fresh bpffs at /sys/fs/bpf; containerd and
#    kubelet started detached with their pids in $PIDS/<node>-containerd.pid
#    and the like ("<pid> <starttime>", see spawn in lib.sh), so status, the
#    no-op check and `down` work unchanged. Note spawn's `ip netns exec` gives
#    every process a mount namespace of its own: containerd and kubelet must
#    share the node's one, so they need a variant of spawn (e.g. enter, with
#    nsenter, the mount and UTS namespaces of a holder process made once per
#    node with `unshare --mount --uts`, itself inside the node's netns);
#    `kubelet_kubeconfig <node> $NODES_DIR/<node>` (certs.sh) for its
#    credentials; kubelet's `cgroupRoot` its own; images imported with
#    `ctr -n k8s.io images import`. Then the external client `$PREFIX-ext` at
#    $(external_ip), `kubectl apply -f deploy/margay.yaml`, and waiting for
#    every node Ready.
#    Keep every file of a node under $NODES_DIR (already one of the state
#    dir's entries that `down` removes; a new top-level entry must be added to
#    DEFAULT_STATE_ENTRIES in lib.sh).
#  - nodes_running: true when every node's daemons run (the no-op check of `up`).
#  - nodes_down: what the process sweep and namespace deletion do not cover:
#    pods' own network namespaces and containers (containerd-shims leave the
#    node's netns: kill them by their cgroup under the node's cgroupRoot, then
#    remove those cgroups), mounts, pins, iptables rules. It must work from any
#    state, like the rest of `down`: read what exists, ignore what doesn't.
#  - nodes_env: NODE_NAME_i, NODE_NETNS_i, NODE_IP_i, EXTERNAL_NETNS,
#    EXTERNAL_IP, POD_CIDR lines for the env file.

# Refuses, before anything is made, a node count this script cannot start.
nodes_validate() {
    (($1 == 0)) || die "--nodes $1: nodes are not implemented yet (only the control plane and the LAN are)"
}

nodes_up() { return 0; }

nodes_running() { return 0; }

# Runs after every process in the cluster's namespaces is stopped; the node
# namespaces ($PREFIX-n<i>, $PREFIX-ext) are deleted after it by the generic
# sweep in scripts/cluster (cluster_netns lists them).
nodes_down() { return 0; }

nodes_env() { return 0; }
