//! Label selectors, as operators know them from Kubernetes: `matchLabels` plus
//! `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`. All requirements
//! must hold; an empty selector matches everything.
//!
//! [`LabelSelector::parse`] reads Kubernetes' string form (`app=pos,tier!=db,env in (a,b),
//! !canary`), as the API's `labelSelector` parameter and the CLI's `-l` take it; `Display`
//! writes it back.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, crate::openapi::LabelValue>))]
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::LabelKey))]
    pub key: String,
    pub operator: SelectorOperator,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<crate::openapi::LabelValue>, max_items = 64))]
    #[serde(default)]
    pub values: Vec<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Longest selector string [`LabelSelector::parse`] reads.
pub const MAX_SELECTOR_LEN: usize = 4096;
/// Most requirements, and most values in one `in`/`notin` set.
pub const MAX_SELECTOR_TERMS: usize = 64;

/// Why a selector string was refused; the message says where and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorParseError(pub String);

impl LabelSelector {
    /// Parses the Kubernetes string form: requirements separated by commas, each `key`,
    /// `!key`, `key=value` (or `==`), `key!=value`, `key in (v1,v2)` or `key notin (v1,v2)`.
    /// Every form becomes a match expression (`!=` and `notin` also match objects without
    /// the key, as in Kubernetes). Keys and values follow the label rules.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorParseError> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(SelectorParseError(format!(
                "the selector is {} bytes long, more than {MAX_SELECTOR_LEN}",
                text.len()
            )));
        }
        let mut p = Parser { text, pos: 0 };
        let mut sel = LabelSelector::default();
        p.skip_spaces();
        if p.at_end() {
            return Ok(sel);
        }
        loop {
            if sel.match_expressions.len() == MAX_SELECTOR_TERMS {
                return Err(p.error(&format!("more than {MAX_SELECTOR_TERMS} requirements")));
            }
            sel.match_expressions.push(p.requirement()?);
            p.skip_spaces();
            if p.at_end() {
                return Ok(sel);
            }
            p.expect(',')?;
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos == self.text.len()
    }

    fn skip_spaces(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn error(&self, what: &str) -> SelectorParseError {
        let near: String = self.rest().chars().take(20).collect();
        if near.is_empty() {
            SelectorParseError(format!("at the end of the selector: {what}"))
        } else {
            SelectorParseError(format!("at character {} ({near:?}): {what}", self.pos + 1))
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), SelectorParseError> {
        self.skip_spaces();
        if self.eat(&c.to_string()) { Ok(()) } else { Err(self.error(&format!("expected '{c}'"))) }
    }

    /// A run of label characters (possibly empty).
    fn word(&mut self) -> &str {
        let start = self.pos;
        let n = self
            .rest()
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
            .count();
        self.pos += n;
        &self.text[start..self.pos]
    }

    fn key(&mut self) -> Result<String, SelectorParseError> {
        self.skip_spaces();
        let at = self.pos;
        let key = self.word().to_string();
        if key.is_empty() {
            return Err(self.error("expected a label key"));
        }
        if let Some(problem) = crate::validate::label_problem(&key, "") {
            self.pos = at;
            return Err(self.error(&problem));
        }
        Ok(key)
    }

    fn value(&mut self) -> Result<String, SelectorParseError> {
        self.skip_spaces();
        let at = self.pos;
        let value = self.word().to_string();
        if value.contains('/') || crate::validate::label_problem("k", &value).is_some() {
            self.pos = at;
            return Err(self.error(&format!(
                "label value {value:?} must be empty or 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
            )));
        }
        Ok(value)
    }

    fn requirement(&mut self) -> Result<SelectorRequirement, SelectorParseError> {
        self.skip_spaces();
        if self.eat("!") {
            let key = self.key()?;
            return Ok(SelectorRequirement { key, operator: SelectorOperator::DoesNotExist, values: vec![] });
        }
        let key = self.key()?;
        self.skip_spaces();
        let one = |key: String, operator, value| SelectorRequirement { key, operator, values: vec![value] };
        if self.eat("!=") {
            return Ok(one(key, SelectorOperator::NotIn, self.value()?));
        }
        if self.eat("==") || self.eat("=") {
            return Ok(one(key, SelectorOperator::In, self.value()?));
        }
        // `in` and `notin` need a space or a parenthesis after them, so a key such as
        // `index` is never read as `in` + `dex`.
        let set_operator = |rest: &str, word: &str| {
            rest.strip_prefix(word).is_some_and(|after| after.starts_with(['(', ' ', '\t']))
        };
        let operator = if set_operator(self.rest(), "notin") {
            self.pos += "notin".len();
            SelectorOperator::NotIn
        } else if set_operator(self.rest(), "in") {
            self.pos += "in".len();
            SelectorOperator::In
        } else if self.at_end() || self.rest().starts_with(',') {
            return Ok(SelectorRequirement { key, operator: SelectorOperator::Exists, values: vec![] });
        } else {
            return Err(self.error("expected '=', '==', '!=', 'in', 'notin', ',' or the end"));
        };
        self.expect('(')?;
        self.skip_spaces();
        if self.rest().starts_with(')') {
            return Err(self.error("a set needs at least one value"));
        }
        let mut values = Vec::new();
        loop {
            if values.len() == MAX_SELECTOR_TERMS {
                return Err(self.error(&format!("more than {MAX_SELECTOR_TERMS} values in one set")));
            }
            values.push(self.value()?);
            self.skip_spaces();
            if self.eat(")") {
                break;
            }
            self.expect(',')?;
        }
        Ok(SelectorRequirement { key, operator, values })
    }
}

impl std::fmt::Display for LabelSelector {
    /// The Kubernetes string form, which [`LabelSelector::parse`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                SelectorOperator::Exists => r.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", r.key),
                SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
                SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn parses_the_kubernetes_string_form() {
        use SelectorOperator::*;
        let sel = LabelSelector::parse("app=pos, tier!=db,env in (a, b),!canary,zone notin(x),gpu,k==v,e=")
            .unwrap();
        assert_eq!(
            sel.match_expressions,
            vec![
                req("app", In, &["pos"]),
                req("tier", NotIn, &["db"]),
                req("env", In, &["a", "b"]),
                req("canary", DoesNotExist, &[]),
                req("zone", NotIn, &["x"]),
                req("gpu", Exists, &[]),
                req("k", In, &["v"]),
                req("e", In, &[""]),
            ]
        );
        assert!(sel.matches(&labels(&[("app", "pos"), ("env", "b"), ("gpu", "1"), ("k", "v"), ("e", "")])));
        assert!(!sel.matches(&labels(&[
            ("app", "pos"),
            ("env", "b"),
            ("gpu", "1"),
            ("k", "v"),
            ("e", ""),
            ("canary", "")
        ])));
        assert_eq!(LabelSelector::parse("  ").unwrap(), LabelSelector::default());
        // Keys that start like the set operators are keys.
        let sel = LabelSelector::parse("index=1,notinteresting").unwrap();
        assert_eq!(sel.match_expressions, vec![req("index", In, &["1"]), req("notinteresting", Exists, &[])]);
        let sel = LabelSelector::parse("example.com/role in (pos)").unwrap();
        assert_eq!(sel.match_expressions[0].key, "example.com/role");
    }

    #[test]
    fn refuses_bad_selectors_saying_where() {
        for (text, says) in [
            ("app=", ""),
            ("app=pos,", "expected a label key"),
            ("app in (a,b", "expected ','"),
            ("app in ()", "at least one value"),
            ("app > 3", "expected '='"),
            ("-app=x", "label key"),
            ("app=-x", "label value"),
            ("app=a/b", "label value"),
            (",", "expected a label key"),
            ("a b", "expected '='"),
        ] {
            match LabelSelector::parse(text) {
                // An empty value is a value.
                Ok(sel) if says.is_empty() => {
                    assert_eq!(sel.match_expressions, vec![req("app", SelectorOperator::In, &[""])])
                }
                Ok(sel) => panic!("{text:?} parsed as {sel:?}"),
                Err(e) => assert!(e.0.contains(says), "{text:?}: {e}"),
            }
        }
        let long = "a,".repeat(MAX_SELECTOR_TERMS) + "a";
        assert!(LabelSelector::parse(&long).unwrap_err().0.contains("requirements"));
        assert!(LabelSelector::parse(&"a".repeat(MAX_SELECTOR_LEN + 1)).is_err());
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9]{0,6}",
            "[a-z]{1,4}\\.example/[a-z][a-z0-9]{0,4}",
            Just("in".to_string()),
            Just("notin".to_string()),
        ]
    }

    fn requirement() -> impl Strategy<Value = SelectorRequirement> {
        let value = "[a-z0-9]([a-z0-9._-]{0,4}[a-z0-9])?";
        (key(), 0..4u8, proptest::collection::vec(value, 1..4)).prop_map(|(key, op, values)| {
            let operator = [
                SelectorOperator::In,
                SelectorOperator::NotIn,
                SelectorOperator::Exists,
                SelectorOperator::DoesNotExist,
            ][op as usize];
            let values = if matches!(operator, SelectorOperator::Exists | SelectorOperator::DoesNotExist) {
                vec![]
            } else {
                values
            };
            SelectorRequirement { key, operator, values }
        })
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(reqs in proptest::collection::vec(requirement(), 0..8)) {
            let sel = LabelSelector { match_labels: BTreeMap::new(), match_expressions: reqs };
            prop_assert_eq!(LabelSelector::parse(&sel.to_string()).unwrap(), sel);
        }

        #[test]
        fn parse_never_panics(text in "[a-z!=,() ./-]{0,40}") {
            let _ = LabelSelector::parse(&text);
        }
    }
}
