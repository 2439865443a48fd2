//! Network configuration (what a plugin reads on stdin) and configuration
//! lists (what a runtime reads from the conf dir).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::env::is_valid_identifier;
use crate::error::{CniError, Code};
use crate::result::Dns;
use crate::version::CniVersion;

/// The fields every plugin's configuration has, whatever its type.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        deserialize_with = "null_is_empty"
    )]
    valid_attachments: Option<Vec<AttachmentId>>,
    /// The 1.1.0 spec text used this name by mistake; libcni sends both.
    #[serde(
        rename = "cni.dev/attachments",
        default,
        deserialize_with = "null_is_empty"
    )]
    attachments: Option<Vec<AttachmentId>>,
}

/// libcni writes an empty attachment list as `null`: the key is there, the
/// list is empty. Only an absent key means "not said".
fn null_is_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<AttachmentId>>, D::Error> {
    Ok(Some(
        Option::<Vec<AttachmentId>>::deserialize(d)?.unwrap_or_default(),
    ))
}

/// One attachment GC must keep.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentId {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// `runtimeConfig`: the capability arguments a runtime passes. Only the ones
/// Margay reads are typed; the rest are kept so chained plugins see them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// Capability `ips`: addresses the runtime asks for, with or without prefix.
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl NetConf {
    /// Parses and checks the common fields of a plugin's stdin.
    pub fn parse(raw: &Value) -> Result<NetConf, CniError> {
        let conf = NetConf::deserialize(raw).map_err(|e| {
            CniError::new(Code::DecodeFailure, "network configuration is not valid").with_details(e)
        })?;
        validate_network_name(&conf.name)?;
        Ok(conf)
    }

    pub fn version(&self) -> Result<CniVersion, CniError> {
        self.cni_version.parse()
    }

    /// The attachments a GC must keep: `cni.dev/valid-attachments`, or the
    /// misspelt `cni.dev/attachments` some runtimes send instead.
    pub fn valid_attachments(&self) -> Option<&[AttachmentId]> {
        self.valid_attachments
            .as_deref()
            .or(self.attachments.as_deref())
    }

    /// Addresses requested through the `ips` capability or `args.cni.ips`.
    pub fn requested_ips(&self) -> Vec<String> {
        let from_args = self
            .args
            .as_ref()
            .and_then(|a| a.pointer("/cni/ips"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from));
        self.runtime_config
            .ips
            .iter()
            .cloned()
            .chain(from_args)
            .collect()
    }
}

pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if is_valid_identifier(name) {
        Ok(())
    } else {
        Err(CniError::invalid_config(format!(
            "network name {name:?} is invalid: it must start with a letter or digit \
             followed by letters, digits, '_', '.' or '-'"
        )))
    }
}

/// A configuration list (`.conflist`), as a runtime loads it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NetConfList {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(
        rename = "cniVersions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cni_versions: Option<Vec<String>>,
    pub name: String,
    #[serde(rename = "disableCheck", default)]
    pub disable_check: bool,
    #[serde(rename = "disableGC", default)]
    pub disable_gc: bool,
    pub plugins: Vec<Value>,
}

