//! The ADD result. Held in memory in its richest (1.1.0) form and written in
//! the shape of whatever version the runtime asked for.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, Code};
use crate::version::CniVersion;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Always written, as libcni does: some readers require the key.
    #[serde(default)]
    pub dns: Dns,
}

/// `mac` as a CNI result (and `margayctl`) writes it: six lowercase hex
/// pairs joined by `:`.
///
/// ```
/// assert_eq!(margay_conf::result::format_mac(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
/// ```
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for a container interface; empty for a host interface.
    /// Always written: some readers require the key even when it is empty.
    #[serde(default)]
    pub sandbox: String,
    /// 1.1.0.
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// 1.1.0.
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; IPAM plugins leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// 1.1.0: a route scope number as in `ip route` (0 universe, 253 link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

const V1_1_INTERFACE_FIELDS: [&str; 3] = ["mtu", "socketPath", "pciID"];
const V1_1_ROUTE_FIELDS: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// Reads a result of any supported version (a `prevResult` or an IPAM
    /// plugin's reply); 0.4.0's per-IP `version` is derived, so it is dropped.
    pub fn from_value(value: &Value) -> Result<CniResult, CniError> {
        CniResult::deserialize(value).map_err(|e| {
            CniError::new(Code::DecodeFailure, "result is not a valid CNI result").with_details(e)
        })
    }

    /// The result as `version` shapes it, with `cniVersion` set.
    pub fn render(&self, version: CniVersion) -> Value {
        let mut out = serde_json::to_value(self).expect("a result always serializes");
        let obj = out.as_object_mut().expect("a result is an object");
        if version < CniVersion::V1_1_0 {
            strip(obj.get_mut("interfaces"), &V1_1_INTERFACE_FIELDS);
            strip(obj.get_mut("routes"), &V1_1_ROUTE_FIELDS);
        }
        if version == CniVersion::V0_4_0 {
            for ip in obj
                .get_mut("ips")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let v = match ip["address"].as_str() {
                    Some(a) if a.contains(':') => "6",
                    _ => "4",
                };
                ip["version"] = v.into();
            }
        }
        obj.insert("cniVersion".into(), version.as_str().into());
        out
    }
}

fn strip(list: Option<&mut Value>, fields: &[&str]) {
    for item in list.and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(o) = item.as_object_mut() {
            for f in fields {
                o.remove(*f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "mrg0123456789a".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    mtu: Some(1500),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1500),
                    sandbox: "/var/run/netns/x".into(),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.0.5/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                scope: Some(253),
                ..Route::new("169.254.1.1/32".parse().unwrap(), None)
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn shapes_per_version() {
        let r = sample();
        let v11 = r.render(CniVersion::V1_1_0);
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1500);
        assert_eq!(v11["routes"][0]["scope"], 253);
        assert!(v11["ips"][0].get("version").is_none());

        let v10 = r.render(CniVersion::V1_0_0);
        assert!(v10["interfaces"][1].get("mtu").is_none());
        assert!(v10["routes"][0].get("scope").is_none());
        assert_eq!(v10["interfaces"][1]["sandbox"], "/var/run/netns/x");

        let v04 = r.render(CniVersion::V0_4_0);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        assert_eq!(v04["ips"][0]["interface"], 1);
    }

    #[test]
    fn parses_every_version_back() {
        for v in CniVersion::SUPPORTED {
            let back = CniResult::from_value(&sample().render(v)).unwrap();
            assert_eq!(back.ips, sample().ips, "{v}");
        }
        let bad = json!({"ips": [{"address": "not-an-ip"}]});
        assert_eq!(
            CniResult::from_value(&bad).unwrap_err().code,
            Code::DecodeFailure
        );
    }

    /// An independent implementation (the archived `cni-plugin` crate, which
    /// knows up to 1.0.0) must accept what we write.
    #[test]
    fn independent_parser_accepts_our_results() {
        for v in [CniVersion::V0_4_0, CniVersion::V1_0_0] {
            let json = sample().render(v);
            let parsed: cni_plugin::reply::SuccessReply =
                serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{v}: {e}\n{json}"));
            assert_eq!(parsed.ips.len(), 2);
            assert_eq!(parsed.interfaces.len(), 2);
            assert_eq!(parsed.routes.len(), 1);
        }
        let ipam = CniResult {
            interfaces: vec![],
            ..sample()
        }
        .render(CniVersion::V1_0_0);
        let parsed: cni_plugin::reply::IpamSuccessReply = serde_json::from_value(ipam).unwrap();
        assert_eq!(parsed.ips[0].address.to_string(), "10.244.0.5/32");
    }
}
