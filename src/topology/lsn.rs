//! WAL positions (`pg_lsn`): PostgreSQL prints them as two hex halves, `X/Y`.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log, comparable across nodes of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes of WAL between `earlier` and `self`; zero when `earlier` is not behind.
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Why a `pg_lsn` text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a WAL position (X/Y in hex)")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Lsn, ParseLsnError> {
        let bad = || ParseLsnError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        // from_str_radix accepts a leading '+', which PostgreSQL never prints.
        let half = |part: &str| {
            let digits_only = !part.is_empty() && part.bytes().all(|b| b.is_ascii_hexdigit());
            digits_only
                .then(|| u32::from_str_radix(part, 16).ok())
                .flatten()
                .ok_or_else(bad)
        };
        Ok(Lsn((u64::from(half(high)?) << 32) | u64::from(half(low)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PostgreSQL's own format: upper-case hex, no padding.
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgresql_prints() {
        let cases = [
            ("0/0", 0),
            ("0/3000148", 0x300_0148),
            ("16/B374D848", (0x16 << 32) | 0xB374_D848),
            ("ffffffff/FFFFFFFF", u64::MAX),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Lsn>(), Ok(Lsn(want)), "{text}");
        }
    }

    #[test]
    fn rejects_anything_else() {
        for text in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "g/0",
            "+1/0",
            "0/-1",
            "1 /0",
            "100000000/0",
        ] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn displays_like_postgresql_and_round_trips() {
        for text in ["0/0", "0/3000148", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
    }

    #[test]
    fn orders_by_position_and_subtracts_without_underflow() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.bytes_after(a), 1);
        assert_eq!(a.bytes_after(b), 0);
    }
}
