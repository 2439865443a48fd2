# The cluster's LAN: a bridge in a network namespace of its own
# (<prefix>-lan), the "switch" every member plugs a veth into: the control
# plane, the host (so kubectl works from it), later the nodes and the
# external client. Nothing of it lives in the host's namespace but the host's
# own veth end, and nothing listens on the host, so clusters share no port.
# Sourced by scripts/cluster.
#
# Address plan, one /24 per cluster, 10.250.<k>.0/24 (a range the project
# uses nowhere else), k derived from a hash of the cluster's name:
#   .1        the host (its veth <prefix>, or mgc-<digest> for long names)
#   .2        the control plane (etcd on its loopback, apiserver on .2:6443)
#   .10+i     node i (the node part)
#   .250      the external client (the node part)
#   .254      the router to the second subnet, when there is one
# With `up --remote-nodes K` the last K nodes sit on a second L2 segment,
# 10.249.<k>.0/24 (bridge br1, router .1), routed to the first through the
# LAN namespace: nodes on another subnet, as in another rack.
# With `up --dual-stack` the nodes, the external client and the routers also
# have IPv6 addresses, the same host parts in hex on fd00:250:<k hex>::/64
# (node i ::a+i, the external client ::fa, the router ::fe) and on
# fd00:249:<k hex>::/64 for the second segment (router ::1): NodePorts and
# the routes between nodes' pods are then reached over IPv6 too. The control
# plane stays on IPv4.
# When the hashed subnet is already on the host (another cluster, or anything
# else), the next free k is taken; the choice is recorded in the state dir.

LAN_BASE=10.250
REMOTE_LAN_BASE=10.249
LAN_BASE6=fd00:250
REMOTE_LAN_BASE6=fd00:249
APISERVER_PORT=6443

# Sets the address plan from k ($1).
lan_plan() {
    LAN_K=$1
    LAN_SUBNET=$LAN_BASE.$LAN_K.0/24
    HOST_IP=$LAN_BASE.$LAN_K.1
    CONTROL_IP=$LAN_BASE.$LAN_K.2
    APISERVER=https://$CONTROL_IP:$APISERVER_PORT
    LAN_ROUTER=$LAN_BASE.$LAN_K.254
    REMOTE_SUBNET=$REMOTE_LAN_BASE.$LAN_K.0/24
    REMOTE_ROUTER=$REMOTE_LAN_BASE.$LAN_K.1
    LAN_PREFIX6=$LAN_BASE6:$(printf %x "$LAN_K")
    REMOTE_PREFIX6=$REMOTE_LAN_BASE6:$(printf %x "$LAN_K")
    LAN_ROUTER6=$LAN_PREFIX6::fe
    REMOTE_ROUTER6=$REMOTE_PREFIX6::1
}

# external_ip, external_ip6 : for the node part (node_ip is nodes.sh's: it
# knows the subnets); the IPv6 one is empty in a single-stack cluster.
external_ip() { echo "$LAN_BASE.$LAN_K.250"; }
external_ip6() { ((DUAL_STACK == 0)) || echo "$LAN_PREFIX6::fa"; }

# Reads the recorded plan of an existing cluster; fails if there is none.
lan_load() {
    local k
    [[ -f $LAN_FILE ]] || return 1
    k=$(sed -n 's/^LAN_K=//p' "$LAN_FILE")
    [[ $k =~ ^[0-9]+$ ]] || return 1
    lan_plan "$k"
}

# Is any address or route of the host inside 10.250.$1.0/24?
subnet_taken() {
    local net=$LAN_BASE.$1.0/24
    [[ -n $(ip -4 -o addr show to "$net") || -n $(ip -4 route show table all root "$net") ]]
}

