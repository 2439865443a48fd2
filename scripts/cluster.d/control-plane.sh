# The control plane: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler, all in one network namespace (<prefix>-cp) plugged into the
# LAN. A node's namespace cannot reach the host's loopback, so the apiserver
# listens on the LAN address; etcd stays on the namespace's own loopback,
# reachable by the apiserver only. Sourced by scripts/cluster.

SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1 # the first address of SERVICE_CIDR
# A dual-stack cluster's (`up --dual-stack`) second Service range (the
# apiserver allocates from at most 2^20 addresses: a /108).
SERVICE_CIDR6=fd00:96::/108
DUAL_STACK=0
SA_ISSUER=https://kubernetes.default.svc.cluster.local

# In the order they start (`down` stops the clients first, then etcd).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)

# Starts etcd and the apiserver, in the control plane's own namespace.
control_plane_up() {
    ip netns add "$CONTROL_NETNS"
    ip -n "$CONTROL_NETNS" link set lo up
    lan_plug "$CONTROL_NETNS" cp "$CONTROL_IP"
    mkdir -p -m 700 "$DATA/etcd" # the mode etcd asks for

    # The cluster is disposable: without fsync etcd keeps up on a busy disk.
    spawn etcd "$CONTROL_NETNS" "$K8S_BIN/etcd" \
        --name=cp \
        --data-dir="$DATA/etcd" \
        --listen-client-urls=http://127.0.0.1:2379 \
        --advertise-client-urls=http://127.0.0.1:2379 \
        --listen-peer-urls=http://127.0.0.1:2380 \
        --initial-advertise-peer-urls=http://127.0.0.1:2380 \
        --initial-cluster=cp=http://127.0.0.1:2380 \
        --unsafe-no-fsync \
        --log-level=warn

    # The apiserver would retry etcd until it answers, but waiting here makes
    # a broken etcd fail as itself. The controllers, though, give up when
    # RBAC's bootstrap roles are not there yet: they start once /readyz (which
    # waits for those) is ok.
    wait_until 30 "etcd on 127.0.0.1:2379 in $CONTROL_NETNS" etcd_or_dead
    spawn kube-apiserver "$CONTROL_NETNS" "$K8S_BIN/kube-apiserver" \
        --etcd-servers=http://127.0.0.1:2379 \
        --bind-address="$CONTROL_IP" \
        --advertise-address="$CONTROL_IP" \
        --secure-port="$APISERVER_PORT" \
        --tls-cert-file="$CERTS/apiserver.crt" \
        --tls-private-key-file="$CERTS/apiserver.key" \
        --client-ca-file="$CERTS/ca.crt" \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=ServiceAccount,NodeRestriction \
        --allow-privileged=true \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-issuer="$SA_ISSUER" \
        --service-account-key-file="$CERTS/sa.pub" \
        --service-account-signing-key-file="$CERTS/sa.key" \
        --kubelet-client-certificate="$CERTS/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$CERTS/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP,Hostname \
        --requestheader-client-ca-file="$CERTS/front-proxy-ca.crt" \
        --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User \
        --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --proxy-client-cert-file="$CERTS/front-proxy-client.crt" \
        --proxy-client-key-file="$CERTS/front-proxy-client.key" \
        --profiling=false
}

control_plane_start_controllers() {
    # `*` is every controller on by default, node-lifecycle among them (it
    # removes the not-ready taint kubelet registers a node with; without it
    # nothing is ever scheduled). One instance: no leader election to wait
    # for. Each controller gets its own service-account credentials, so RBAC
    # sees what each may do; fetching those is most of its start-up, so its
    # client's rate limit (20/s by default) is raised. Node CIDR allocation
    # (--allocate-node-cidrs, --cluster-cidr) is the node part's call:
    # Margay's IPAM owns pod addresses.
    spawn kube-controller-manager "$CONTROL_NETNS" "$K8S_BIN/kube-controller-manager" \
        --kubeconfig="$CERTS/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$CERTS/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$CERTS/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 \
        --controllers='*' \
        --cluster-name="margay-$CLUSTER_NAME" \
        --cluster-signing-cert-file="$CERTS/ca.crt" \
        --cluster-signing-key-file="$CERTS/ca.key" \
        --root-ca-file="$CERTS/ca.crt" \
        --service-account-private-key-file="$CERTS/sa.key" \
        --use-service-account-credentials=true \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --leader-elect=false \
        --kube-api-qps=100 \
        --kube-api-burst=200 \
        --profiling=false

    spawn kube-scheduler "$CONTROL_NETNS" "$K8S_BIN/kube-scheduler" \
        --kubeconfig="$CERTS/scheduler.kubeconfig" \
        --authentication-kubeconfig="$CERTS/scheduler.kubeconfig" \
        --authorization-kubeconfig="$CERTS/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 \
        --leader-elect=false \
        --profiling=false
}

# Fails, naming it and showing its log's end, if a component has died.
control_plane_alive() {
    local c
    for c in "${COMPONENTS[@]}"; do
        [[ -f $PIDS/$c.pid ]] || continue # not started yet
        component_pid "$c" >/dev/null && continue
        err "$c exited; the end of $LOGS/$c.log:"
        tail -n 15 "$LOGS/$c.log" >&2 || true
        return 1
    done
}

apiserver_ready() { [[ $(kc get --raw /readyz 2>/dev/null) == ok ]]; }

# The default ServiceAccount shows the controller-manager works, and a pod
# created before it exists is refused by ServiceAccount admission.
default_sa_exists() { kc -n default get serviceaccount default >/dev/null 2>&1; }

# etcd takes connections: a connect from inside its namespace, with bash alone.
etcd_listening() { ip netns exec "$CONTROL_NETNS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/2379' 2>/dev/null; }

# Polls, failing at once when a component dies rather than at the timeout.
etcd_or_dead() { control_plane_alive || exit 1; etcd_listening; }
ready_or_dead() { control_plane_alive || exit 1; apiserver_ready; }
sa_or_dead() { control_plane_alive || exit 1; default_sa_exists; }

control_plane_wait_api() { wait_until 120 "the apiserver's /readyz at $APISERVER" ready_or_dead; }
control_plane_wait_controllers() { wait_until 60 "the default ServiceAccount (controller-manager)" sa_or_dead; }

# The control plane's processes are stopped by stop_cluster_processes first.
control_plane_down() {
    if netns_exists "$CONTROL_NETNS"; then try ip netns del "$CONTROL_NETNS"; fi
}
