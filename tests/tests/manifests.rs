//! The Kubernetes manifests and the image in `deploy/`, checked offline (no
//! cluster runs here): every document against the API's schemas with
//! PyPI's `kubernetes-validate` (strict: an unknown or misspelt field fails),
//! then what Margay itself needs from them: the DaemonSet runs margay-install
//! with the env it reads and the host paths it writes, and the ConfigMap's
//! template renders to a conflist the installer accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use margay_tests::bins::{bin, bin_dir};
use margay_tests::kube::repo_root;
use serde_json::Value;

/// The validator and the version it is pinned to (scripts/install-deps).
const VALIDATOR: &str = "kubernetes-validate";
const VALIDATOR_VERSION: &str = "1.37.0";
/// The Kubernetes API the manifests are checked against: the oldest release
/// still in wide use, so they apply there and on everything newer.
const KUBERNETES_VERSION: &str = "1.31.0";

/// Every placeholder margay-install substitutes, with a sample value.
const PLACEHOLDERS: [(&str, &str); 7] = [
    ("__NODENAME__", "node-a"),
    ("__CNI_MTU__", "1450"),
    ("__POOLS__", r#"["10.244.0.0/16","fd00:244::/64"]"#),
    ("__DATAPLANE__", "bpf"),
    ("__LOG_LEVEL__", "debug"),
    ("__BPF_ROOT__", "/sys/fs/bpf/margay"),
    ("__IPAM_DATA_DIR__", "/var/lib/cni/margay"),
];

/// The host paths the DaemonSet must mount: CNI binaries, CNI confs, bpffs,
/// IPAM data, and the node-wide lock dir the plugin shares.
const HOST_PATHS: [&str; 5] = [
    "/opt/cni/bin",
    "/etc/cni/net.d",
    "/sys/fs/bpf",
    "/var/lib/cni",
    "/run/margay",
];

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

/// Every manifest file in deploy/, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy())
        .expect("deploy/ exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", deploy().display());
    files
}

/// In CI a missing tool is a failure (install-deps provides it); by hand the
/// test skips with a message nobody can miss, like `privilege::root_or_skip`.
fn tool_or_skip(test: &str, available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs {what}, and CI is set: ./scripts/install-deps installs it"
    );
    eprintln!(
        "\n*** SKIPPED {test}: needs {what} \
         (python3 -m pip install {VALIDATOR}=={VALIDATOR_VERSION}, or ./scripts/install-deps). ***\n"
    );
    false
}

/// `kubernetes-validate`, at the pinned version, on PATH.
fn validator_or_skip(test: &str) -> bool {
    let version = Command::new(VALIDATOR)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    tool_or_skip(
        test,
        version.as_deref() == Some(VALIDATOR_VERSION),
        &format!(
            "{VALIDATOR} {VALIDATOR_VERSION} on PATH (found: {})",
            version.as_deref().unwrap_or("none")
        ),
    )
}

/// python3 with PyYAML (a dependency of kubernetes-validate).
fn yaml_or_skip(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    tool_or_skip(test, ok, "python3 with PyYAML")
}

