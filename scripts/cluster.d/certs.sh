# The cluster's PKI, made with openssl: one CA signs every certificate
# (apiserver serving, every client, and kubelet client certificates through
# the controller-manager's CSR signer), plus the service-account key pair.
# Sourced by scripts/cluster.
#
# Keys are ECDSA P-256 (instant to generate, accepted by Go and rustls alike),
# except the service-account key: RSA, so tokens are RS256, the algorithm
# every token reviewer and OIDC discovery consumer takes.

CERT_DAYS=3650

# Keys and kubeconfigs are for root's eyes only. Not a subshell: an `up`
# killed midway must leave no shell of its own running on.
private_files() {
    SAVED_UMASK=$(umask)
    umask 077
}

new_ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca_make PREFIX NAME : a self-signed CA, PREFIX.{key,crt}.
ca_make() {
    new_ec_key "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days "$CERT_DAYS" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -out "$1.crt" 2>/dev/null || die "openssl could not make the CA $2"
}

# cert_issue OUT SUBJECT USAGE [SANS] : writes OUT.key and OUT.crt, signed by
# the CA $CA.{crt,key} (default: the cluster's CA). USAGE is clientAuth
# and/or serverAuth; SANS an openssl subjectAltName value ("DNS:a,IP:1.2.3.4").
cert_issue() {
    local out=$1 subject=$2 usage=$3 sans=${4:-}
    local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$usage"
    [[ -z $sans ]] || ext+=$'\n'"subjectAltName=$sans"
    new_ec_key "$out.key"
    # A random serial rather than a serial file: issuing stays safe when node
    # certificates are made in parallel.
    openssl req -new -key "$out.key" -subj "$subject" 2>/dev/null |
        openssl x509 -req -CA "${CA:-$CERTS/ca}.crt" -CAkey "${CA:-$CERTS/ca}.key" \
            -set_serial "0x$(openssl rand -hex 16)" -days "$CERT_DAYS" \
            -extfile <(printf '%s\n' "$ext") -out "$out.crt" 2>/dev/null ||
        die "openssl could not issue $out.crt ($subject)"
}

# kubeconfig_write FILE USER CERT_PREFIX : a self-contained kubeconfig (data
# embedded, so it can be copied anywhere, into a node's mount namespace too)
# for the client certificate CERT_PREFIX.{crt,key}.
kubeconfig_write() {
    local file=$1 user=$2 cert=$3
    b64() { base64 -w0 <"$1"; }
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: margay-$CLUSTER_NAME
  cluster:
    server: $APISERVER
    certificate-authority-data: $(b64 "$CERTS/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$cert.crt")
    client-key-data: $(b64 "$cert.key")
contexts:
- name: $user@margay-$CLUSTER_NAME
  context:
    cluster: margay-$CLUSTER_NAME
    user: $user
current-context: $user@margay-$CLUSTER_NAME
EOF
    mv "$file.tmp" "$file"
}

# Makes the whole control-plane PKI. Needs CONTROL_IP and APISERVER (lan_plan).
certs_make() {
    private_files
    mkdir -p "$CERTS"
    ca_make "$CERTS/ca" "margay-$CLUSTER_NAME-ca"

    # Every name a client may use: the LAN address (nodes, host), the
    # `kubernetes` Service's ClusterIP and DNS names (pods), loopback.
    cert_issue "$CERTS/apiserver" "/CN=kube-apiserver" serverAuth \
        "IP:$CONTROL_IP,IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
    # The apiserver's identity towards kubelets (exec, logs, port-forward).
    cert_issue "$CERTS/apiserver-kubelet-client" "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    # The names RBAC's default bindings expect for each component.
    cert_issue "$CERTS/admin" "/O=system:masters/CN=admin" clientAuth
    cert_issue "$CERTS/controller-manager" "/CN=system:kube-controller-manager" clientAuth
    cert_issue "$CERTS/scheduler" "/CN=system:kube-scheduler" clientAuth
    # Bound to system:node-proxier by RBAC's defaults; every node's kube-proxy.
    cert_issue "$CERTS/kube-proxy" "/CN=system:kube-proxy" clientAuth

    # The front proxy (request-header) CA and the apiserver's client
    # certificate under it: what aggregated APIs (metrics-server and the
    # like) trust, and what every component's delegated authentication
    # reads from kube-system/extension-apiserver-authentication (which
    # logs errors without it). Its own CA, as kubeadm does: a certificate
    # from it must not pass as a user.
    ca_make "$CERTS/front-proxy-ca" "margay-$CLUSTER_NAME-front-proxy-ca"
    CA=$CERTS/front-proxy-ca cert_issue "$CERTS/front-proxy-client" "/CN=front-proxy-client" clientAuth

    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$CERTS/sa.key" 2>/dev/null
    openssl pkey -in "$CERTS/sa.key" -pubout -out "$CERTS/sa.pub" 2>/dev/null

    kubeconfig_write "$ADMIN_KUBECONFIG" admin "$CERTS/admin"
    kubeconfig_write "$CERTS/controller-manager.kubeconfig" system:kube-controller-manager "$CERTS/controller-manager"
    kubeconfig_write "$CERTS/scheduler.kubeconfig" system:kube-scheduler "$CERTS/scheduler"
    kubeconfig_write "$CERTS/kube-proxy.kubeconfig" system:kube-proxy "$CERTS/kube-proxy"
    umask "$SAVED_UMASK"
}

# kubelet_kubeconfig NODE DIR : for the node part. Issues node NODE's kubelet
# client certificate (CN=system:node:NODE, O=system:nodes: what the Node
# authorizer and NodeRestriction admission recognise) into DIR/kubelet.{crt,key}
# and writes DIR/kubelet.kubeconfig. Needs the cluster's CA (after certs_make).
kubelet_kubeconfig() {
    local node=$1 dir=$2
    private_files
    mkdir -p "$dir"
    cert_issue "$dir/kubelet" "/O=system:nodes/CN=system:node:$node" clientAuth
    kubeconfig_write "$dir/kubelet.kubeconfig" "system:node:$node" "$dir/kubelet"
    umask "$SAVED_UMASK"
}

# kubelet_serving_cert NODE IPS DIR : for the node part, optional. A serving
# certificate for NODE's kubelet (DIR/kubelet-serving.{crt,key}) naming its
# LAN addresses (IPS, comma-separated), should the apiserver ever verify
# kubelets (--kubelet-certificate-authority); without one kubelet serves a
# self-signed certificate, which the apiserver accepts today.
kubelet_serving_cert() {
    local node=$1 ips=$2 dir=$3
    private_files
    mkdir -p "$dir"
    cert_issue "$dir/kubelet-serving" "/O=system:nodes/CN=system:node:$node" serverAuth "DNS:$node,IP:${ips//,/,IP:}"
    umask "$SAVED_UMASK"
}
