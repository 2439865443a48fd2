//! The `CNI_*` environment of one invocation, validated per verb as the spec
//! asks: what a verb requires must be present, names must be well formed.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{CniError, Code};

/// The verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Variables the verb cannot work without (beyond `CNI_COMMAND`).
    /// DEL tolerates an absent netns: containerd sends none once the
    /// sandbox is gone, and DEL must still release what it can.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[CONTAINERID, NETNS, IFNAME, PATH],
            Command::Del => &[CONTAINERID, IFNAME, PATH],
            Command::Gc | Command::Status => &[PATH],
            Command::Version => &[],
        }
    }
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, CniError> {
        [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Gc,
            Command::Status,
            Command::Version,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_COMMAND {s:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
            )
        })
    }
}

const COMMAND: &str = "CNI_COMMAND";
const CONTAINERID: &str = "CNI_CONTAINERID";
const NETNS: &str = "CNI_NETNS";
const IFNAME: &str = "CNI_IFNAME";
const ARGS: &str = "CNI_ARGS";
const PATH: &str = "CNI_PATH";

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(Vec<(String, String)>);

impl CniArgs {
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        raw.split(';')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                )),
            })
            .collect::<Result<_, _>>()
            .map(CniArgs)
    }

    /// The last value given for `key` (later pairs override earlier ones).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE")
    }

    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME")
    }

    pub fn pod_uid(&self) -> Option<&str> {
        self.get("K8S_POD_UID")
    }

    /// The `CNI_ARGS` form, for passing the same arguments to a delegate.
    pub fn to_env_string(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// One attachment of a container to a network, as ADD/DEL/CHECK name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// `None` only on DEL, when the runtime no longer has a namespace.
    pub netns: Option<PathBuf>,
    pub args: CniArgs,
}

/// A validated environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
    /// `CNI_PATH`, split; empty only for VERSION.
    pub cni_path: Vec<PathBuf>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Result<Env, CniError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Validates an environment given as a lookup function (tests pass maps).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        // An empty variable is as good as an absent one for every check here.
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let command: Command = get(COMMAND)
            .ok_or_else(|| CniError::new(Code::InvalidEnvironment, "CNI_COMMAND is not set"))?
            .parse()?;
        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|k| get(k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                format!(
                    "{} requires {}, which {} not set",
                    command.as_str(),
                    missing.join(", "),
                    if missing.len() == 1 { "is" } else { "are" }
                ),
            ));
        }
        let cni_path = get(PATH)
            .map(|p| {
                std::env::split_paths(&p)
                    .filter(|d| !d.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let attachment = match command {
            Command::Add | Command::Del | Command::Check => {
                let container_id = get(CONTAINERID).unwrap_or_default();
                validate_container_id(&container_id)?;
                let ifname = get(IFNAME).unwrap_or_default();
                validate_ifname(&ifname)?;
                Some(Attachment {
                    container_id,
                    ifname,
                    netns: get(NETNS).map(PathBuf::from),
                    args: CniArgs::parse(&get(ARGS).unwrap_or_default())?,
                })
            }
            Command::Gc | Command::Status | Command::Version => None,
        };
        Ok(Env {
            command,
            attachment,
            cni_path,
        })
    }
}

/// Container IDs and network names share one grammar in the spec: an
/// alphanumeric first character, then alphanumerics, `_`, `.` or `-`.
/// Upper case is valid (the archived `cni-plugin` crate wrongly rejects it).
pub fn is_valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if is_valid_identifier(id) {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnvironment,
            format!(
                "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit \
                 followed by letters, digits, '_', '.' or '-'"
            ),
        ))
    }
}

/// Linux interface names: 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is '.' or '..'")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("it contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(r) => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_IFNAME {name:?} is invalid: {r}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    const FULL: [(&str, &str); 6] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "Abc-1.2_3"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IgnoreUnknown=1",
        ),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn add_with_everything_parses() {
        let e = env(&FULL).unwrap();
        assert_eq!(e.command, Command::Add);
        let a = e.attachment.unwrap();
        assert_eq!(a.container_id, "Abc-1.2_3");
        assert_eq!(a.args.pod_namespace(), Some("ns"));
        assert_eq!(a.args.pod_name(), Some("p"));
        assert_eq!(e.cni_path.len(), 2);
    }

    #[test]
    fn every_missing_variable_is_named_with_code_4() {
        for verb in ["ADD", "CHECK", "DEL", "GC", "STATUS"] {
            let cmd: Command = verb.parse().unwrap();
            for missing in cmd.required() {
                let vars: Vec<(&str, &str)> = FULL
                    .iter()
                    .map(|&(k, v)| {
                        if k == "CNI_COMMAND" {
                            (k, verb)
                        } else {
                            (k, v)
                        }
                    })
                    .filter(|(k, _)| k != missing)
                    .collect();
                let err = env(&vars).unwrap_err();
                assert_eq!(
                    err.code,
                    Code::InvalidEnvironment,
                    "{verb} without {missing}"
                );
                assert!(err.msg.contains(missing), "{verb}: {}", err.msg);
            }
        }
        let err = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert!(
            err.msg
                .contains("CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH")
        );
        assert_eq!(env(&[]).unwrap_err().code, Code::InvalidEnvironment);
        assert!(
            env(&[("CNI_COMMAND", "BOGUS")])
                .unwrap_err()
                .msg
                .contains("BOGUS")
        );
    }

    #[test]
    fn del_tolerates_empty_netns_and_version_needs_nothing() {
        let vars: Vec<_> = FULL
            .iter()
            .map(|&(k, v)| match k {
                "CNI_COMMAND" => (k, "DEL"),
                "CNI_NETNS" => (k, ""),
                _ => (k, v),
            })
            .collect();
        assert_eq!(env(&vars).unwrap().attachment.unwrap().netns, None);
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in ["a", "A1", "0abc", "ABC_def.1-2"] {
            assert!(is_valid_identifier(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "a:b", "ä"] {
            assert!(!is_valid_identifier(bad), "{bad}");
        }
        for ok in ["eth0", "net1", "a", "fifteen_chars_x"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen_chars_xx",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            let e = validate_ifname(bad).unwrap_err();
            assert!(e.msg.contains("CNI_IFNAME"), "{bad}");
        }
    }

    #[test]
    fn malformed_args_are_rejected() {
        assert!(CniArgs::parse("A=1;;B=").is_ok());
        assert_eq!(CniArgs::parse("A=1;A=2").unwrap().get("A"), Some("2"));
        for bad in ["novalue", "=x", "A=1;junk"] {
            let e = CniArgs::parse(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnvironment);
            assert!(e.msg.starts_with("CNI_ARGS"));
        }
    }
}
