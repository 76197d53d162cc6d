//! Resource quantities as Kubernetes writes them: memory and disk sizes
//! (`512Mi`, `1.5Gi`, `10G`, `1e9`, `1073741824`) and whole vCPU counts.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of whole virtual CPUs.
pub type Cpu = u32;

/// A size in bytes, written and read as a Kubernetes quantity.
///
/// As in Kubernetes, a quantity remembers the form it was written in —
/// binary suffixes (`1536Mi`), decimal ones or none (`2G`, `1500M`,
/// `1073741824`), or an exponent (`1e9`) — and is written back in the
/// shortest exact form of that kind: `1.5Gi` reads as 1536 MiB and is kept
/// as `1536Mi`, `2G` stays `2G`, `1e9` stays `1e9`. Sizes compare by bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    bytes: u64,
    format: Format,
}

/// How a quantity is written (Kubernetes' `resource.Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Powers of 1024: `Ki`, `Mi`, `Gi`, ...
    #[default]
    BinarySi,
    /// Powers of 1000, or a plain number: `k`, `M`, `G`, ...
    DecimalSi,
    /// A power of ten as an exponent: `1e9`.
    DecimalExponent,
}

impl PartialEq for Memory {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for Memory {}
impl PartialOrd for Memory {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Memory {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}
impl std::hash::Hash for Memory {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

/// Why a quantity string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error(
        "{0:?} is not a quantity (expected a number with an optional suffix such as Mi, Gi, M, G, or an exponent such as e9)"
    )]
    Malformed(String),
    #[error("{0:?} is negative: a size cannot be")]
    Negative(String),
    #[error("{0:?} is not a whole number of bytes")]
    Fractional(String),
    #[error("{0:?} does not fit in 64 bits")]
    Overflow(String),
}

const BINARY: [(&str, u32); 6] = [
    ("Ei", 60),
    ("Pi", 50),
    ("Ti", 40),
    ("Gi", 30),
    ("Mi", 20),
    ("Ki", 10),
];
const DECIMAL: [(&str, i32); 6] = [
    ("E", 18),
    ("P", 15),
    ("T", 12),
    ("G", 9),
    ("M", 6),
    ("k", 3),
];

impl Memory {
    pub const fn from_bytes(bytes: u64) -> Self {
        Self {
            bytes,
            format: Format::BinarySi,
        }
    }
    pub const fn from_mib(mib: u64) -> Self {
        Self::from_bytes(mib << 20)
    }
    pub const fn from_gib(gib: u64) -> Self {
        Self::from_bytes(gib << 30)
    }
    pub const fn bytes(self) -> u64 {
        self.bytes
    }
    /// The form it is written in.
    pub const fn format(self) -> Format {
        self.format
    }
    /// Whole MiB, rounded down (what QEMU's `-m` takes).
    pub const fn mib(self) -> u64 {
        self.bytes >> 20
    }
    pub fn saturating_sub(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.saturating_sub(other.bytes),
            format: self.format,
        }
    }
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.saturating_add(other.bytes),
            format: self.format,
        }
    }
}

/// `10^exp` as a fraction `(numerator, denominator)`.
fn pow10(exp: i32) -> Option<(u128, u128)> {
    let p = 10u128.checked_pow(exp.unsigned_abs())?;
    Some(if exp >= 0 { (p, 1) } else { (1, p) })
}

impl FromStr for Memory {
    type Err = QuantityError;

    /// Kubernetes' quantity grammar: a sign, digits with an optional
    /// fraction, then a binary suffix, a decimal suffix or an exponent.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let malformed = || QuantityError::Malformed(s.to_owned());
        let overflow = || QuantityError::Overflow(s.to_owned());
        let (negative, unsigned) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(end);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(malformed());
        }
        // The number as digits / 10^frac.len().
        let mut digits: u128 = 0;
        for c in whole.chars().chain(frac.chars()) {
            digits = digits
                .checked_mul(10)
                .and_then(|d| d.checked_add(u128::from(c as u8 - b'0')))
                .ok_or_else(overflow)?;
        }
        let scale = i32::try_from(frac.len()).map_err(|_| overflow())?;
        let (format, num, den) = if suffix.is_empty() {
            (Format::DecimalSi, 1, 1)
        } else if let Some((_, shift)) = BINARY.iter().find(|(sfx, _)| *sfx == suffix) {
            (Format::BinarySi, 1u128 << shift, 1)
        } else if let Some((_, exp)) = DECIMAL.iter().find(|(sfx, _)| *sfx == suffix) {
            let (n, d) = pow10(*exp).ok_or_else(overflow)?;
            (Format::DecimalSi, n, d)
        } else if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
            let exp: i32 = exp.parse().map_err(|_| malformed())?;
            let (n, d) = pow10(exp).ok_or_else(overflow)?;
            (Format::DecimalExponent, n, d)
        } else {
            return Err(malformed());
        };
        let (sn, sd) = pow10(-scale).ok_or_else(overflow)?;
        let num = digits
            .checked_mul(num)
            .and_then(|v| v.checked_mul(sn))
            .ok_or_else(overflow)?;
        let den = den.checked_mul(sd).ok_or_else(overflow)?;
        if negative && num != 0 {
            return Err(QuantityError::Negative(s.to_owned()));
        }
        if num % den != 0 {
            return Err(QuantityError::Fractional(s.to_owned()));
        }
        let bytes = u64::try_from(num / den).map_err(|_| overflow())?;
        Ok(Memory { bytes, format })
    }
}

