//! Label selectors, as operators know them from Kubernetes: `matchLabels` plus
//! `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`. All requirements
//! must hold; an empty selector matches everything.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl SelectorRequirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn match_labels_and_expressions_all_must_hold() {
        let sel = LabelSelector {
            match_labels: labels(&[("role", "pos")]),
            match_expressions: vec![
                SelectorRequirement {
                    key: "site".into(),
                    operator: SelectorOperator::In,
                    values: vec!["s1".into(), "s2".into()],
                },
                SelectorRequirement {
                    key: "quarantine".into(),
                    operator: SelectorOperator::DoesNotExist,
                    values: vec![],
                },
            ],
        };
        assert!(sel.matches(&labels(&[("role", "pos"), ("site", "s2")])));
        assert!(!sel.matches(&labels(&[("role", "pos"), ("site", "s3")])));
        assert!(!sel.matches(&labels(&[("role", "kiosk"), ("site", "s1")])));
        assert!(!sel.matches(&labels(&[("role", "pos"), ("site", "s1"), ("quarantine", "")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn not_in_matches_missing_key() {
        let r = SelectorRequirement {
            key: "tier".into(),
            operator: SelectorOperator::NotIn,
            values: vec!["canary".into()],
        };
        assert!(r.matches(&labels(&[])));
        assert!(!r.matches(&labels(&[("tier", "canary")])));
    }
}
