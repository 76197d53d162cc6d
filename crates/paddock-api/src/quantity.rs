//! Resource quantities as Kubernetes writes them: memory and disk sizes
//! (`512Mi`, `2Gi`, `10G`, `1073741824`) and whole vCPU counts.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of whole virtual CPUs.
pub type Cpu = u32;

/// A size in bytes, written and read as a Kubernetes quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Memory(u64);

/// Why a quantity string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error(
        "{0:?} is not a quantity (expected a number with an optional suffix such as Mi, Gi, M, G)"
    )]
    Malformed(String),
    #[error("{0:?} does not fit in 64 bits")]
    Overflow(String),
}

const BINARY: [(&str, u64); 6] = [
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];
const DECIMAL: [(&str, u64); 6] = [
    ("E", 1_000_000_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

impl Memory {
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }
    pub const fn from_mib(mib: u64) -> Self {
        Self(mib << 20)
    }
    pub const fn from_gib(gib: u64) -> Self {
        Self(gib << 30)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
    /// Whole MiB, rounded down (what QEMU's `-m` takes).
    pub const fn mib(self) -> u64 {
        self.0 >> 20
    }
    pub fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }
    pub fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

impl FromStr for Memory {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, suffix) = s.split_at(split);
        if digits.is_empty() {
            return Err(QuantityError::Malformed(s.to_owned()));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| QuantityError::Overflow(s.to_owned()))?;
        let mult = if suffix.is_empty() {
            1
        } else {
            BINARY
                .iter()
                .chain(DECIMAL.iter())
                .find(|(sfx, _)| *sfx == suffix)
                .map(|(_, m)| *m)
                .ok_or_else(|| QuantityError::Malformed(s.to_owned()))?
        };
        n.checked_mul(mult)
            .map(Memory)
            .ok_or_else(|| QuantityError::Overflow(s.to_owned()))
    }
}

impl fmt::Display for Memory {
    /// The shortest exact form with a binary suffix, as Kubernetes canonicalises.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        for (sfx, m) in BINARY {
            if self.0.is_multiple_of(m) {
                return write!(f, "{}{sfx}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Memory(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for Memory {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes, written as a Kubernetes quantity such as 512Mi or 2Gi.",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}]
        })
    }
    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("2Gi".parse::<Memory>().unwrap(), Memory::from_gib(2));
        assert_eq!("512Mi".parse::<Memory>().unwrap(), Memory::from_mib(512));
        assert_eq!("1G".parse::<Memory>().unwrap().bytes(), 1_000_000_000);
        assert_eq!("1024".parse::<Memory>().unwrap().bytes(), 1024);
        assert_eq!(Memory::from_mib(1536).to_string(), "1536Mi");
        assert_eq!(Memory::from_gib(20).to_string(), "20Gi");
        assert_eq!(Memory::from_bytes(1000).to_string(), "1000");
    }

    #[test]
    fn rejects() {
        assert!("".parse::<Memory>().is_err());
        assert!("Gi".parse::<Memory>().is_err());
        assert!("2GB".parse::<Memory>().is_err());
        assert!("-1Gi".parse::<Memory>().is_err());
        assert!("99999999999Ei".parse::<Memory>().is_err());
    }

    #[test]
    fn serde_round_trip() {
        let m: Memory = serde_json::from_str("\"3Gi\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"3Gi\"");
        let m: Memory = serde_json::from_str("2048").unwrap();
        assert_eq!(m.bytes(), 2048);
    }
}
