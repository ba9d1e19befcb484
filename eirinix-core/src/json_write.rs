//! JSON written as bytes for the answer to a review: strings escaped as serde_json escapes them,
//! the runs between escapes found sixteen bytes a step by the scanner's search, and a JSON patch
//! written as serde_json writes it, without serde's per-field calls (issue 20: serializing the
//! patch through serde_json was most of the answer's cost, BENCHMARKS §22).
//!
//! Every output is byte for byte what serde_json gives (tested against it); numbers are handed
//! to serde_json itself, so its formatting of floats is kept exactly.

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

use crate::scan::{find_special, is_plain};

/// The lowercase hex digits serde_json writes in `\u00XX` escapes.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Append `s` as a JSON string.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Most strings need no escape: one test, one copy.
    if is_plain(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut at = 0;
    while let Some(special) = find_special(bytes, at) {
        out.extend_from_slice(&bytes[at..special]);
        escape(out, bytes[special]);
        at = special + 1;
    }
    out.extend_from_slice(&bytes[at..]);
    out.push(b'"');
}

/// Append the escape of `b`, a quote, a backslash or a control byte, as serde_json writes it.
fn escape(out: &mut Vec<u8>, b: u8) {
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&hex);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// Append a list of strings as a JSON array.
pub(crate) fn strings(out: &mut Vec<u8>, list: &[String]) {
    out.push(b'[');
    for (i, s) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, s);
    }
    out.push(b']');
}

/// Append `value` as JSON.
pub(crate) fn value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // Writing a number into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                self::value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, key);
                out.push(b':');
                self::value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Append `patch` as JSON: each operation's `op` first, then its fields in json-patch's order.
pub(crate) fn patch(out: &mut Vec<u8>, patch: &Patch) {
    out.push(b'[');
    for (i, op) in patch.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (name, from, path, item) = match op {
            PatchOperation::Add(o) => ("add", None, &o.path, Some(&o.value)),
            PatchOperation::Remove(o) => ("remove", None, &o.path, None),
            PatchOperation::Replace(o) => ("replace", None, &o.path, Some(&o.value)),
            PatchOperation::Move(o) => ("move", Some(&o.from), &o.path, None),
            PatchOperation::Copy(o) => ("copy", Some(&o.from), &o.path, None),
            PatchOperation::Test(o) => ("test", None, &o.path, Some(&o.value)),
        };
        out.extend_from_slice(b"{\"op\":\"");
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
        if let Some(from) = from {
            out.extend_from_slice(b",\"from\":");
            string(out, from.as_str());
        }
        out.extend_from_slice(b",\"path\":");
        string(out, path.as_str());
        if let Some(item) = item {
            out.extend_from_slice(b",\"value\":");
            value(out, item);
        }
        out.push(b'}');
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = b"x".to_vec();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_string_is_written_as_serde_json_writes_it() {
        // Every byte below 0x80 alone, at each offset of a string long enough for the block
        // search, and next to multi-byte characters.
        for b in 0u8..0x80 {
            let c = char::from(b);
            for at in [0, 1, 7, 15, 16, 17, 31, 40] {
                let mut s: String = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"[..at].into();
                s.push(c);
                s.push_str("é\u{2028}😀 tail");
                let want = format!("x{}", serde_json::to_string(&s).unwrap());
                assert_eq!(written(|o| string(o, &s)), want, "byte {b:#x} at {at}");
            }
        }
        let runs = "\"\"\\\\\n\u{1}\u{1f}\u{7f}".repeat(9);
        let want = format!("x{}", serde_json::to_string(&runs).unwrap());
        assert_eq!(written(|o| string(o, &runs)), want);
        let list = vec![String::new(), "a\"b".into(), "\t".into()];
        let want = format!("x{}", serde_json::to_string(&list).unwrap());
        assert_eq!(written(|o| strings(o, &list)), want);
        assert_eq!(written(|o| strings(o, &[])), "x[]");
    }

    #[test]
    fn every_patch_is_written_as_serde_json_writes_it() {
        let patch: Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/metadata/annotations/eirinix.org~1persi", "value": "injected"},
            {"op": "add", "path": "/spec/volumes/-", "value": {"name": "v\"1\u{e9}", "emptyDir": {},
                "z": [1, -2, 3.5, 1e300, -0.0, 18446744073709551615u64, null, true, false, [], [[]]]}},
            {"op": "remove", "path": "/spec/x~0y"},
            {"op": "replace", "path": "", "value": null},
            {"op": "move", "from": "/a/b", "path": "/c"},
            {"op": "copy", "from": "/a/\u{1}", "path": "/d"},
            {"op": "test", "path": "/e", "value": {"b": 1, "a": {"\n": "\\"}}},
        ]))
        .unwrap();
        for p in [patch, Patch(Vec::new())] {
            let want = format!("x{}", serde_json::to_string(&p).unwrap());
            assert_eq!(written(|o| self::patch(o, &p)), want);
        }
    }
}
