//! Duplicate fields in a JSON request body. `serde_json` keeps the last of
//! two equal keys and says nothing; Kubernetes warns about each one
//! (`fieldValidation=Warn`, the default) or refuses the request (`Strict`),
//! naming it by its path: `duplicate field "spec.replicas"`.
//!
//! A second, read-only pass over the body: it builds nothing but the set of
//! keys of the object it is in, so it costs little beside the real decode.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The paths of the fields that occur more than once in one object of
/// `body`, in the order they are met (`metadata.labels.a`, `items[2].x`).
/// A body that is not JSON has none: the real decode reports that.
pub fn find(body: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = Walk {
        path: String::new(),
        found: &mut found,
    };
    if seed.deserialize(&mut de).is_err() {
        return Vec::new();
    }
    found
}

/// One value at `path`, walked for duplicate keys.
struct Walk<'a> {
    path: String,
    found: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(Walk {
                path: format!("{}[{i}]", self.path),
                found: &mut *self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                self.found.push(path.clone());
            }
            map.next_value_seed(Walk {
                path,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_duplicate_by_its_path() {
        let body = br#"{"apiVersion":"v1","kind":"ConfigMap","kind":"ConfigMap",
            "metadata":{"name":"a","labels":{"x":"1","x":"2"}},
            "items":[{"k":1},{"k":1,"k":2}],"data":{"n":{"m":[1,2,{"q":null,"q":true}]}}}"#;
        assert_eq!(
            find(body),
            vec!["kind", "metadata.labels.x", "items[1].k", "data.n.m[2].q"]
        );
    }

    #[test]
    fn no_duplicates_and_not_json_find_nothing() {
        assert!(find(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#).is_empty());
        assert!(find(b"{not json").is_empty());
        assert!(find(b"[1,2,3]").is_empty());
        assert!(find(br#""just a string""#).is_empty());
    }
}
