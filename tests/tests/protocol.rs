//! The CNI protocol as every Margay plugin binary speaks it, checked from
//! outside: env validation per verb, decoding errors, version handling,
//! result shapes, and agreement with an independent parser.

use margay_tests::bins::bin;
use margay_tests::process::{self, Output};
use serde_json::{Value, json};

fn conf(version: &str, dir: &std::path::Path) -> Value {
    json!({"cniVersion": version, "name": "proto", "type": "margay", "nodename": "n",
        "ipam": {"type": "margay-ipam", "pools": ["10.90.0.0/24"], "data_dir": dir}})
}

fn full_env(command: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "proto-1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", "IgnoreUnknown=1"),
    ]
}

fn ipam(env: &[(&str, &str)], stdin: &[u8]) -> Output {
    process::run(&bin("margay-ipam"), env, stdin)
}

#[test]
fn version_lists_what_we_implement() {
    let out = ipam(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion": "1.0.0"}"#);
    assert!(out.success);
    assert_eq!(
        out.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    );
    let empty = ipam(&[("CNI_COMMAND", "VERSION")], b"");
    assert_eq!(empty.json()["cniVersion"], "1.1.0");
    let parsed: cni_plugin::reply::VersionReply = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(parsed.supported_versions.len(), 3);
}

#[test]
fn every_missing_variable_is_code_4_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let stdin = serde_json::to_vec(&conf("1.1.0", dir.path())).unwrap();
    let required: [(&str, &[&str]); 5] = [
        (
            "ADD",
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
        ),
        (
            "CHECK",
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
        ),
        ("DEL", &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]),
        ("GC", &["CNI_PATH"]),
        ("STATUS", &["CNI_PATH"]),
    ];
    for (verb, vars) in required {
        for missing in vars {
            let env: Vec<_> = full_env(verb)
                .into_iter()
                .filter(|(k, _)| k != missing)
                .collect();
            let out = ipam(&env, &stdin);
            assert_eq!(out.error_code(), 4, "{verb} without {missing}");
            let reply = out.json();
            assert!(
                reply["msg"].as_str().unwrap().contains(missing),
                "{verb}: {reply}"
            );
            assert_eq!(reply["cniVersion"], "1.1.0");
        }
    }
    // (Without CNI_COMMAND margay-ipam is its inspection tool, by design.)
    assert_eq!(ipam(&[("CNI_COMMAND", "FROB")], &stdin).error_code(), 4);
    assert!(!dir.path().join("store").exists(), "nothing was allocated");
}

#[test]
fn bad_input_gets_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let good = conf("1.1.0", dir.path());
    // (what, env, stdin, expected code, text the reply must contain)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u64, &'a str);
    let cases: Vec<Case> = vec![
        ("bad JSON", full_env("ADD"), b"{not json".to_vec(), 6, "JSON"),
        ("no name", full_env("ADD"), br#"{"cniVersion":"1.1.0","type":"x"}"#.to_vec(), 6, "name"),
        ("unknown version", full_env("ADD"), serde_json::to_vec(&conf("0.3.1", dir.path())).unwrap(), 1, "0.3.1"),
        ("future version", full_env("ADD"), serde_json::to_vec(&conf("2.0.0", dir.path())).unwrap(), 1, "2.0.0"),
        ("bad network name", full_env("ADD"), serde_json::to_vec(&json!({"cniVersion": "1.1.0",
            "name": "has space", "type": "margay", "ipam": good["ipam"]})).unwrap(), 7, "network name"),
        ("bad pool", full_env("ADD"), serde_json::to_vec(&json!({"cniVersion": "1.1.0", "name": "p",
            "type": "margay", "ipam": {"type": "margay-ipam", "pools": ["10.0.0.0/99"]}})).unwrap(), 7, "ipam.pools[0]"),
        ("unknown ipam key", full_env("ADD"), serde_json::to_vec(&json!({"cniVersion": "1.1.0", "name": "p",
            "type": "margay", "ipam": {"type": "margay-ipam", "pools": ["10.0.0.0/24"], "blocksize": 28}})).unwrap(), 2, "ipam.blocksize"),
        ("status below 1.1", vec![("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")],
            serde_json::to_vec(&conf("1.0.0", dir.path())).unwrap(), 1, "STATUS"),
    ];
    for (what, env, stdin, code, needle) in cases {
        let out = ipam(&env, &stdin);
        assert_eq!(out.error_code(), code, "{what}: {}", out.stdout);
        assert!(out.stdout.contains(needle), "{what}: {}", out.stdout);
        assert_eq!(
            out.stdout.lines().count(),
            1,
            "{what}: stdout carries only the reply"
        );
    }
    let mut env = full_env("ADD");
    env[1] = ("CNI_CONTAINERID", "-leading-dash");
    let out = ipam(&env, &serde_json::to_vec(&good).unwrap());
    assert_eq!(out.error_code(), 4);
    assert!(out.stdout.contains("CNI_CONTAINERID"));
    let mut env = full_env("ADD");
    env[3] = ("CNI_IFNAME", "way-too-long-ifname");
    let out = ipam(&env, &serde_json::to_vec(&good).unwrap());
    assert_eq!(out.error_code(), 4);
    assert!(out.stdout.contains("CNI_IFNAME"));
}

#[test]
fn results_take_the_shape_of_the_requested_version_and_parse_independently() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = conf(version, dir.path());
        c["dns"] = json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]});
        let out = ipam(&full_env("ADD"), &serde_json::to_vec(&c).unwrap());
        assert!(out.success, "{version}: {}", out.stdout);
        let reply = out.json();
        assert_eq!(reply["cniVersion"], version);
        assert_eq!(reply["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(
            reply["ips"][0].get("version").is_some(),
            version == "0.4.0",
            "{version}"
        );
        if version != "1.1.0" {
            let parsed: cni_plugin::reply::IpamSuccessReply =
                serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_eq!(parsed.ips[0].address.to_string(), "10.90.0.1/32");
        }
        // DEL, CHECK, GC print nothing at all on success.
        let mut check = c.clone();
        check["prevResult"] = reply;
        let out = ipam(&full_env("CHECK"), &serde_json::to_vec(&check).unwrap());
        assert!(
            out.success && out.stdout.is_empty(),
            "{version} CHECK: {out:?}"
        );
        let out = ipam(&full_env("DEL"), &serde_json::to_vec(&c).unwrap());
        assert!(
            out.success && out.stdout.is_empty(),
            "{version} DEL: {out:?}"
        );
    }
}

#[test]
fn check_without_prev_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = ipam(
        &full_env("CHECK"),
        &serde_json::to_vec(&conf("1.1.0", dir.path())).unwrap(),
    );
    assert_eq!(out.error_code(), 7);
    assert!(out.stdout.contains("prevResult"));
}

#[test]
fn logs_never_reach_stdout_and_go_to_the_log_file_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/ipam.log");
    let mut c = conf("1.1.0", dir.path());
    c["log_level"] = "debug".into();
    c["log_file"] = log.to_str().unwrap().into();
    let out = ipam(&full_env("ADD"), &serde_json::to_vec(&c).unwrap());
    assert!(out.success);
    assert_eq!(out.stdout.lines().count(), 1);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("assigned"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "logs went to the file: {}",
        out.stderr
    );
}
