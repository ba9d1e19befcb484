//! [`PatchText`]: a JSON patch written as JSON text while an extension builds it.

use json_patch::jsonptr::Pointer;
use serde::Serialize;

use crate::json_write;

/// A JSON patch written as JSON text while it is built: no tree of values to build, walk and
/// drop, and the answer base64-encodes the text as it is (issue 20, BENCHMARKS §23). Paths are
/// [`Pointer`]s (valid by construction) and values are written by serde_json, so the text is
/// always a valid patch. Return it with [`crate::Mutation::patch_text`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchText {
    /// `[op,op,...]`, or nothing while there is no operation.
    text: Vec<u8>,
    ops: usize,
}

impl PatchText {
    /// An empty patch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an `add` operation of `value` at `path`. On an error of `value`'s `Serialize` the
    /// patch is left as it was.
    pub fn add<T: Serialize + ?Sized>(
        &mut self,
        path: &Pointer,
        value: &T,
    ) -> Result<&mut Self, serde_json::Error> {
        self.push("add", path, value)
    }

    /// Add a `replace` operation of `value` at `path`. On an error of `value`'s `Serialize` the
    /// patch is left as it was.
    pub fn replace<T: Serialize + ?Sized>(
        &mut self,
        path: &Pointer,
        value: &T,
    ) -> Result<&mut Self, serde_json::Error> {
        self.push("replace", path, value)
    }

    /// Add an `add` operation of the value `write` writes: the fast form (no serde calls, no
    /// intermediate value), valid by construction (see [`JsonValue`]).
    pub fn add_with(&mut self, path: &Pointer, write: impl FnOnce(JsonValue<'_>)) -> &mut Self {
        self.begin("add", path);
        self.text.extend_from_slice(b",\"value\":");
        write(JsonValue::new(&mut self.text));
        self.end()
    }

    /// Add a `remove` operation of `path`.
    pub fn remove(&mut self, path: &Pointer) -> &mut Self {
        self.begin("remove", path);
        self.end()
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops
    }

    /// Whether there is no operation.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// The patch as JSON text (`[]` when empty).
    pub fn as_bytes(&self) -> &[u8] {
        if self.text.is_empty() {
            b"[]"
        } else {
            &self.text
        }
    }

    /// The patch as json-patch's operations (for tests and tools: a served answer never parses
    /// it).
    pub fn to_patch(&self) -> Result<json_patch::Patch, serde_json::Error> {
        serde_json::from_slice(self.as_bytes())
    }

    /// One operation appended, its value written by serde_json. An error of `value` restores
    /// the text.
    fn push<T: Serialize + ?Sized>(
        &mut self,
        op: &str,
        path: &Pointer,
        value: &T,
    ) -> Result<&mut Self, serde_json::Error> {
        let end = self.begin(op, path);
        self.text.extend_from_slice(b",\"value\":");
        if let Err(e) = serde_json::to_writer(&mut self.text, value) {
            self.text.truncate(end);
            if let Some(close) = self.text.last_mut() {
                *close = b']';
            }
            return Err(e);
        }
        Ok(self.end())
    }

    /// The start of an operation: the closing `]` becomes a comma (or the text starts), then
    /// its `op` and `path`. The length of the text before it.
    fn begin(&mut self, op: &str, path: &Pointer) -> usize {
        let end = self.text.len();
        match self.text.last_mut() {
            Some(close) => *close = b',',
            None => {
                // Room for a typical patch at once, not a doubling per operation.
                self.text.reserve(1024);
                self.text.push(b'[');
            }
        }
        self.text.extend_from_slice(b"{\"op\":\"");
        self.text.extend_from_slice(op.as_bytes());
        self.text.extend_from_slice(b"\",\"path\":");
        json_write::string(&mut self.text, path.as_str());
        end
    }

    /// The end of an operation: the object and the list closed again.
    fn end(&mut self) -> &mut Self {
        self.text.extend_from_slice(b"}]");
        self.ops += 1;
        self
    }
}

/// Writes exactly one JSON value of a [`PatchText`] operation: one of its methods writes it,
/// and a writer dropped unused writes `null`, so the text stays valid whatever the caller does.
#[derive(Debug)]
pub struct JsonValue<'a> {
    out: &'a mut Vec<u8>,
    written: bool,
}

impl<'a> JsonValue<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            written: false,
        }
    }

    /// The value is the string `s` (escaped as serde_json escapes it).
    pub fn str(mut self, s: &str) {
        self.written = true;
        json_write::string(self.out, s);
    }

    /// The value is the integer `n`.
    pub fn int(mut self, n: i64) {
        self.written = true;
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// The value is `b`.
    pub fn bool(mut self, b: bool) {
        self.written = true;
        self.out
            .extend_from_slice(if b { b"true" } else { b"false" });
    }

    /// The value is an object whose fields `write` adds.
    pub fn object(mut self, write: impl FnOnce(&mut JsonObject<'_>)) {
        self.written = true;
        self.out.push(b'{');
        write(&mut JsonObject {
            out: self.out,
            first: true,
        });
        self.out.push(b'}');
    }

    /// The value is a list whose items `write` adds.
    pub fn list(mut self, write: impl FnOnce(&mut JsonList<'_>)) {
        self.written = true;
        self.out.push(b'[');
        write(&mut JsonList {
            out: self.out,
            first: true,
        });
        self.out.push(b']');
    }
}

impl Drop for JsonValue<'_> {
    fn drop(&mut self) {
        if !self.written {
            self.out.extend_from_slice(b"null");
        }
    }
}

/// The fields of an object a [`JsonValue`] writes.
#[derive(Debug)]
pub struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl JsonObject<'_> {
    /// The value of the field `key`, to be written next.
    pub fn field(&mut self, key: &str) -> JsonValue<'_> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        json_write::string(self.out, key);
        self.out.push(b':');
        JsonValue::new(self.out)
    }
}

