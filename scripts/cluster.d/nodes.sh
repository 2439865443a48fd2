# The nodes and the external client, then Margay installed on them with
# `kubectl apply -f deploy/margay.yaml`. Sourced by scripts/cluster.
#
# Node i is called "$CLUSTER_NAME-n$i" (its hostname and Node object) and
# lives in network namespace $PREFIX-n$i, plugged into the LAN at
# $(node_ip i) (bridge port n$i), default route via the host, and in a
# dual-stack cluster at $(node_ip6 i) too. Its containerd
# and kubelet run there, in mount and UTS namespaces of their own
# (node-run.sh): per-node directories ($NODES_DIR/<node>/fs/*) over
# /opt/cni/bin, /etc/cni/net.d, /var/lib/cni, /var/lib/kubelet,
# /run/containerd, /var/lib/containerd, /run/margay, /run/netns (pods'
# network namespaces), /var/log/{pods,containers}, a sysfs of the node's
# network namespace and a fresh bpffs at /sys/fs/bpf, so the DaemonSet's
# hostPaths and default bpf_root are that node's own.
#
# cgroups (v1 here) are the machine's: kubelet's cgroupRoot is /$PREFIX-n$i
# in every v1 hierarchy, and node-run.sh, containerd, its shims and kubelet
# sit in /$PREFIX-n$i/node beside kubelet's kubepods: `down` kills every
# process of a node by those cgroups (shims and pods leave the node's
# network namespace) and removes them.
#
# The external client ($PREFIX-ext, at $(external_ip), and $(external_ip6)
# in a dual-stack cluster) is a namespace on the LAN with no Kubernetes in it.

EXTERNAL_NETNS_NAME_SUFFIX=ext
MAX_NODES=3
DATAPLANE=${DATAPLANE:-bpf}
# Upstream kube-proxy on every node: none (Margay's programs, or nothing, do
# Services), iptables or nftables.
KUBE_PROXY=${KUBE_PROXY:-none}
# The cluster's CNI: margay (deploy/margay.yaml's DaemonSet), or ptp, Debian's
# ptp + host-local on the same pool, written to each node (the peer benchmarks
# compare with; nothing of Margay runs then).
CNI=${CNI:-margay}
# How NodePort traffic reaches a backend on another node (Margay's
# bpf_external_service_mode).
EXTERNAL_SERVICE_MODE=${EXTERNAL_SERVICE_MODE:-tunnel}
IMAGES_DIR=$ROOT/target/images
NODE_IMAGES=(pause busybox margay)

node_name() { echo "$CLUSTER_NAME-n$1"; }
node_netns() { echo "$PREFIX-n$1"; }
node_cgroup() { echo "$PREFIX-n$1"; }

# The pod pool, a /20 per cluster from k, the LAN's: 10.160.0.0/20 for k 0
# up to 10.175.240.0/20 for k 255 (room for 64 blocks of /26).
pod_cidr() { echo "10.$((160 + LAN_K / 16)).$(((LAN_K % 16) * 16)).0/20"; }
# A dual-stack cluster's IPv6 pod pool, as unique as pod_cidr.
pod_cidr6() { printf 'fd00:244:%x::/64\n' "$LAN_K"; }
# Margay's pools: the IPv4 pool, and in a dual-stack cluster the IPv6 one.
pod_pools() { if ((DUAL_STACK)); then echo "$(pod_cidr),$(pod_cidr6)"; else pod_cidr; fi; }

# margay-config ConfigMap values set by `up --margay-config KEY=VALUE`.
MARGAY_CONFIG=()
# How many of the nodes (the last ones) sit on the second subnet (lan.sh).
REMOTE_NODES=${REMOTE_NODES:-0}

# Is node I on the second subnet? (Needs NODE_COUNT.)
node_is_remote() { (($1 >= NODE_COUNT - REMOTE_NODES)); }

# node_ip I : the node's address, on its subnet.
node_ip() {
    if node_is_remote "$1"; then echo "$REMOTE_LAN_BASE.$LAN_K.$((10 + $1))"; else echo "$LAN_BASE.$LAN_K.$((10 + $1))"; fi
}