impl NetConfList {
    /// Parses a conflist and checks what a runtime would: a supported
    /// version, a valid name, and a `type` on every plugin.
    pub fn parse(bytes: &[u8]) -> Result<NetConfList, CniError> {
        let list: NetConfList = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                Code::DecodeFailure,
                "configuration list is not valid JSON of the conflist shape",
            )
            .with_details(e)
        })?;
        list.version()?;
        validate_network_name(&list.name)?;
        if list.plugins.is_empty() {
            return Err(CniError::invalid_config("plugins: the list is empty"));
        }
        for (i, plugin) in list.plugins.iter().enumerate() {
            match plugin.get("type").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && !t.contains('/') => {}
                _ => {
                    return Err(CniError::invalid_config(format!(
                        "plugins[{i}].type is missing or not a plain executable name"
                    )));
                }
            }
        }
        Ok(list)
    }

    /// The version the runtime will use: the highest of `cniVersions` we
    /// implement when that list is given, else `cniVersion`.
    pub fn version(&self) -> Result<CniVersion, CniError> {
        match &self.cni_versions {
            Some(list) if !list.is_empty() => CniVersion::highest_common(list).ok_or_else(|| {
                CniError::new(
                    Code::IncompatibleVersion,
                    format!("none of cniVersions {list:?} is supported"),
                )
            }),
            _ => self.cni_version.parse(),
        }
    }

    /// Builds the stdin of plugin `index` as libcni does: the list's name and
    /// version injected, `runtimeConfig` narrowed to the capabilities the
    /// plugin declares, `prevResult` when there is one.
    pub fn plugin_config(
        &self,
        index: usize,
        runtime_config: &BTreeMap<String, Value>,
        prev_result: Option<&Value>,
    ) -> Result<Value, CniError> {
        let mut conf = self.plugins[index].clone();
        let obj = conf.as_object_mut().ok_or_else(|| {
            CniError::invalid_config(format!("plugins[{index}] is not a JSON object"))
        })?;
        obj.insert("name".into(), self.name.clone().into());
        obj.insert("cniVersion".into(), self.version()?.as_str().into());
        let capabilities: Vec<String> = obj
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|caps| {
                caps.iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let narrowed: serde_json::Map<String, Value> = runtime_config
            .iter()
            .filter(|(k, _)| capabilities.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !narrowed.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(narrowed));
        }
        if let Some(prev) = prev_result {
            obj.insert("prevResult".into(), prev.clone());
        }
        Ok(conf)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn gc_accepts_either_attachment_key() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let raw = json!({"cniVersion": "1.1.0", "name": "n", "type": "t",
                key: [{"containerID": "c1", "ifname": "eth0"}]});
            let conf = NetConf::parse(&raw).unwrap();
            let valid = conf.valid_attachments().unwrap();
            assert_eq!(valid[0].container_id, "c1", "{key}");
        }
        let none = json!({"cniVersion": "1.1.0", "name": "n", "type": "t"});
        assert!(NetConf::parse(&none).unwrap().valid_attachments().is_none());
        let null = json!({"cniVersion": "1.1.0", "name": "n", "type": "t",
            "cni.dev/valid-attachments": null});
        assert_eq!(
            NetConf::parse(&null).unwrap().valid_attachments(),
            Some(&[][..])
        );
    }

    #[test]
    fn invalid_network_names_are_code_7_and_missing_fields_code_6() {
        let bad = json!({"cniVersion": "1.1.0", "name": "bad name", "type": "t"});
        let e = NetConf::parse(&bad).unwrap_err();
        assert_eq!(e.code, Code::InvalidNetworkConfig);
        assert!(e.msg.contains("network name"));
        let missing = json!({"cniVersion": "1.1.0", "type": "t"});
        assert_eq!(
            NetConf::parse(&missing).unwrap_err().code,
            Code::DecodeFailure
        );
    }

    #[test]
    fn requested_ips_come_from_runtime_config_and_args() {
        let raw = json!({"cniVersion": "1.1.0", "name": "n", "type": "t",
            "runtimeConfig": {"ips": ["10.0.0.5/24"]},
            "args": {"cni": {"ips": ["10.0.0.6"]}}});
        let conf = NetConf::parse(&raw).unwrap();
        assert_eq!(conf.requested_ips(), vec!["10.0.0.5/24", "10.0.0.6"]);
    }

    #[test]
    fn conflist_version_negotiation_and_plugin_config() {
        let list = NetConfList::parse(
            br#"{"cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0", "2.0.0"], "name": "net",
                "plugins": [{"type": "margay", "capabilities": {"ips": true}}, {"type": "tuning"}]}"#,
        )
        .unwrap();
        assert_eq!(list.version().unwrap(), CniVersion::V1_1_0);
        let rc: BTreeMap<String, Value> = [
            ("ips".to_string(), json!(["10.0.0.5"])),
            ("portMappings".to_string(), json!([])),
        ]
        .into();
        let first = list.plugin_config(0, &rc, None).unwrap();
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.1.0");
        assert_eq!(first["runtimeConfig"], json!({"ips": ["10.0.0.5"]}));
        let second = list.plugin_config(1, &rc, Some(&json!({"x": 1}))).unwrap();
        assert!(second.get("runtimeConfig").is_none());
        assert_eq!(second["prevResult"]["x"], 1);
    }

    #[test]
    fn bad_conflists_are_named() {
        let cases: [(&[u8], Code); 4] = [
            (b"{", Code::DecodeFailure),
            (
                br#"{"cniVersion": "0.3.1", "name": "n", "plugins": [{"type": "x"}]}"#,
                Code::IncompatibleVersion,
            ),
            (
                br#"{"cniVersion": "1.0.0", "name": "n", "plugins": []}"#,
                Code::InvalidNetworkConfig,
            ),
            (
                br#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}"#,
                Code::InvalidNetworkConfig,
            ),
        ];
        for (bytes, code) in cases {
            assert_eq!(NetConfList::parse(bytes).unwrap_err().code, code);
        }
    }
}
