# The env file: shell assignments a test, the demo or a person sources to
# use the cluster (`. target/cluster/env && $KUBECTL get ns`). Written last,
# once the cluster answers, so its presence means "up finished". Sourced by
# scripts/cluster.

env_write() {
    local nodes=$1 var lines
    lines=$(
        for var in CLUSTER_NAME KUBECONFIG KUBECTL APISERVER LAN_NETNS CONTROL_NETNS \
            LAN_SUBNET HOST_IP CONTROL_IP SERVICE_CIDR NODES; do
            case $var in
                KUBECONFIG) printf 'KUBECONFIG=%q\n' "$ADMIN_KUBECONFIG" ;;
                NODES) printf 'NODES=%q\n' "$nodes" ;;
                *) printf '%s=%q\n' "$var" "${!var}" ;;
            esac
        done
        nodes_env
    )
    {
        echo "# Written by scripts/cluster up, removed by scripts/cluster down: NAME=value"
        echo "# lines (values shell-quoted), then one export line naming them all."
        echo "$lines"
        # So `. env && kubectl …` finds the cluster; a reader of NAME=value lines skips it.
        echo "export $(sed 's/=.*//' <<<"$lines" | paste -sd' ')"
    } >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}
