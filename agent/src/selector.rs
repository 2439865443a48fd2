//! Label selectors (`metav1.LabelSelector`) as the API server reads them:
//! every `matchLabels` pair and every `matchExpressions` requirement must
//! hold; an empty selector selects everything.

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An operator other than `In`,
/// `NotIn`, `Exists` and `DoesNotExist` selects nothing (the API refuses
/// such selectors; nothing here lets one select more than it says).
pub fn matches(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let value = |key: &str| labels.and_then(|l| l.get(key));
    let pairs = selector.match_labels.iter().flatten();
    if !pairs.into_iter().all(|(k, v)| value(k) == Some(v)) {
        return false;
    }
    selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => value(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => value(&e.key).is_some(),
            "DoesNotExist" => value(&e.key).is_none(),
            _ => false,
        }
    })
}

/// A text that two selectors share exactly when they select the same:
/// pairs and requirements sorted, values sorted and each once.
pub fn canonical(selector: &LabelSelector) -> String {
    let mut out = String::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        // BTreeMap: already sorted.
        let _ = write!(out, "{k}={v},");
    }
    let mut requirements: Vec<String> = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|e| {
            let mut values: Vec<&str> = e.values.iter().flatten().map(String::as_str).collect();
            values.sort_unstable();
            values.dedup();
            format!("{} {} ({})", e.key, e.operator, values.join(","))
        })
        .collect();
    requirements.sort_unstable();
    requirements.dedup();
    out.push_str(&requirements.join(";"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector(json: serde_json::Value) -> LabelSelector {
        serde_json::from_value(json).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_and_expressions_select_as_the_api_server_does() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let everything = selector(json!({}));
        assert!(matches(&everything, Some(&web)) && matches(&everything, None));
        let app_web = selector(json!({"matchLabels": {"app": "web"}}));
        assert!(matches(&app_web, Some(&web)));
        assert!(!matches(&app_web, Some(&db)) && !matches(&app_web, None));
        let cases = [
            (
                json!({"key": "app", "operator": "In", "values": ["web", "api"]}),
                true,
                false,
            ),
            (
                json!({"key": "app", "operator": "NotIn", "values": ["db"]}),
                true,
                false,
            ),
            (
                json!({"key": "tier", "operator": "NotIn", "values": ["back"]}),
                true,
                true,
            ),
            (json!({"key": "tier", "operator": "Exists"}), true, false),
            (
                json!({"key": "tier", "operator": "DoesNotExist"}),
                false,
                true,
            ),
            (
                json!({"key": "app", "operator": "Gt", "values": ["1"]}),
                false,
                false,
            ),
        ];
        for (expression, on_web, on_db) in cases {
            let s = selector(json!({"matchExpressions": [expression.clone()]}));
            assert_eq!(
                (matches(&s, Some(&web)), matches(&s, Some(&db))),
                (on_web, on_db),
                "{expression}"
            );
        }
        let both = selector(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["back"]}]}));
        assert!(!matches(&both, Some(&web)), "every part must hold");
    }

    #[test]
    fn selectors_that_select_the_same_read_the_same() {
        let a = selector(json!({"matchLabels": {"b": "2", "a": "1"},
            "matchExpressions": [{"key": "x", "operator": "In", "values": ["q", "p", "q"]},
                                 {"key": "c", "operator": "Exists"}]}));
        let b = selector(json!({"matchLabels": {"a": "1", "b": "2"},
            "matchExpressions": [{"key": "c", "operator": "Exists"},
                                 {"key": "x", "operator": "In", "values": ["p", "q"]}]}));
        assert_eq!(canonical(&a), canonical(&b));
        let c = selector(json!({"matchLabels": {"a": "1"}}));
        assert_ne!(canonical(&a), canonical(&c));
        assert_eq!(canonical(&selector(json!({}))), "");
    }
}