# lan_up : picks the subnet and builds the LAN with the host's door to it.
lan_up() {
    local lock_fd hash k i
    exec {lock_fd}>"$ALLOC_LOCK"
    flock -w 60 "$lock_fd" || die "no lock on $ALLOC_LOCK after 60 s"

    hash=$((0x$(printf %s "$CLUSTER_NAME" | sha256sum | cut -c1-8) % 256))
    for ((i = 0; i < 256; i++)); do
        k=$(((hash + i) % 256))
        subnet_taken "$k" || break
    done
    ((i < 256)) || die "every subnet of $LAN_BASE.0.0/16 is taken on this host"
    lan_plan "$k"
    echo "LAN_K=$k" >"$LAN_FILE"

    # The switch. STP stays off (the default), so ports forward at once.
    ip netns add "$LAN_NETNS"
    ip -n "$LAN_NETNS" link set lo up
    ip -n "$LAN_NETNS" link add br0 type bridge
    ip -n "$LAN_NETNS" link set br0 up

    # The host's door: created with its peer directly in the LAN namespace,
    # so no temporary name ever appears on the host.
    ip link add "$HOST_LINK" type veth peer name host netns "$LAN_NETNS"
    ip -n "$LAN_NETNS" link set host master br0 up
    ip addr add "$HOST_IP/24" dev "$HOST_LINK"
    ip link set "$HOST_LINK" up

    # The subnet is now visibly claimed on the host: the next `up` skips it.
    exec {lock_fd}>&-
}

# lan_plug NETNS PORT IP [BRIDGE [IP6]] : plugs namespace NETNS into the
# LAN: its eth0 gets IP/24 (and IP6/64), the other end is bridge port PORT of
# BRIDGE (br0, or br1 for the second subnet) in the LAN namespace.
lan_plug() {
    local netns=$1 port=$2 ip=$3 bridge=${4:-br0} ip6=${5:-}
    ip -n "$LAN_NETNS" link add "$port" type veth peer name eth0 netns "$netns"
    ip -n "$LAN_NETNS" link set "$port" master "$bridge" up
    ip -n "$netns" addr add "$ip/24" dev eth0
    # No duplicate address detection: the plan gives every address once, and
    # a tentative address could not be bound (kubelet, NodePorts) for a second.
    [[ -z $ip6 ]] || ip -n "$netns" addr add "$ip6/64" dev eth0 nodad
    ip -n "$netns" link set eth0 up
}

# lan_add_remote_subnet : the second segment (br1) and the LAN namespace
# routing between the two.
lan_add_remote_subnet() {
    ip -n "$LAN_NETNS" link add br1 type bridge
    ip -n "$LAN_NETNS" link set br1 up
    ip -n "$LAN_NETNS" addr add "$REMOTE_ROUTER/24" dev br1
    ip -n "$LAN_NETNS" addr add "$LAN_ROUTER/24" dev br0
    ip netns exec "$LAN_NETNS" sysctl -qw net.ipv4.ip_forward=1
    ((DUAL_STACK)) || return 0
    ip -n "$LAN_NETNS" addr add "$REMOTE_ROUTER6/64" dev br1 nodad
    ip -n "$LAN_NETNS" addr add "$LAN_ROUTER6/64" dev br0 nodad
    ip netns exec "$LAN_NETNS" sysctl -qw net.ipv6.conf.all.forwarding=1
}

# lan_route_to_remote NETNS : a member of the first subnet reaches the
# second, over IPv6 too when it has an IPv6 address (the control plane has none).
lan_route_to_remote() {
    ip -n "$1" route add "$REMOTE_SUBNET" via "$LAN_ROUTER"
    [[ -z $(ip -n "$1" -6 addr show dev eth0 scope global) ]] ||
        ip -n "$1" -6 route add "$REMOTE_PREFIX6::/64" via "$LAN_ROUTER6"
}

# lan_down : removes the host's veth and the LAN namespace, if there.
# Deleting a namespace takes its veth ends with it, and a veth pair goes
# with either end; the host's end is deleted first all the same, since the
# kernel frees a dead namespace's devices only later.
lan_down() {
    if link_exists "$HOST_LINK"; then try ip link del "$HOST_LINK"; fi
    if netns_exists "$LAN_NETNS"; then try ip netns del "$LAN_NETNS"; fi
}