/// `n` as `mantissa * 1000^k` with the largest `k` that keeps it whole.
fn base1000(mut n: u64) -> (u64, usize) {
    let mut k = 0;
    while n != 0 && n.is_multiple_of(1000) && k < DECIMAL.len() {
        n /= 1000;
        k += 1;
    }
    (n, k)
}

impl fmt::Display for Memory {
    /// The shortest exact form of its kind, as Kubernetes canonicalises.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.bytes;
        if n == 0 {
            return f.write_str("0");
        }
        match self.format {
            Format::BinarySi => {
                for (sfx, shift) in BINARY {
                    if n.is_multiple_of(1 << shift) {
                        return write!(f, "{}{sfx}", n >> shift);
                    }
                }
                write!(f, "{n}")
            }
            Format::DecimalSi => match base1000(n) {
                (m, 0) => write!(f, "{m}"),
                (m, k) => write!(f, "{m}{}", DECIMAL[DECIMAL.len() - k].0),
            },
            Format::DecimalExponent => match base1000(n) {
                (m, 0) => write!(f, "{m}"),
                (m, k) => write!(f, "{m}e{}", 3 * k),
            },
        }
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
            Raw::Int(n) => Ok(Memory {
                bytes: n,
                format: Format::DecimalSi,
            }),
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

    /// What Kubernetes' `resource.MustParse(s).String()` gives.
    #[test]
    fn kept_in_the_form_written_as_kubernetes_keeps_it() {
        for (written, kept, bytes) in [
            ("1.5Gi", "1536Mi", 1_610_612_736),
            ("0.5Gi", "512Mi", 536_870_912),
            ("2G", "2G", 2_000_000_000),
            ("2000M", "2G", 2_000_000_000),
            ("1500M", "1500M", 1_500_000_000),
            ("1e9", "1e9", 1_000_000_000),
            ("1E9", "1e9", 1_000_000_000),
            ("1.5e3", "1500", 1500),
            ("15e8", "1500e6", 1_500_000_000),
            ("1073741824", "1073741824", 1_073_741_824),
            ("1000", "1k", 1000),
            ("+1Ki", "1Ki", 1024),
            ("1.Gi", "1Gi", 1 << 30),
            (".5Ki", "512", 512),
            ("0", "0", 0),
            ("-0", "0", 0),
        ] {
            let m: Memory = written.parse().unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(m.bytes(), bytes, "{written}");
            assert_eq!(m.to_string(), kept, "{written}");
        }
        // Equal sizes are equal whatever their form.
        assert_eq!("1Gi".parse::<Memory>(), "1073741824".parse::<Memory>());
    }

    #[test]
    fn rejects() {
        for (bad, why) in [
            ("", "empty"),
            ("Gi", "not a quantity"),
            ("2GB", "not a quantity"),
            ("1.2.3Gi", "not a quantity"),
            ("1e", "not a quantity"),
            ("-1Gi", "negative"),
            ("0.3", "whole number of bytes"),
            ("1e-3", "whole number of bytes"),
            ("99999999999Ei", "64 bits"),
            ("1e40", "64 bits"),
        ] {
            let e = bad.parse::<Memory>().expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let m: Memory = serde_json::from_str("\"3Gi\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"3Gi\"");
        let m: Memory = serde_json::from_str("\"1.5Gi\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"1536Mi\"");
        let m: Memory = serde_json::from_str("2048").unwrap();
        assert_eq!(m.bytes(), 2048);
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"2048\"");
    }
}