# node_ip6 I : a dual-stack cluster's node's IPv6 address, on its subnet
# (empty in a single-stack one).
node_ip6() {
    ((DUAL_STACK)) || return 0
    if node_is_remote "$1"; then printf '%s::%x\n' "$REMOTE_PREFIX6" $((10 + $1)); else printf '%s::%x\n' "$LAN_PREFIX6" $((10 + $1)); fi
}

# kubelet's --node-ip: the node's address, and in a dual-stack cluster its
# IPv6 one after it (the Node's InternalIPs, whose IPv6 one the other nodes
# route this node's IPv6 pods through).
kubelet_node_ips() {
    local ip6
    ip6=$(node_ip6 "$1")
    echo "$(node_ip "$1")${ip6:+,$ip6}"
}

# Refuses, before anything is made, a node count this script cannot start.
nodes_validate() {
    [[ $1 =~ ^[0-9]+$ ]] && (($1 <= MAX_NODES)) || die "--nodes $1: 0 to $MAX_NODES nodes"
    [[ $REMOTE_NODES =~ ^[0-9]+$ ]] && ((REMOTE_NODES <= $1)) || die "--remote-nodes $REMOTE_NODES: 0 to --nodes ($1)"
    case $DATAPLANE in bpf | linux) ;; *) die "--dataplane $DATAPLANE: bpf or linux" ;; esac
    case $CNI in margay | ptp) ;; *) die "--cni $CNI: margay or ptp" ;; esac
    [[ $CNI != ptp ]] || ((REMOTE_NODES == 0)) || die "--cni ptp: its pods are routed on one subnet only, not with --remote-nodes"
    case $KUBE_PROXY in none | iptables | nftables) ;; *) die "--kube-proxy $KUBE_PROXY: none, iptables or nftables" ;; esac
    case $EXTERNAL_SERVICE_MODE in tunnel | dsr) ;; *) die "--external-service-mode $EXTERNAL_SERVICE_MODE: tunnel or dsr" ;; esac
    local img
    for img in "${NODE_IMAGES[@]}"; do
        [[ -f $IMAGES_DIR/$img.tar ]] || die "$IMAGES_DIR/$img.tar is missing: run scripts/images first"
    done
    command -v containerd >/dev/null && command -v ctr >/dev/null && command -v runc >/dev/null ||
        die "containerd, ctr and runc are needed (apt-get install containerd runc)"
    [[ -x /usr/lib/cni/loopback ]] || die "/usr/lib/cni/loopback is missing (apt-get install containernetworking-plugins)"
}

# The machine's cgroup hierarchies (mount points), v1 and v2.
cgroup_mounts() { awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts; }

# cgroup_make NAME : /NAME and /NAME/node in every hierarchy (cpuset ones
# get their parent's cpus and mems, or nothing can join them). The v2 one
# is where margay-agent links its connect-time programs: the node's
# processes, and only they, are below /NAME.
cgroup_make() {
    local name=$1 h d
    for h in $(cgroup_mounts); do
        for d in "$h/$name" "$h/$name/node"; do
            mkdir -p "$d"
            if [[ -f $d/cpuset.cpus ]]; then
                cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
                cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
            fi
        done
    done
}

