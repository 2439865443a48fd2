//! CNI spec versions.

use std::fmt;
use std::str::FromStr;

use crate::error::{CniError, Code};

/// A spec version Margay implements. Ordered, so `v >= CniVersion::V1_1_0`
/// reads as "this configuration may use 1.1 features".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Every version Margay implements, oldest first. Nothing older is
    /// claimed: 0.3.x results lack the CHECK/prevResult semantics we rely on.
    pub const SUPPORTED: [CniVersion; 3] = [Self::V0_4_0, Self::V1_0_0, Self::V1_1_0];
    pub const LATEST: CniVersion = Self::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Picks the highest version both sides support from a configuration
    /// list's `cniVersions`, as the 1.1 spec asks runtimes to do.
    pub fn highest_common(candidates: &[String]) -> Option<CniVersion> {
        candidates.iter().filter_map(|v| v.parse().ok()).max()
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, CniError> {
        Self::SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    Code::IncompatibleVersion,
                    format!("cniVersion {s:?} is not supported"),
                )
                .with_details(format!("supported versions: {}", supported_list()))
            })
    }
}

fn supported_list() -> String {
    CniVersion::SUPPORTED
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others_with_code_1() {
        assert_eq!("1.1.0".parse::<CniVersion>().unwrap(), CniVersion::V1_1_0);
        assert_eq!("0.4.0".parse::<CniVersion>().unwrap(), CniVersion::V0_4_0);
        for bad in ["0.3.1", "1.2.0", "", "1.0"] {
            let err = bad.parse::<CniVersion>().unwrap_err();
            assert_eq!(err.code, Code::IncompatibleVersion, "{bad}");
            assert!(err.details.contains("1.1.0"));
        }
    }

    #[test]
    fn highest_common_ignores_unknown_versions() {
        let list = ["0.3.1", "1.0.0", "9.9.9", "0.4.0"].map(String::from);
        assert_eq!(CniVersion::highest_common(&list), Some(CniVersion::V1_0_0));
        assert_eq!(CniVersion::highest_common(&["0.2.0".into()]), None);
    }
}
