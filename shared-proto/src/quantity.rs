//! Resource quantities in the notation operators know from Kubernetes: CPU as cores or
//! millicores (`2`, `0.5`, `500m`), memory as bytes with SI or binary suffixes
//! (`64Mi`, `1G`, `1048576`). Binary encodings carry the plain integer.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// CPU in thousandths of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CpuMillis(pub u64);

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuantityError(String);

impl CpuMillis {
    /// Parses `2`, `0.25`, `250m`.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let s = s.trim();
        let bad = || {
            QuantityError(format!(
                "invalid CPU quantity {s:?}: use cores (\"2\", \"0.5\") or millicores (\"500m\")"
            ))
        };
        if s.is_empty() {
            return Err(bad());
        }
        if let Some(m) = s.strip_suffix('m') {
            return m.parse::<u64>().map(CpuMillis).map_err(|_| bad());
        }
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if frac.len() > 3 || (int.is_empty() && frac.is_empty()) {
            return Err(bad());
        }
        let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
        let frac_millis: u64 = if frac.is_empty() {
            0
        } else {
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            format!("{frac:0<3}").parse().map_err(|_| bad())?
        };
        int.checked_mul(1000).and_then(|v| v.checked_add(frac_millis)).map(CpuMillis).ok_or_else(bad)
    }
}

impl fmt::Display for CpuMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) { write!(f, "{}", self.0 / 1000) } else { write!(f, "{}m", self.0) }
    }
}

const BYTE_SUFFIXES: &[(&str, u64)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("K", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

impl Bytes {
    /// Parses `1048576`, `64Mi`, `1G`, `512Ki`.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let s = s.trim();
        let bad = || {
            QuantityError(format!(
                "invalid size {s:?}: use bytes (\"1048576\") or a suffix Ki, Mi, Gi, Ti, k, M, G, T (\"64Mi\")"
            ))
        };
        let (num, mult) = BYTE_SUFFIXES
            .iter()
            .find_map(|(suf, mult)| s.strip_suffix(suf).map(|n| (n, *mult)))
            .unwrap_or((s, 1));
        let n: u64 = num.parse().map_err(|_| bad())?;
        n.checked_mul(mult).map(Bytes).ok_or_else(bad)
    }
}

/// Most bytes a size may say (under 10^18); the validator refuses more.
pub const MAX_BYTES: u64 = 999_999_999_999_999_999;
/// Most millicores a CPU quantity may say (999,999,999.999 cores); the validator refuses more.
pub const MAX_CPU_MILLIS: u64 = 999_999_999_999;

impl fmt::Display for Bytes {
    /// The largest binary unit that divides it, with at most 5 (Ti), 8 (Gi), 11 (Mi) or
    /// 14 (Ki) digits, else plain bytes: every size up to [`MAX_BYTES`] prints in a form
    /// that reads back below it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suf, mult, digits) in
            [("Ti", 1u64 << 40, 5), ("Gi", 1 << 30, 8), ("Mi", 1 << 20, 11), ("Ki", 1 << 10, 14)]
        {
            if self.0 >= mult && self.0.is_multiple_of(mult) && self.0 / mult < 10u64.pow(digits) {
                return write!(f, "{}{suf}", self.0 / mult);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Accepts a JSON/YAML string or an integer; binary encodings use the integer.
struct QuantityVisitor<T>(fn(&str) -> Result<T, QuantityError>, fn(u64) -> T);

impl<T> serde::de::Visitor<'_> for QuantityVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantity such as \"500m\", \"64Mi\" or an integer")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        Ok((self.1)(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v).map(self.1).map_err(|_| E::custom("a quantity must not be negative"))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        (self.0)(&v.to_string()).map_err(E::custom)
    }
}

macro_rules! quantity_serde {
    ($t:ident, $int_means:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() { s.collect_str(self) } else { s.serialize_u64(self.0) }
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    d.deserialize_any(QuantityVisitor($t::parse, $int_means))
                } else {
                    u64::deserialize(d).map($t)
                }
            }
        }
    };
}

// A bare number in a manifest means cores for CPU and bytes for memory.
quantity_serde!(CpuMillis, |n| CpuMillis(n.saturating_mul(1000)));
quantity_serde!(Bytes, Bytes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_cores_fractions_and_millicores() {
        assert_eq!(CpuMillis::parse("2").unwrap(), CpuMillis(2000));
        assert_eq!(CpuMillis::parse("0.5").unwrap(), CpuMillis(500));
        assert_eq!(CpuMillis::parse(".25").unwrap(), CpuMillis(250));
        assert_eq!(CpuMillis::parse("250m").unwrap(), CpuMillis(250));
        for bad in ["", "m", "1.2345", "-1", "abc", "1.x"] {
            assert!(CpuMillis::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(CpuMillis(1500).to_string(), "1500m");
        assert_eq!(CpuMillis(2000).to_string(), "2");
    }

    #[test]
    fn bytes_parse_and_print_round_trip() {
        assert_eq!(Bytes::parse("64Mi").unwrap(), Bytes(64 << 20));
        assert_eq!(Bytes::parse("1G").unwrap(), Bytes(1_000_000_000));
        assert_eq!(Bytes::parse("4096").unwrap(), Bytes(4096));
        assert!(Bytes::parse("64MB").is_err());
        assert!(Bytes::parse("99999999999Ti").is_err());
        assert_eq!(Bytes(64 << 20).to_string(), "64Mi");
        assert_eq!(Bytes::parse(&Bytes(3 << 30).to_string()).unwrap(), Bytes(3 << 30));
    }

    #[test]
    fn json_accepts_strings_and_numbers() {
        let c: CpuMillis = serde_json::from_str("\"100m\"").unwrap();
        assert_eq!(c, CpuMillis(100));
        let c: CpuMillis = serde_json::from_str("1").unwrap();
        assert_eq!(c, CpuMillis(1000));
        let b: Bytes = serde_json::from_str("1024").unwrap();
        assert_eq!(b, Bytes(1024));
        assert!(serde_json::from_str::<Bytes>("-1").is_err());
        assert_eq!(serde_json::to_string(&Bytes(1 << 20)).unwrap(), "\"1Mi\"");
    }
}
