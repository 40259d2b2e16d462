//! Kubernetes label-selector matching (`matchLabels` + `matchExpressions`), used to tell
//! whether another mesh's injector webhook would be called for a pod. Semantics follow
//! `k8s.io/apimachinery/pkg/labels`: requirements are ANDed, `NotIn` and `DoesNotExist` match
//! a missing key, and an empty selector matches everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

type Labels = BTreeMap<String, String>;

/// Whether `selector` selects an object with `labels`. An operator this version does not
/// know never matches: a selector we cannot read must not make weft step aside.
pub fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| requirement_matches(requirement, labels))
}

fn requirement_matches(requirement: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Label keys the selector looks at, so a caller can ask whether it is about a given label.
pub fn keys(selector: &LabelSelector) -> impl Iterator<Item = &str> {
    let label_keys = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str());
    let expression_keys = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|r| r.key.as_str());
    label_keys.chain(expression_keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(matches(&LabelSelector::default(), &labels(&[])));
        assert!(matches(&LabelSelector::default(), &labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("a", "1"), ("b", "2")])),
            ..Default::default()
        };
        assert!(matches(
            &selector,
            &labels(&[("a", "1"), ("b", "2"), ("c", "3")])
        ));
        assert!(!matches(&selector, &labels(&[("a", "1")])));
        assert!(!matches(&selector, &labels(&[("a", "1"), ("b", "3")])));
    }

    #[test]
    fn operators_follow_kubernetes() {
        let rev = |v: &str| labels(&[("istio.io/rev", v)]);
        let none = labels(&[]);
        let table = [
            ("In", vec!["asm-1-22"], rev("asm-1-22"), true),
            ("In", vec!["asm-1-22"], rev("stable"), false),
            ("In", vec!["asm-1-22"], none.clone(), false),
            ("NotIn", vec!["asm-1-22"], rev("stable"), true),
            ("NotIn", vec!["asm-1-22"], rev("asm-1-22"), false),
            ("NotIn", vec!["asm-1-22"], none.clone(), true),
            ("Exists", vec![], rev("x"), true),
            ("Exists", vec![], none.clone(), false),
            ("DoesNotExist", vec![], rev("x"), false),
            ("DoesNotExist", vec![], none.clone(), true),
            ("Gt", vec!["1"], rev("2"), false),
        ];
        for (operator, values, object, expected) in table {
            let selector = expression("istio.io/rev", operator, &values);
            assert_eq!(
                matches(&selector, &object),
                expected,
                "{operator} {values:?} on {object:?}"
            );
        }
    }

    #[test]
    fn keys_lists_labels_and_expressions() {
        let mut selector = expression("istio.io/rev", "In", &["x"]);
        selector.match_labels = Some(labels(&[("istio-injection", "enabled")]));
        let keys: Vec<_> = keys(&selector).collect();
        assert_eq!(keys, ["istio-injection", "istio.io/rev"]);
    }
}