# This cluster's node cgroups that exist, "<hierarchy>/<name>" lines: in
# the v1 hierarchies and the v2 one (runc and kubelet make them there too).
node_cgroups() {
    local h d
    for h in $(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts); do
        for d in "$h/$PREFIX"-n*; do
            [[ -d $d && ${d##*/} =~ ^$PREFIX-n[0-9]+$ ]] && echo "$d"
        done
    done
    return 0
}

node_write_configs() {
    local i=$1 node dir ip ips
    node=$(node_name "$i") dir=$NODES_DIR/$(node_name "$i") ip=$(node_ip "$i") ips=$(kubelet_node_ips "$i")
    mkdir -p "$dir/fs/cni-bin"
    kubelet_kubeconfig "$node" "$dir"
    kubelet_serving_cert "$node" "$ips" "$dir"
    cp /usr/lib/cni/loopback "$dir/fs/cni-bin/"

    local images=() img
    for img in "${NODE_IMAGES[@]}"; do images+=("$IMAGES_DIR/$img.tar"); done
    {
        printf 'NODE=%q\n' "$node"
        printf 'NODE_IP=%q\n' "$ips"
        printf 'CGROUP_ROOT=%q\n' "$(node_cgroup "$i")"
        printf 'LOGS=%q\n' "$LOGS"
        printf 'PIDS=%q\n' "$PIDS"
        printf 'K8S_BIN=%q\n' "$K8S_BIN"
        printf 'IMAGES=%q\n' "${images[*]}"
        printf 'KUBE_PROXY=%q\n' "$KUBE_PROXY"
    } >"$dir/node.env"

    # Paths are the node's own through its mount namespace.
    cat >"$dir/containerd.toml" <<'EOF'
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.10"
  # No CAP_SYS_RESOURCE here: without this runc fails with "can't get final
  # child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
EOF

    cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$(node_cgroup "$i")
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
# containerd 1.6 does not protect the pause image from image GC.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The disk and the memory are the machine's, shared by every node and
# whatever else runs there: a node evicting its pods would free nothing
# that matters, and its disk-pressure taint would stop all scheduling
# whenever the machine's disk runs low (as kind, disk signals are off).
evictionHard:
  memory.available: 50Mi
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
  imagefs.inodesFree: "0%"
resolvConf: ""
readOnlyPort: 0
clusterDomain: cluster.local
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $CERTS/ca.crt
authorization:
  mode: Webhook
tlsCertFile: $dir/kubelet-serving.crt
tlsPrivateKeyFile: $dir/kubelet-serving.key
EOF

    [[ $CNI != ptp ]] || ptp_conflist "$i" "$dir"
    [[ $KUBE_PROXY != none ]] || return 0
    cp "$CERTS/kube-proxy.kubeconfig" "$dir/kube-proxy.kubeconfig"
    # Conntrack sizes and timeouts stay as they are (0 leaves them): the
    # table is the machine's, shared with every other node and test.
    cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: $KUBE_PROXY
clientConnection:
  kubeconfig: $dir/kube-proxy.kubeconfig
hostnameOverride: $node
clusterCIDR: $(pod_pools)
healthzBindAddress: $ip:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts on the node's LAN address only, not on pods' gateways.
nodePortAddresses: [primary]
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# ptp_block I : node I's share of the pod pool under ptp + host-local, whose
# IPAM is node-local: a /22 each (MAX_NODES fit in the /20).
ptp_block() {
    local a b c rest
    IFS=. read -r a b c rest <<<"$(pod_cidr)"
    echo "$a.$b.$((c + 4 * $1)).0/22"
}

# ptp_conflist I DIR : Debian's ptp and host-local as node I's CNI, on its
# block of the pool Margay would use.
ptp_conflist() {
    local i=$1 dir=$2 p
    for p in ptp host-local; do cp "/usr/lib/cni/$p" "$dir/fs/cni-bin/"; done
    mkdir -p "$dir/fs/cni-conf"
    cat >"$dir/fs/cni-conf/10-ptp.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [{
    "type": "ptp",
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": "$(ptp_block "$i")"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
EOF
}

# ptp_routes N : under ptp, each node routes the other nodes' blocks to
# them on the LAN (as Margay's agent routes its peers').
ptp_routes() {
    local n=$1 i j
    for ((i = 0; i < n; i++)); do
        for ((j = 0; j < n; j++)); do
            ((i != j)) || continue
            ip -n "$(node_netns "$i")" route add "$(ptp_block "$j")" via "$(node_ip "$j")" dev eth0
        done
    done
}

# spawn_node I : like spawn (lib.sh), but into the node's network namespace
# and new mount and UTS namespaces, which containerd and kubelet share
# (`ip netns exec` would give each its own, and remount /sys). nsenter and
# unshare exec, so the recorded pid is node-run.sh's.
spawn_node() {
    local i=$1 node
    node=$(node_name "$i")
    (
        if [[ -n ${CLUSTER_LOCK_FD:-} ]]; then exec {CLUSTER_LOCK_FD}>&-; fi
        exec setsid nsenter --net="/run/netns/$(node_netns "$i")" \
            unshare --mount --uts -- "$ROOT/scripts/cluster.d/node-run.sh" "$NODES_DIR/$node" \
            </dev/null >>"$LOGS/$node.log" 2>&1
    ) &
    pid_record $! "$node"
}

# Every node's kubelet and containerd take a dozen inotify instances or
# more, and the kernel's default of 128 for all of root's processes runs
# out at the ninth or tenth node of the clusters up side by side (kubelet:
# "inotify_init: too many open files"), as kind documents for its own.
INOTIFY_INSTANCES=1024
inotify_make_room() {
    local knob=/proc/sys/fs/inotify/max_user_instances now
    now=$(<"$knob")
    ((now < INOTIFY_INSTANCES)) || return 0
    echo "$INOTIFY_INSTANCES" >"$knob"
    say "fs.inotify.max_user_instances raised from $now to $INOTIFY_INSTANCES for the kubelets"
}

nodes_up() {
    local n=$1 i ns
    NODE_COUNT=$n
    mkdir -p "$NODES_DIR"
    echo "$n" >"$NODES_DIR/count"
    ((n > 0)) || return 0
    inotify_make_room
    if ((REMOTE_NODES > 0)); then
        lan_add_remote_subnet
        lan_route_to_remote "$CONTROL_NETNS"
    fi
    for ((i = 0; i < n; i++)); do
        ns=$(node_netns "$i")
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # kubelet picks the node's address from the default route.
        if node_is_remote "$i"; then
            lan_plug "$ns" "n$i" "$(node_ip "$i")" br1 "$(node_ip6 "$i")"
            ip -n "$ns" route add default via "$REMOTE_ROUTER" dev eth0
            ((DUAL_STACK == 0)) || ip -n "$ns" -6 route add "$LAN_PREFIX6::/64" via "$REMOTE_ROUTER6" dev eth0
        else
            lan_plug "$ns" "n$i" "$(node_ip "$i")" br0 "$(node_ip6 "$i")"
            ip -n "$ns" route add default via "$HOST_IP" dev eth0
            ((REMOTE_NODES == 0)) || lan_route_to_remote "$ns"
        fi
        # Forwarding on, as on every Kubernetes node (kubeadm's preflight
        # requires it): traffic from the LAN to a pod (NodePorts) is forwarded.
        ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
        node_write_configs "$i"
        cgroup_make "$(node_cgroup "$i")"
        spawn_node "$i"
    done

    [[ $CNI != ptp ]] || ptp_routes "$n"

    ns=$PREFIX-$EXTERNAL_NETNS_NAME_SUFFIX
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    lan_plug "$ns" ext "$(external_ip)" br0 "$(external_ip6)"
    ((REMOTE_NODES == 0)) || lan_route_to_remote "$ns"

    wait_until 120 "$n nodes registered" nodes_registered_or_dead || nodes_explain
    [[ $CNI != margay ]] || margay_install
    wait_until 240 "every node Ready and the margay-node pods running" nodes_ready_or_dead || nodes_explain
}

# node_daemons NODE : the names (pid files, logs) of what node-run.sh supervises.
node_daemons() {
    echo "$1-containerd $1-kubelet"
    [[ $KUBE_PROXY == none || -e $(kube_proxy_hold "$1") ]] || echo "$1-kube-proxy"
}

# kube_proxy_hold NODE : the file that keeps NODE's kube-proxy stopped (node-run.sh's supervise).
kube_proxy_hold() { echo "$NODES_DIR/$1/$1-kube-proxy.held"; }

# Fails, naming it and showing its logs' end, if a node's process died.
nodes_alive() {
    local i node c
    for ((i = 0; i < NODE_COUNT; i++)); do
        node=$(node_name "$i")
        for c in "$node" $(node_daemons "$node"); do
            [[ -f $PIDS/$c.pid ]] || continue # not started yet
            component_pid "$c" >/dev/null && continue
            err "$c exited; the end of $LOGS/$c.log:"
            tail -n 20 "$LOGS/$c.log" >&2 || true
            [[ $c == "$node" ]] || { err "and of $LOGS/$node.log:"; tail -n 5 "$LOGS/$node.log" >&2 || true; }
            return 1
        done
    done
}

nodes_registered() { [[ $(kc get nodes -o name 2>/dev/null | wc -l) -ge $NODE_COUNT ]]; }
nodes_registered_or_dead() { nodes_alive || exit 1; nodes_registered; }

nodes_ready() {
    local ready ds
    ready=$(kc get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$')
    ((ready == NODE_COUNT)) || return 1
    [[ $CNI == margay ]] || return 0
    ds=$(kc -n margay-system get daemonset margay-node -o jsonpath='{.status.desiredNumberScheduled} {.status.numberReady}' 2>/dev/null)
    [[ $ds == "$NODE_COUNT $NODE_COUNT" ]]
}
nodes_ready_or_dead() { nodes_alive || exit 1; nodes_ready; }

# On a timeout: what is stuck, then fail.
nodes_explain() {
    local i node
    err "nodes:"
    kc get nodes -o wide >&2 || true
    kc describe nodes 2>/dev/null | sed -n '/^Name:/p;/^Taints:/p;/^Conditions:/,/^Addresses:/p' >&2 || true
    err "margay-system:"
    kc -n margay-system get pods -o wide >&2 || true
    kc -n margay-system describe pods 2>/dev/null | tail -n 40 >&2 || true
    for ((i = 0; i < NODE_COUNT; i++)); do
        node=$(node_name "$i")
        err "the end of $LOGS/$node-kubelet.log:"
        tail -n 15 "$LOGS/$node-kubelet.log" >&2 2>/dev/null || true
    done
    exit 1
}

# deploy/margay.yaml as the issue says, on a copy: the local image (never
# pulled), the chosen dataplane, the cluster's pod pool, and any
# --margay-config values. First the namespace and the ConfigMap that tells
# margay-agent where the API server is (no kube-proxy: its Service address
# answers nowhere until Margay runs).
margay_install() {
    local copy=$NODES_DIR/margay.yaml kv key value
    sed -e "s#^\( *\)image: margay/margay:latest\$#\1image: localhost/margay:latest\n\1imagePullPolicy: Never#" \
        -e "s#^  pools: .*#  pools: \"$(pod_pools)\"#" \
        -e "s#^  dataplane: .*#  dataplane: \"$DATAPLANE\"#" \
        -e "s#\"bpf_external_service_mode\": \"tunnel\",#\"bpf_external_service_mode\": \"$EXTERNAL_SERVICE_MODE\",#" \
        "$ROOT/deploy/margay.yaml" >"$copy"
    [[ $(grep -c 'image: localhost/margay:latest' "$copy") -ge 3 &&
        $(grep -c "^  pools: \"$(pod_pools)\"" "$copy") == 1 &&
        $(grep -c "^  dataplane: \"$DATAPLANE\"" "$copy") == 1 &&
        $(grep -c "\"bpf_external_service_mode\": \"$EXTERNAL_SERVICE_MODE\"," "$copy") == 1 ]] ||
        die "deploy/margay.yaml no longer has the image, pools, dataplane and external service mode lines this script replaces"
    local config=("${MARGAY_CONFIG[@]}")
    # Beside a kube-proxy the cluster runs, it balances Services unless
    # --margay-config services=... says otherwise.
    [[ $KUBE_PROXY == none || " ${config[*]} " == *" services="* ]] ||
        config=(services=kube-proxy "${config[@]}")
    for kv in "${config[@]}"; do
        key=${kv%%=*} value=${kv#*=}
        grep -q "^  $key: " "$copy" || die "--margay-config $key: margay-config has no such key"
        sed -i "s#^  $key: .*#  $key: \"$value\"#" "$copy"
    done
    kc create namespace margay-system --dry-run=client -o yaml | kc apply -f - >/dev/null
    kc -n margay-system create configmap kubernetes-services-endpoint \
        --from-literal=KUBERNETES_SERVICE_HOST="$CONTROL_IP" \
        --from-literal=KUBERNETES_SERVICE_PORT="$APISERVER_PORT" \
        --dry-run=client -o yaml | kc apply -f - >/dev/null
    kc apply -f "$copy" >/dev/null
    say "margay applied (dataplane $DATAPLANE, pools $(pod_pools), external service mode $EXTERNAL_SERVICE_MODE${config[*]:+, ${config[*]}})"
}

# Every node's daemons run (the no-op check of `up`).
nodes_running() {
    local n i node c
    [[ -f $NODES_DIR/count ]] || return 1
    n=$(<"$NODES_DIR/count")
    for ((i = 0; i < n; i++)); do
        node=$(node_name "$i")
        for c in $(node_daemons "$node"); do component_pid "$c" >/dev/null || return 1; done
    done
}

# Runs after every process in the cluster's namespaces is stopped. What is
# left of a node: its shims and pods (outside its network namespace), found
# by the node's cgroups, killed, and the cgroups removed. The node's mount
# namespace (its bind mounts, bpffs, pods' netns mounts) goes with its last
# process; the network namespaces are deleted after this by the generic sweep.
nodes_down() {
    local cgs pids round
    # shellcheck disable=SC2207
    cgs=($(node_cgroups))
    ((${#cgs[@]})) || return 0
    for ((round = 0; round < 50; round++)); do
        # shellcheck disable=SC2207
        pids=($(find "${cgs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un))
        ((${#pids[@]})) || break
        ((round > 0)) || say "killing ${#pids[@]} processes of the nodes' cgroups"
        kill -KILL "${pids[@]}" 2>/dev/null || true
        sleep 0.2
    done
    ((${#pids[@]} == 0)) || { err "still in the nodes' cgroups: ${pids[*]}"; TEARDOWN_FAILED=1; }
    local d ok
    for ((round = 0; round < 25; round++)); do
        ok=1
        for d in "${cgs[@]}"; do
            [[ -d $d ]] || continue
            find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || ok=
        done
        [[ -n $ok ]] && return 0
        sleep 0.2
    done
    for d in "${cgs[@]}"; do [[ ! -d $d ]] || try find "$d" -depth -type d -exec rmdir {} +; done
}

nodes_env() {
    local i
    for ((i = 0; i < ${NODE_COUNT:-0}; i++)); do
        printf 'NODE_NAME_%d=%q\n' "$i" "$(node_name "$i")"
        printf 'NODE_NETNS_%d=%q\n' "$i" "$(node_netns "$i")"
        printf 'NODE_IP_%d=%q\n' "$i" "$(node_ip "$i")"
        ((DUAL_STACK == 0)) || printf 'NODE_IP6_%d=%q\n' "$i" "$(node_ip6 "$i")"
    done
    if ((${NODE_COUNT:-0} > 0)); then
        printf 'EXTERNAL_NETNS=%q\n' "$PREFIX-$EXTERNAL_NETNS_NAME_SUFFIX"
        printf 'EXTERNAL_IP=%q\n' "$(external_ip)"
        ((DUAL_STACK == 0)) || printf 'EXTERNAL_IP6=%q\n' "$(external_ip6)"
        printf 'POD_CIDR=%q\n' "$(pod_cidr)"
        ((DUAL_STACK == 0)) || printf 'POD_CIDR6=%q\n' "$(pod_cidr6)"
        printf 'DATAPLANE=%q\n' "$DATAPLANE"
        printf 'KUBE_PROXY=%q\n' "$KUBE_PROXY"
        printf 'CNI=%q\n' "$CNI"
        printf 'EXTERNAL_SERVICE_MODE=%q\n' "$EXTERNAL_SERVICE_MODE"
        printf 'REMOTE_NODES=%q\n' "$REMOTE_NODES"
    fi
}
