//! The conflist template and its placeholders.

use ipnetwork::IpNetwork;

/// What the placeholders stand for.
#[derive(Debug, Clone)]
pub struct Values {
    pub nodename: String,
    pub mtu: u32,
    pub pools: Vec<IpNetwork>,
    pub dataplane: String,
    pub log_level: String,
    pub bpf_root: String,
    pub ipam_data_dir: String,
}

/// Every placeholder, with how it is rendered.
pub fn placeholders(v: &Values) -> [(&'static str, String); 7] {
    let pools: Vec<String> = v.pools.iter().map(ToString::to_string).collect();
    [
        ("__NODENAME__", v.nodename.clone()),
        ("__CNI_MTU__", v.mtu.to_string()),
        (
            "__POOLS__",
            serde_json::to_string(&pools).expect("strings serialize"),
        ),
        ("__DATAPLANE__", v.dataplane.clone()),
        ("__LOG_LEVEL__", v.log_level.clone()),
        ("__BPF_ROOT__", v.bpf_root.clone()),
        ("__IPAM_DATA_DIR__", v.ipam_data_dir.clone()),
    ]
}

/// The conflist installed when no template is given.
pub const DEFAULT_TEMPLATE: &str = r#"{
  "cniVersion": "1.0.0",
  "cniVersions": ["1.0.0", "1.1.0"],
  "name": "k8s-pod-network",
  "plugins": [
    {
      "type": "margay",
      "dataplane": "__DATAPLANE__",
      "mtu": __CNI_MTU__,
      "nodename": "__NODENAME__",
      "log_level": "__LOG_LEVEL__",
      "bpf_root": "__BPF_ROOT__",
      "ipam": {
        "type": "margay-ipam",
        "pools": __POOLS__,
        "data_dir": "__IPAM_DATA_DIR__"
      }
    }
  ]
}
"#;

/// Substitutes every placeholder. Text values are JSON-escaped (they sit
/// inside quotes in the template); an unknown `__WORD__` left over is
/// reported by validation, not guessed at.
pub fn render(template: &str, v: &Values) -> String {
    placeholders(v)
        .iter()
        .fold(template.to_string(), |out, (name, value)| {
            let escaped = match *name {
                "__CNI_MTU__" | "__POOLS__" => value.clone(),
                _ => {
                    let quoted = serde_json::to_string(value).expect("strings serialize");
                    quoted[1..quoted.len() - 1].to_string()
                }
            };
            out.replace(name, &escaped)
        })
}

/// Placeholder-looking words left in rendered text.
pub fn leftovers(rendered: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = rendered;
    while let Some(start) = rest.find("__") {
        let after = &rest[start + 2..];
        match after.find("__") {
            Some(end)
                if end > 0
                    && after[..end]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()) =>
            {
                found.push(format!("__{}__", &after[..end]));
                rest = &after[end + 2..];
            }
            _ => rest = after,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        Values {
            nodename: "node\"a".into(),
            mtu: 9000,
            pools: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            dataplane: "linux".into(),
            log_level: "debug".into(),
            bpf_root: "/sys/fs/bpf/x".into(),
            ipam_data_dir: "/var/lib/x".into(),
        }
    }

    #[test]
    fn every_placeholder_renders_into_json() {
        let out = render(DEFAULT_TEMPLATE, &values());
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let p = &doc["plugins"][0];
        assert_eq!(p["nodename"], "node\"a", "escaped, not broken");
        assert_eq!(p["mtu"], 9000);
        assert_eq!(
            p["ipam"]["pools"],
            serde_json::json!(["10.244.0.0/16", "fd00::/64"])
        );
        assert_eq!(p["dataplane"], "linux");
        assert_eq!(p["log_level"], "debug");
        assert_eq!(p["bpf_root"], "/sys/fs/bpf/x");
        assert_eq!(p["ipam"]["data_dir"], "/var/lib/x");
        assert!(leftovers(&out).is_empty());
        for (name, _) in placeholders(&values()) {
            assert!(
                DEFAULT_TEMPLATE.contains(name),
                "{name} is in the default template"
            );
        }
    }

    #[test]
    fn unknown_placeholders_are_found() {
        assert_eq!(
            leftovers(r#"{"a": "__NODE_NAME__", "b": "x__y", "c": "__"}"#),
            ["__NODE_NAME__"]
        );
    }
}
