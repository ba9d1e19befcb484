//! A JSON string borrowed from the input when the parser can lend it (no escapes), else copied.
//! serde's own `Cow<str>` always copies: that was a heap string for every key, name and value of
//! every env entry, and every field of every binding persi reads (issue 20).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Visitor};

/// A string lent by the deserializer where it can, copied where it cannot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Text<'a>(pub(crate) Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_without_escapes_are_lent_and_escaped_ones_copied() {
        let lent: Text<'_> = serde_json::from_str(r#""plain""#).unwrap();
        assert!(matches!(lent.0, Cow::Borrowed("plain")));
        let copied: Text<'_> = serde_json::from_str(r#""a\"b""#).unwrap();
        assert!(matches!(copied.0, Cow::Owned(ref s) if s == "a\"b"));
        let lent: Text<'_> = eirinix_core::scan::from_str(r#""plain""#).unwrap();
        assert!(matches!(lent.0, Cow::Borrowed("plain")));
        assert!(serde_json::from_str::<Text<'_>>("5").is_err());
    }
}