/// Every document of every manifest file, as JSON (PyYAML's safe loader:
/// plain YAML, no tags).
fn documents() -> Vec<Value> {
    let mut docs = Vec::new();
    for file in manifest_files() {
        let out = Command::new("python3")
            .args([
                "-c",
                "import yaml, json, sys; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(&file)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{} is not YAML: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("python printed JSON");
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let hits: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(hits.len(), 1, "exactly one {kind} {name}");
    hits[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn list<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {v}"))
}

/// A container by name from a pod spec's `containers` or `initContainers`.
fn container<'a>(pod: &'a Value, field: &str, name: &str) -> &'a Value {
    list(&pod[field], field)
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {field} entry named {name}"))
}

/// A container's env as name -> the raw entry.
fn env_of(c: &Value) -> BTreeMap<String, Value> {
    list(&c["env"], "env")
        .iter()
        .map(|e| (str_of(&e["name"], "env name").to_string(), e.clone()))
        .collect()
}

/// A container's env resolved as kubelet would on node `node`: literal
/// values, ConfigMap keys, spec.nodeName.
fn resolved_env(c: &Value, config: &Value, node: &str) -> BTreeMap<String, String> {
    env_of(c)
        .into_iter()
        .map(|(name, e)| {
            let value = if let Some(v) = e.get("value") {
                str_of(v, &name).to_string()
            } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                assert_eq!(r["name"], "margay-config", "{name}: the ConfigMap");
                let key = str_of(&r["key"], &name);
                str_of(&config["data"][key], &format!("ConfigMap key {key}")).to_string()
            } else if let Some(f) = e.pointer("/valueFrom/fieldRef/fieldPath") {
                assert_eq!(f, "spec.nodeName", "{name}: the only field used");
                node.to_string()
            } else {
                panic!("{name}: no value the test can resolve: {e}");
            };
            (name, value)
        })
        .collect()
}

/// The template with every placeholder replaced by its sample value.
fn render_sample(template: &str) -> String {
    PLACEHOLDERS
        .iter()
        .fold(template.to_string(), |t, (p, v)| t.replace(p, v))
}

#[test]
fn every_manifest_passes_kubernetes_validate_strictly() {
    let test = "every_manifest_passes_kubernetes_validate_strictly";
    if !validator_or_skip(test) {
        return;
    }
    let mut report = String::new();
    for file in manifest_files() {
        let out = Command::new(VALIDATOR)
            .args(["--strict", "-k", KUBERNETES_VERSION])
            .arg(&file)
            .output()
            .expect("kubernetes-validate runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{text}");
        assert!(
            out.status.success(),
            "{} fails {VALIDATOR} --strict -k {KUBERNETES_VERSION}:\n{text}",
            file.display()
        );
        assert!(
            !text.contains("WARN") && !text.contains("ERROR"),
            "{} validated with complaints:\n{text}",
            file.display()
        );
        report.push_str(&text);
    }
    // Every document was looked at: one "passed" line each.
    if yaml_or_skip(test) {
        for d in documents() {
            let kind = str_of(&d["kind"], "kind").to_lowercase();
            let name = str_of(&d["metadata"]["name"], "metadata.name");
            assert!(
                report.contains(&format!("passed for resource {kind}/{name} ")),
                "{kind}/{name} was not validated:\n{report}"
            );
        }
    }
}

#[test]
fn a_misspelt_field_fails_validation() {
    let test = "a_misspelt_field_fails_validation";
    if !validator_or_skip(test) {
        return;
    }
    let good = std::fs::read_to_string(deploy().join("margay.yaml")).unwrap();
    assert!(good.contains("mountPropagation:"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("margay.yaml");
    std::fs::write(&bad, good.replace("mountPropagation:", "mountPropagaton:")).unwrap();
    let out = Command::new(VALIDATOR)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(&bad)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("mountPropagaton"),
        "strict validation let an unknown field through:\n{text}"
    );
}

/// The kinds that live in no namespace.
const CLUSTER_SCOPED: [&str; 4] = [
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// A Role's or ClusterRole's rules as (group, resource, verb) triples.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut all = BTreeSet::new();
    for rule in list(&role["rules"], "rules") {
        for g in list(&rule["apiGroups"], "apiGroups") {
            for r in list(&rule["resources"], "resources") {
                for v in list(&rule["verbs"], "verbs") {
                    all.insert((
                        str_of(g, "group").to_string(),
                        str_of(r, "resource").to_string(),
                        str_of(v, "verb").to_string(),
                    ));
                }
            }
        }
    }
    all
}

fn triples(list: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn the_agent_is_granted_exactly_what_it_uses() {
    let test = "the_agent_is_granted_exactly_what_it_uses";
    if !yaml_or_skip(test) {
        return;
    }
    let docs = documents();
    find(&docs, "Namespace", "margay-system");
    let sa = find(&docs, "ServiceAccount", "margay-node");
    assert_eq!(sa["metadata"]["namespace"], "margay-system");
    assert_eq!(
        sa["automountServiceAccountToken"], false,
        "only the agent's container gets a token (a projected volume)"
    );
    // What agent/src uses: ipam.rs and gc.rs on IPAMBlocks, lib.rs's
    // watches (nodes, pods, services, endpointslices), lease.rs on its Lease.
    assert_eq!(
        grants(find(&docs, "ClusterRole", "margay-agent")),
        triples(&[
            (
                "margay.dev",
                "ipamblocks",
                &["get", "list", "watch", "create", "delete"]
            ),
            ("margay.dev", "ipamblocks/status", &["patch"]),
            ("", "nodes", &["list", "watch"]),
            ("", "pods", &["list", "watch"]),
            ("", "services", &["list", "watch"]),
            ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
            ("", "namespaces", &["list", "watch"]),
            ("networking.k8s.io", "networkpolicies", &["list", "watch"]),
        ])
    );
    assert_eq!(
        grants(find(&docs, "Role", "margay-agent")),
        triples(&[(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"]
        )])
    );
    for (kind, role) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let b = find(&docs, kind, "margay-agent");
        assert_eq!(b["roleRef"]["kind"], role);
        assert_eq!(b["roleRef"]["name"], "margay-agent");
        assert_eq!(
            b["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "margay-node", "namespace": "margay-system"}])
        );
    }
    for d in &docs {
        let kind = str_of(&d["kind"], "kind");
        let expected = if CLUSTER_SCOPED.contains(&kind) {
            Value::Null
        } else {
            Value::from("margay-system")
        };
        assert_eq!(
            d["metadata"]["namespace"], expected,
            "{kind} {}",
            d["metadata"]["name"]
        );
    }
}

/// `v` with every number as a float (YAML's `0` is the agent's `0.0`).
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn the_ipamblock_crd_is_the_one_the_agent_is_built_with() {
    let test = "the_ipamblock_crd_is_the_one_the_agent_is_built_with";
    if !yaml_or_skip(test) {
        return;
    }
    let docs = documents();
    let shipped = find(&docs, "CustomResourceDefinition", "ipamblocks.margay.dev");
    let out = Command::new(bin("margay-agent"))
        .arg("--print-crd")
        .output()
        .expect("margay-agent runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: Value = serde_json::from_slice(&out.stdout).expect("--print-crd prints JSON");
    assert_eq!(
        numbers_as_floats(&shipped["spec"]),
        numbers_as_floats(&built["spec"]),
        "deploy/margay.yaml's CRD differs from `margay-agent --print-crd`'s"
    );
}

#[test]
fn daemonset_runs_margay_install_with_the_host_paths_and_node_name() {
    let test = "daemonset_runs_margay_install_with_the_host_paths_and_node_name";
    if !yaml_or_skip(test) {
        return;
    }
    let docs = documents();
    let ds = find(&docs, "DaemonSet", "margay-node");
    assert_eq!(ds["metadata"]["namespace"], "margay-system");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "margay-node");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(
        list(&pod["tolerations"], "tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists"
                && t.get("key").is_none()
                && t.get("effect").is_none()),
        "a toleration for every taint: {}",
        pod["tolerations"]
    );

    // Volumes by name: the host paths.
    let volumes: BTreeMap<&str, &Value> = list(&pod["volumes"], "volumes")
        .iter()
        .map(|v| (str_of(&v["name"], "volume name"), v))
        .collect();
    let host_volume = |path: &str| -> &str {
        volumes
            .iter()
            .find(|(_, v)| v["hostPath"]["path"] == path)
            .map(|(name, _)| *name)
            .unwrap_or_else(|| panic!("no hostPath volume for {path}"))
    };

    let init = container(pod, "initContainers", "install-cni");
    let watch = container(pod, "containers", "install-cni-watch");
    for c in [init, watch] {
        let name = str_of(&c["name"], "container name");
        let command = list(&c["command"], "command");
        assert!(
            str_of(&command[0], "command[0]").ends_with("/margay-install"),
            "{name} runs margay-install: {command:?}"
        );
        assert_eq!(c["image"], "margay/margay:latest", "{name}");
        assert_eq!(c["securityContext"]["privileged"], true, "{name}");

        // Each host path mounted at the same path: the conflist names these
        // paths, and the plugin reads them on the host.
        let mounts = list(&c["volumeMounts"], "volumeMounts");
        for path in HOST_PATHS {
            let volume = host_volume(path);
            let mount = mounts
                .iter()
                .find(|m| m["name"] == volume)
                .unwrap_or_else(|| panic!("{name} does not mount {path} (volume {volume})"));
            assert_eq!(mount["mountPath"], path, "{name}: {path}");
            if path == "/sys/fs/bpf" {
                assert_eq!(
                    mount["mountPropagation"], "Bidirectional",
                    "{name}: a bpffs mounted by the installer must reach the host"
                );
            }
        }

        let env = env_of(c);
        let env = |var: &str| -> &Value {
            env.get(var)
                .unwrap_or_else(|| panic!("{name} does not set {var}"))
        };
        assert_eq!(
            env("NODENAME").pointer("/valueFrom/fieldRef/fieldPath"),
            Some(&Value::from("spec.nodeName")),
            "{name}: NODENAME is the node's name"
        );
        for (var, key) in [
            ("MARGAY_POOLS", "pools"),
            ("MARGAY_DATAPLANE", "dataplane"),
            ("CNI_MTU", "mtu"),
            ("MARGAY_LOG_LEVEL", "log_level"),
        ] {
            assert_eq!(
                env(var).pointer("/valueFrom/configMapKeyRef"),
                Some(&serde_json::json!({"name": "margay-config", "key": key})),
                "{name}: {var} comes from the ConfigMap"
            );
        }
        assert_eq!(
            env("MARGAY_SOURCE_DIR")["value"],
            "/opt/margay/bin",
            "{name}: where the image has the binaries"
        );
        // The template is the ConfigMap key, mounted as a file so that a
        // change reaches the watcher without a restart.
        let template = str_of(&env("CNI_NETWORK_CONFIG_FILE")["value"], "template path");
        let config_mount = mounts
            .iter()
            .find(|m| {
                volumes[str_of(&m["name"], "mount name")]["configMap"]["name"] == "margay-config"
            })
            .unwrap_or_else(|| panic!("{name} does not mount the ConfigMap"));
        assert_eq!(
            Path::new(template),
            Path::new(str_of(&config_mount["mountPath"], "mountPath")).join("cni_network_config"),
            "{name}: CNI_NETWORK_CONFIG_FILE is the mounted key"
        );
        assert!(
            config_mount.get("subPath").is_none(),
            "{name}: a subPath mount never sees ConfigMap updates"
        );
    }

    // The watcher is the init container plus MARGAY_WATCH, nothing else.
    let mut watch_env = env_of(watch);
    assert_eq!(watch_env.remove("MARGAY_WATCH").unwrap()["value"], "true");
    assert_eq!(watch_env, env_of(init), "install-cni-watch's env");
    assert!(!env_of(init).contains_key("MARGAY_WATCH"));
    assert_eq!(watch["volumeMounts"], init["volumeMounts"]);
    assert!(
        watch["resources"]["requests"]["cpu"].is_string()
            && watch["resources"]["requests"]["memory"].is_string(),
        "the watcher requests resources: {}",
        watch["resources"]
    );
}

#[test]
fn the_agent_runs_beside_the_installers_with_its_token_store_socket_and_probes() {
    let test = "the_agent_runs_beside_the_installers_with_its_token_store_socket_and_probes";
    if !yaml_or_skip(test) {
        return;
    }
    let docs = documents();
    let pod = &find(&docs, "DaemonSet", "margay-node")["spec"]["template"]["spec"];
    let agent = container(pod, "containers", "margay-agent");
    let command = list(&agent["command"], "command");
    assert!(str_of(&command[0], "command[0]").ends_with("/margay-agent"));
    assert_eq!(agent["image"], "margay/margay:latest");
    assert_eq!(agent["securityContext"]["privileged"], true);
    let env = env_of(agent);
    assert_eq!(
        env["NODENAME"].pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&Value::from("spec.nodeName"))
    );
    assert_eq!(
        env["HOST_IP"].pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&Value::from("status.hostIP"))
    );
    assert_eq!(
        env["MARGAY_HEALTH_ADDR"]["value"], "$(HOST_IP):9091",
        "health and metrics on the node's own address, not every address"
    );
    assert_eq!(
        agent["envFrom"],
        serde_json::json!([{"configMapRef": {"name": "kubernetes-services-endpoint", "optional": true}}])
    );
    // Every setting the ConfigMap gives the agent is one it accepts (clap
    // checks values from the environment even when only printing the CRD).
    let config = find(&docs, "ConfigMap", "margay-config");
    let mut from_config = Command::new(bin("margay-agent"));
    from_config.arg("--print-crd").env_clear();
    let mut keys = BTreeSet::new();
    for (var, e) in &env {
        if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
            assert_eq!(r["name"], "margay-config", "{var}");
            let key = str_of(&r["key"], var);
            from_config.env(var, str_of(&config["data"][key], key));
            keys.insert(key);
        }
    }
    assert!(
        keys.contains("services"),
        "the services mode comes from the ConfigMap: {keys:?}"
    );
    let out = from_config.output().expect("margay-agent runs");
    assert!(
        out.status.success(),
        "the ConfigMap's values are refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        assert_eq!(agent[probe]["httpGet"]["path"], path);
        assert_eq!(agent[probe]["httpGet"]["port"], 9091);
    }
    let volumes: BTreeMap<&str, &Value> = list(&pod["volumes"], "volumes")
        .iter()
        .map(|v| (str_of(&v["name"], "volume name"), v))
        .collect();
    let mounts: BTreeMap<&str, &Value> = list(&agent["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| (str_of(&m["mountPath"], "mountPath"), m))
        .collect();
    for (path, host, read_only) in [
        ("/etc/cni/net.d", "/etc/cni/net.d", true),
        ("/var/lib/cni", "/var/lib/cni", false),
        ("/run/margay", "/run/margay", false),
        ("/sys/fs/bpf", "/sys/fs/bpf", false),
    ] {
        let m = mounts
            .get(path)
            .unwrap_or_else(|| panic!("the agent does not mount {path}"));
        let v = volumes[str_of(&m["name"], "mount name")];
        assert_eq!(v["hostPath"]["path"], host, "{path}");
        assert_eq!(
            m["readOnly"].as_bool().unwrap_or(false),
            read_only,
            "{path}"
        );
    }
    let token = mounts["/var/run/secrets/kubernetes.io/serviceaccount"];
    let token_volume = str_of(&token["name"], "token volume");
    assert!(volumes[token_volume]["projected"]["sources"][0]["serviceAccountToken"].is_object());
    for field in ["initContainers", "containers"] {
        for c in list(&pod[field], field) {
            if c["name"] != "margay-agent" {
                assert!(
                    list(&c["volumeMounts"], "volumeMounts")
                        .iter()
                        .all(|m| m["name"] != token_volume),
                    "{}: only the agent gets the API token",
                    c["name"]
                );
            }
        }
    }
}

#[test]
fn configmap_template_renders_to_a_margay_conflist_without_portmap() {
    let test = "configmap_template_renders_to_a_margay_conflist_without_portmap";
    if !yaml_or_skip(test) {
        return;
    }
    let docs = documents();
    let cm = find(&docs, "ConfigMap", "margay-config");
    for key in ["pools", "dataplane", "mtu", "log_level"] {
        assert!(cm["data"][key].is_string(), "ConfigMap key {key}");
    }
    assert_eq!(cm["data"]["dataplane"], "bpf");
    let template = str_of(&cm["data"]["cni_network_config"], "cni_network_config");
    for (p, _) in PLACEHOLDERS {
        assert!(template.contains(p), "the template lacks {p}");
    }
    let rendered = render_sample(template);
    assert!(
        !rendered.contains("__"),
        "placeholders the installer does not know:\n{rendered}"
    );
    let conf: Value = serde_json::from_str(&rendered)
        .unwrap_or_else(|e| panic!("the rendered template is not JSON ({e}):\n{rendered}"));
    // containerd 1.6 (Debian 12) takes no 1.1.0 result; newer runtimes
    // pick 1.1.0 from cniVersions.
    assert_eq!(conf["cniVersion"], "1.0.0");
    assert_eq!(conf["cniVersions"], serde_json::json!(["1.0.0", "1.1.0"]));
    assert!(conf["name"].is_string());
    let plugins = list(&conf["plugins"], "plugins");
    let margay = plugins
        .iter()
        .find(|p| p["type"] == "margay")
        .expect("a margay plugin");
    assert_eq!(margay["ipam"]["type"], "margay-ipam");
    assert_eq!(
        margay["ipam"]["datastore"], "kubernetes",
        "nodes share the pools: blocks are claimed in the API"
    );
    assert_eq!(
        margay["ipam"]["pools"],
        serde_json::json!(["10.244.0.0/16", "fd00:244::/64"])
    );
    assert_eq!(margay["mtu"], 1450);
    assert_eq!(margay["nodename"], "node-a");
    assert_eq!(margay["dataplane"], "bpf");
    assert_eq!(margay["bpf_root"], "/sys/fs/bpf/margay");
    assert_eq!(margay["ipam"]["data_dir"], "/var/lib/cni/margay");
    for p in plugins {
        assert_ne!(p["type"], "portmap", "hostPorts are refused in bpf mode");
        assert!(
            p.pointer("/capabilities/portMappings").is_none(),
            "no plugin offers portMappings: {p}"
        );
    }
}

/// The DaemonSet's env, as kubelet resolves it, given to the real
/// margay-install (host directories moved into a temp dir, dry run): every
/// variable is one it reads, and it accepts the configuration.
#[test]
fn margay_install_accepts_the_daemonset_configuration() {
    let test = "margay_install_accepts_the_daemonset_configuration";
    if !yaml_or_skip(test) {
        return;
    }
    let docs = documents();
    let cm = find(&docs, "ConfigMap", "margay-config");
    let pod = &find(&docs, "DaemonSet", "margay-node")["spec"]["template"]["spec"];
    let installer = bin("margay-install");

    let help = Command::new(&installer).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for c in [
        container(pod, "initContainers", "install-cni"),
        container(pod, "containers", "install-cni-watch"),
    ] {
        for var in env_of(c).keys() {
            assert!(
                help.contains(&format!("[env: {var}=")) || help.contains(&format!("[env: {var}]")),
                "{}: margay-install does not read {var}:\n{help}",
                c["name"]
            );
        }
    }

    let node = tempfile::tempdir().unwrap();
    let mut env = resolved_env(
        container(pod, "initContainers", "install-cni"),
        cm,
        "node-a",
    );
    let template = node.path().join("cni_network_config");
    std::fs::write(
        &template,
        str_of(&cm["data"]["cni_network_config"], "template"),
    )
    .unwrap();
    for (var, path) in [
        ("CNI_BIN_DIR", node.path().join("opt/cni/bin")),
        ("CNI_CONF_DIR", node.path().join("etc/cni/net.d")),
        ("CNI_NETWORK_CONFIG_FILE", template),
        ("MARGAY_SOURCE_DIR", bin_dir()),
    ] {
        assert!(env.contains_key(var), "{var} is set in the DaemonSet");
        env.insert(var.to_string(), path.to_string_lossy().into_owned());
    }
    env.insert("MARGAY_DRY_RUN".into(), "true".into());
    let out = Command::new(&installer)
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprint!("{stdout}");
    assert!(
        out.status.success(),
        "margay-install refuses the DaemonSet's configuration:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("would write") && stdout.contains("10-margay.conflist"),
        "{stdout}"
    );
    assert!(
        !node.path().join("etc/cni/net.d").exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn dockerfile_builds_the_image_the_daemonset_runs() {
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("the workspace pins rust-version")
        .trim_matches('"');
    let pinned = format!("ARG RUST_VERSION={rust_version}");
    for needle in [
        &pinned,
        "FROM rust:${RUST_VERSION}-bookworm AS builder",
        "clang-19",
        "libbpf-dev",
        "--locked",
        "-p margay-plugin",
        "-p margay-ipam",
        "-p margay-ctl",
        "-p margay-install",
        "FROM debian:bookworm-slim",
        "iproute2",
        "/opt/margay/bin",
        r#"ENTRYPOINT ["/opt/margay/bin/margay-install"]"#,
    ] {
        assert!(
            dockerfile.contains(needle),
            "deploy/Dockerfile lacks {needle:?}"
        );
    }
    for binary in ["margay", "margay-ipam", "margayctl", "margay-install"] {
        assert!(
            dockerfile.contains(&format!("/{binary} "))
                || dockerfile.contains(&format!("/{binary}\n")),
            "deploy/Dockerfile does not ship {binary}"
        );
    }
    let ignore = std::fs::read_to_string(deploy().join("Dockerfile.dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves target/ out"
    );
}