/// The items of a list a [`JsonValue`] writes.
#[derive(Debug)]
pub struct JsonList<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl JsonList<'_> {
    /// The next item, to be written.
    pub fn item(&mut self) -> JsonValue<'_> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        JsonValue::new(self.out)
    }
}

impl From<&json_patch::Patch> for PatchText {
    /// The same operations written as text, as serde_json writes them.
    fn from(patch: &json_patch::Patch) -> Self {
        if patch.0.is_empty() {
            return Self::new();
        }
        let mut text = Vec::with_capacity(512);
        json_write::patch(&mut text, patch);
        Self {
            text,
            ops: patch.0.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use json_patch::jsonptr::PointerBuf;
    use serde::ser::Error as _;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_text_is_the_patch_serde_json_writes() {
        let mut text = PatchText::new();
        assert_eq!(text.as_bytes(), b"[]");
        assert!(text.to_patch().unwrap().0.is_empty());
        let odd = PointerBuf::from_tokens(["metadata", "annotations", "a/b~c\"d"]);
        text.add(
            Pointer::from_static("/spec/volumes"),
            &json!([{"name": "v"}]),
        )
        .unwrap()
        .remove(Pointer::from_static("/spec/x"))
        .replace(&odd, "é \"q\" \n")
        .unwrap()
        .add(Pointer::from_static("/spec/securityContext/fsGroup"), &2000)
        .unwrap();
        assert_eq!(text.len(), 4);
        let expected: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/spec/volumes", "value": [{"name": "v"}]},
            {"op": "remove", "path": "/spec/x"},
            {"op": "replace", "path": "/metadata/annotations/a~1b~0c\"d", "value": "é \"q\" \n"},
            {"op": "add", "path": "/spec/securityContext/fsGroup", "value": 2000},
        ]))
        .unwrap();
        assert_eq!(text.to_patch().unwrap(), expected);
        assert_eq!(text.as_bytes(), serde_json::to_vec(&expected).unwrap());
        assert_eq!(PatchText::from(&expected), text);
        assert_eq!(
            PatchText::from(&json_patch::Patch(Vec::new())),
            PatchText::new()
        );
    }

    #[test]
    fn values_written_by_hand_are_what_serde_json_writes_and_always_valid() {
        let path = Pointer::from_static("/spec/volumes");
        let mut text = PatchText::new();
        text.add_with(path, |v| {
            v.list(|list| {
                // Keys in sorted order, as serde_json writes a `Value`'s.
                list.item().object(|o| {
                    o.field("claim").object(|c| c.field("claimName").str("pvc"));
                    o.field("empty").object(|_| {});
                    o.field("group").int(-2000);
                    o.field("name").str("v \"1\" é\u{1}");
                    o.field("none").list(|_| {});
                    o.field("off").bool(false);
                    o.field("readOnly").bool(true);
                    // Not written: null.
                    let _ = o.field("unset");
                });
                list.item().int(i64::MAX);
            })
        });
        // A writer dropped unused still leaves a value.
        text.add_with(path, |_| {});
        let expected = json!([
            {"op": "add", "path": "/spec/volumes", "value": [{
                "name": "v \"1\" é\u{1}", "claim": {"claimName": "pvc"}, "readOnly": true,
                "off": false, "group": -2000, "empty": {}, "none": [], "unset": null
            }, i64::MAX]},
            {"op": "add", "path": "/spec/volumes", "value": null},
        ]);
        let parsed: serde_json::Value = serde_json::from_slice(text.as_bytes()).unwrap();
        assert_eq!(parsed, expected);
        // Byte for byte: serde_json with its keys in the order written.
        let mut same = PatchText::new();
        same.add(path, &parsed[0]["value"])
            .unwrap()
            .add(path, &())
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(text.as_bytes()),
            String::from_utf8_lossy(same.as_bytes())
        );
        assert_eq!(text.len(), 2);
    }

    /// A value whose `Serialize` fails after writing part of itself.
    struct Broken;

    impl Serialize for Broken {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap as _;
            let mut map = s.serialize_map(None)?;
            map.serialize_entry("half", "written")?;
            Err(S::Error::custom("broken"))
        }
    }

    #[test]
    fn a_value_that_fails_to_serialize_leaves_the_patch_as_it_was() {
        let path = Pointer::from_static("/spec/x");
        let mut text = PatchText::new();
        assert!(text.add(path, &Broken).is_err());
        assert_eq!((text.len(), text.as_bytes()), (0, &b"[]"[..]));
        text.add(path, &1).unwrap();
        let before = text.clone();
        assert!(text.replace(path, &Broken).is_err());
        assert_eq!(text, before);
        assert_eq!(text.to_patch().unwrap().0.len(), 1);
    }
}
