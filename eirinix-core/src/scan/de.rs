//! The serde level of the scanner: a [`serde::Deserializer`] over a [`Reader`] that lends the
//! visitors slices of the body and skips whatever they ignore without typing it.

use serde::de::{self, DeserializeSeed, Visitor};
use serde::forward_to_deserialize_any;

use super::Unread;
use super::read::{Integer, Items, Reader, Text};

/// Deserializes one JSON value from a body, as serde_json would, or gives up.
pub(super) struct Deserializer<'de> {
    pub(super) reader: Reader<'de>,
    scratch: Vec<u8>,
}

impl<'de> Deserializer<'de> {
    /// A deserializer of `text`.
    pub(super) fn new(text: &'de str) -> Self {
        Self {
            reader: Reader::new(text),
            scratch: Vec::new(),
        }
    }

    /// A list or map whose opening bracket was consumed, read by `visit` (which may stop
    /// before the end; then only the end `close` may follow, as serde_json requires: read on,
    /// the rest could pass for items of the enclosing list or map).
    fn nested<T>(
        &mut self,
        close: u8,
        visit: impl FnOnce(&mut Self, &mut Items) -> Result<T, Unread>,
    ) -> Result<T, Unread> {
        self.reader.enter()?;
        let mut items = Items::new();
        let value = visit(self, &mut items)?;
        if !items.ended() {
            self.reader.expect(close)?;
        }
        self.reader.leave();
        Ok(value)
    }
}

/// Hand `text` to `visitor`: borrowed if it is a slice of the body.
fn visit_text<'de, V: Visitor<'de>>(text: Text<'de, '_>, visitor: V) -> Result<V::Value, Unread> {
    match text {
        Text::Borrowed(s) => visitor.visit_borrowed_str(s),
        Text::Copied(s) => visitor.visit_str(s),
    }
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Unread;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unread> {
        match self.reader.peek()? {
            b'"' => {
                self.reader.bump();
                let text = self.reader.string(&mut self.scratch)?;
                visit_text(text, visitor)
            }
            b'{' => {
                self.reader.bump();
                self.nested(b'}', |de, items| visitor.visit_map(Entries { de, items }))
            }
            b'[' => {
                self.reader.bump();
                self.nested(b']', |de, items| visitor.visit_seq(Elements { de, items }))
            }
            b't' => {
                self.reader.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.reader.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.reader.literal(b"null")?;
                visitor.visit_unit()
            }
            b'-' | b'0'..=b'9' => match self.reader.integer()? {
                Integer::Unsigned(n) => visitor.visit_u64(n),
                Integer::Signed(n) => visitor.visit_i64(n),
            },
            _ => Err(Unread),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unread> {
        if self.reader.peek()? == b'n' {
            self.reader.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    /// A [`super::SkippedStr`] is a string skipped, checked but not unescaped or copied.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Unread> {
        // The same static in one binary: the address decides before the bytes are compared.
        if std::ptr::eq(name, super::SKIPPED_STR) || name == super::SKIPPED_STR {
            self.reader.expect(b'"')?;
            self.reader.skip_string()?;
            return visitor.visit_unit();
        }
        visitor.visit_newtype_struct(self)
    }

    /// Only unit variants, written as strings; the other forms are left to serde_json.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unread> {
        self.reader.expect(b'"')?;
        let text = self.reader.string(&mut self.scratch)?;
        visitor.visit_enum(UnitVariant(text))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unread> {
        self.reader.skip_value()?;
        visitor.visit_unit()
    }

    /// serde_json hands bytes of strings to byte visitors; left to it.
    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Unread> {
        Err(Unread)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Unread> {
        Err(Unread)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string unit unit_struct seq tuple
        tuple_struct map struct identifier
    }
}

/// The entries of an object whose `{` was consumed.
struct Entries<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    items: &'a mut Items,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = Unread;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Unread> {
        if !self.items.next(&mut self.de.reader, b'}')? {
            return Ok(None);
        }
        self.de.reader.expect(b'"')?;
        let key = self.de.reader.string(&mut self.de.scratch)?;
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Unread> {
        self.de.reader.expect(b':')?;
        seed.deserialize(&mut *self.de)
    }
}

/// The elements of an array whose `[` was consumed.
struct Elements<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    items: &'a mut Items,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Unread;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Unread> {
        if !self.items.next(&mut self.de.reader, b']')? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

/// An object key: a string, lent to the visitor.
struct Key<'de, 's>(Text<'de, 's>);

impl<'de> de::Deserializer<'de> for Key<'de, '_> {
    type Error = Unread;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unread> {
        visit_text(self.0, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Unread> {
        visitor.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit
        unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// A unit variant written as a string.
struct UnitVariant<'de, 's>(Text<'de, 's>);

impl<'de, 's> de::EnumAccess<'de> for UnitVariant<'de, 's> {
    type Error = Unread;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Unread> {
        Ok((seed.deserialize(Key(self.0))?, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'de, '_> {
    type Error = Unread;

    fn unit_variant(self) -> Result<(), Unread> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, Unread> {
        Err(Unread)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Unread> {
        Err(Unread)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Unread> {
        Err(Unread)
    }
}
