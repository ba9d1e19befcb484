//! [`ObjectOnly`]: a value read only from a JSON object.

use serde::Deserialize;

/// A `T` read only from a JSON object: serde's derived structs also take an array (their fields
/// by position), which a typed decode of the same data refuses. Wrap a view (or a part of one)
/// in it so that the view accepts what the typed decode accepts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Only<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        d.deserialize_map(Only(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Pair {
        a: u8,
        b: u8,
    }

    #[test]
    fn only_an_object_is_read() {
        let ObjectOnly(p) = serde_json::from_str::<ObjectOnly<Pair>>(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(p, Pair { a: 1, b: 2 });
        // serde's derive alone takes the fields by position.
        assert!(serde_json::from_str::<Pair>("[1,2]").is_ok());
        let e = serde_json::from_str::<ObjectOnly<Pair>>("[1,2]").unwrap_err();
        assert!(e.to_string().contains("expected a JSON object"), "{e}");
    }
}
