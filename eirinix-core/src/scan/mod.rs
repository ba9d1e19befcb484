//! A JSON scanner for hot paths: one pass over the text, no tape and no copy, strings lent to
//! the visitors, and every value a visitor ignores skipped unread. The review decode reads every
//! Pod review with it first; extensions can read their own JSON (persi its `VCAP_SERVICES`) the
//! same way with [`from_str`], then serde_json for the error if it gives up.
//!
//! It accepts only JSON serde_json accepts, and gives what serde_json gives for it. Whatever it
//! does not read the way serde_json does (a fraction or an exponent where a visitor wants a
//! number, a lone surrogate, bytes, an enum written as an object, nesting past 100) it refuses
//! with [`Unread`], and callers then decode with serde_json, which names any problem. Why not a
//! crate: simd-json builds a tape of every value before typing any (the tape alone cost a fifth
//! of a served review), and serde_json checks strings a byte at a time (BENCHMARKS §14, §21).

mod de;
mod read;

use serde::Deserialize;

pub(crate) use read::{find_special, is_plain};

/// The scanner gave up: the body is not JSON, or not JSON it reads (serde_json then decides).
/// It carries no message; the decode that follows names the problem.
#[derive(Debug, thiserror::Error)]
#[error("not read by the fast JSON scanner")]
pub struct Unread;

impl serde::de::Error for Unread {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Unread
    }
}

/// A JSON string, checked and dropped. The scanner skips it without unescaping or copying it;
/// any other deserializer reads it as a string and drops it: for a view that must refuse what
/// the typed decode refuses, without paying for strings it discards (persi's env values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkippedStr;

/// The newtype name by which [`SkippedStr`] asks the scanner to skip a string (serde_json's
/// `RawValue` asks for its raw text the same way).
const SKIPPED_STR: &str = "$eirinix::scan::SkippedStr";

impl<'de> Deserialize<'de> for SkippedStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(SKIPPED_STR, SkippedVisitor)
    }
}

/// Reads a [`SkippedStr`]: as a unit from the scanner (which checked the string), else as a
/// string.
struct SkippedVisitor;

impl<'de> serde::de::Visitor<'de> for SkippedVisitor {
    type Value = SkippedStr;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> Result<SkippedStr, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_str<E: serde::de::Error>(self, _s: &str) -> Result<SkippedStr, E> {
        Ok(SkippedStr)
    }

    /// The scanner's answer once it has skipped the string.
    fn visit_unit<E: serde::de::Error>(self) -> Result<SkippedStr, E> {
        Ok(SkippedStr)
    }
}

/// `body` as a `T`, read by the scanner, or [`Unread`] (also for a body that is not UTF-8).
/// The body is checked by simdutf8 (runtime-detected SIMD), a fifth of std's cost on a pod's
/// mostly-ASCII JSON (issue 20).
pub fn from_slice<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, Unread> {
    from_str(simdutf8::basic::from_utf8(body).map_err(|_| Unread)?)
}

/// `text` as a `T`, read by the scanner, or [`Unread`]: then read it with serde_json, which
/// names the problem (or reads what the scanner leaves to it).
pub fn from_str<'de, T: Deserialize<'de>>(text: &'de str) -> Result<T, Unread> {
    let mut de = de::Deserializer::new(text);
    let value = T::deserialize(&mut de)?;
    if !de.reader.at_end() {
        return Err(Unread);
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
