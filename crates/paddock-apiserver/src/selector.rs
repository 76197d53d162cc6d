//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` take them.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str) -> Result<String, String> {
    let ok = !k.is_empty()
        && k.len() <= 317
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b));
    if ok {
        Ok(k.to_owned())
    } else {
        Err(format!("invalid label key {k:?}"))
    }
}

fn check_value(v: &str) -> Result<String, String> {
    let ok = v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!("invalid label value {v:?}"))
    }
}

fn set_values(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set of values, found {rest:?}"))?;
    inner.split(',').map(|v| check_value(v.trim())).collect()
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                LabelReq::NotExists(check_key(k.trim())?)
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotIn(check_key(k.trim())?, vec![check_value(v.trim())?])
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                LabelReq::In(check_key(k.trim())?, vec![check_value(v.trim())?])
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                LabelReq::NotIn(check_key(k.trim())?, set_values(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                LabelReq::In(check_key(k.trim())?, set_values(rest)?)
            } else {
                LabelReq::Exists(check_key(part)?)
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `key=value` pairs an object must carry (terms an index can answer).
    pub fn exact(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|r| match r {
            LabelReq::In(k, vs) if vs.len() == 1 => Some((k.as_str(), vs[0].as_str())),
            _ => None,
        })
    }
}

/// A parsed field selector: `path=value` and `path!=value` terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses `s`, accepting only the paths in `allowed` (and the metadata ones).
    pub fn parse(s: &str, allowed: &[&str]) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, eq, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (p, true, v)
            } else {
                return Err(format!(
                    "invalid field selector term {part:?}: expected path=value or path!=value"
                ));
            };
            let path = path.trim();
            if !(path == "metadata.name" || path == "metadata.namespace" || allowed.contains(&path))
            {
                return Err(format!("field label not supported: {path}"));
            }
            terms.push((path.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_with(|path| field_value(obj, path))
    }

    /// Whether the fields `get` gives (by path) satisfy every term.
    pub fn matches_with<S: AsRef<str>>(&self, get: impl Fn(&str) -> S) -> bool {
        self.0
            .iter()
            .all(|(path, eq, want)| (get(path).as_ref() == want) == *eq)
    }

    /// The `path=value` terms (those an index can answer).
    pub fn equals(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter(|(_, eq, _)| *eq)
            .map(|(p, _, v)| (p.as_str(), v.as_str()))
    }

    /// The name this selector pins, if it is `metadata.name=<name>`.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, eq, _)| p == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

/// A field of an object as field selectors compare it: strings as they
/// are, absent and null as the empty string, anything else as JSON. The
/// one field label that is not its path, an Event's `source`, is
/// `source.component`, as in Kubernetes.
pub fn field_value(obj: &Value, path: &str) -> String {
    let path = if path == "source" {
        "source.component"
    } else {
        path
    };
    match path.split('.').try_fold(obj, |v, seg| v.get(seg)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// Labels of an object as a map.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn label_forms() {
        let s = LabelSelector::parse("env=prod,tier in (web, api),!legacy,team,zone notin (z1)")
            .unwrap();
        assert!(s.matches(&l(&[("env", "prod"), ("tier", "api"), ("team", "x")])));
        assert!(!s.matches(&l(&[("env", "prod"), ("tier", "db"), ("team", "x")])));
        assert!(!s.matches(&l(&[
            ("env", "prod"),
            ("tier", "web"),
            ("team", "x"),
            ("legacy", "")
        ])));
        assert!(!s.matches(&l(&[
            ("env", "prod"),
            ("tier", "web"),
            ("team", "x"),
            ("zone", "z1")
        ])));
        assert!(LabelSelector::parse("a!=b").unwrap().matches(&l(&[])));
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn an_events_source_is_its_component() {
        let ev = json!({"source": {"component": "paddock-controllers", "host": "h1"}});
        let f = FieldSelector::parse("source=paddock-controllers", &["source"]).unwrap();
        assert!(f.matches(&ev));
        assert!(!f.matches(&json!({"source": {"component": "kubelet"}})));
    }

    #[test]
    fn field_forms() {
        let obj = json!({"metadata": {"name": "m1"}, "spec": {"hostName": "h1", "cpu": 2}});
        let f =
            FieldSelector::parse("spec.hostName=h1,metadata.name!=m2", &["spec.hostName"]).unwrap();
        assert!(f.matches(&obj));
        assert!(
            !FieldSelector::parse("spec.hostName=h2", &["spec.hostName"])
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.hostName=", &["spec.hostName"])
                .unwrap()
                .matches(&json!({"spec": {}}))
        );
        assert_eq!(
            FieldSelector::parse("spec.cpu=2", &[]).unwrap_err(),
            "field label not supported: spec.cpu"
        );
        assert_eq!(
            FieldSelector::parse("metadata.name=x", &[])
                .unwrap()
                .pinned_name(),
            Some("x")
        );
    }
}
