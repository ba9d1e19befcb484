use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::from_slice;

/// A document with every kind of value and every escape, spaced out and packed.
const RICH: &str = r#" { "s": "plain", "e": "q\" b\\ s\/ \b\f\n\r\t \u00e9 \u20AC \uD83D\uDE00 end",
  "u": "caf\u00e9 — ünï ☃ 😀", "n": [0, 1, -1, 18446744073709551615, -9223372036854775807],
  "b": [true, false, null], "o": {"": {}, "a": [], "nested": [[{"x": [1, {"y": "z"}]}]]},
  "k\"ey": "v" }"#;

/// A pod-like object: what the fast path reads most.
const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"app-0","namespace":"eirini","labels":{"guid":"abc"},"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"a\":\"\\u003cb\\u003e\"}"}},"spec":{"containers":[{"name":"opi","image":"eirini/app:1","env":[{"name":"VCAP_SERVICES","value":"{\"eirini-persi\":[{\"name\":\"v\",\"volume_mounts\":[{\"container_dir\":\"/data\"}]}]}"},{"name":"PORT","value":"8080"}],"resources":{"limits":{"memory":"1Gi","cpu":0.5}},"ports":[{"containerPort":8080}]}],"terminationGracePeriodSeconds":30}}"#;

/// Bodies serde_json refuses, each also placed inside a value the reader skips.
const INVALID: &[&str] = &[
    "",
    " ",
    "{",
    "}",
    "[1,]",
    "[,1]",
    "{\"a\":1,}",
    "{,\"a\":1}",
    "{\"a\" 1}",
    "{\"a\":}",
    "{1:2}",
    "{\"a\":1 \"b\":2}",
    "[1 2]",
    "\"unterminated",
    "\"bad escape \\x\"",
    "\"short \\u12\"",
    "\"hex \\u12g4\"",
    "\"tab\tinside\"",
    "\"newline\ninside\"",
    "01",
    "-",
    "-a",
    "1.",
    ".5",
    "1e",
    "1e+",
    "+1",
    "tru",
    "nul",
    "True",
    "[1]]",
    "{} {}",
    "\"a\" x",
    "NaN",
    "'single'",
];

fn same_as_serde_json<'de, T>(doc: &'de [u8]) -> Option<T>
where
    T: Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let expected = serde_json::from_slice::<T>(doc);
    match from_slice::<T>(doc) {
        Ok(read) => {
            let expected = expected.unwrap_or_else(|e| {
                panic!(
                    "the scanner read what serde_json refuses ({e}): {}",
                    String::from_utf8_lossy(doc)
                )
            });
            assert_eq!(read, expected, "{}", String::from_utf8_lossy(doc));
            Some(read)
        }
        Err(_) => None,
    }
}

#[test]
fn valid_json_reads_as_serde_json_reads_it() {
    for doc in [RICH, POD, "0", "-5", "\"\"", "[]", "{}", " null ", "true"] {
        let value = same_as_serde_json::<Value>(doc.as_bytes());
        assert!(value.is_some() || doc == POD, "refused: {doc}");
        assert!(
            same_as_serde_json::<IgnoredAny>(doc.as_bytes()).is_some(),
            "{doc}"
        );
    }
    // The pod has a fraction (`cpu: 0.5`): a Value of it is left to serde_json, but a reader
    // that skips it reads the rest.
    assert!(from_slice::<Value>(POD.as_bytes()).is_err());
    #[derive(Debug, Deserialize, PartialEq)]
    struct Named<'a> {
        #[serde(borrow)]
        metadata: BTreeMap<&'a str, Value>,
        kind: String,
    }
    let named = same_as_serde_json::<Named<'_>>(POD.as_bytes()).expect("the pod's names");
    assert_eq!(named.metadata["name"], "app-0");
}

#[test]
fn strings_without_escapes_are_lent_and_escaped_ones_unescaped() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Strings<'a> {
        #[serde(borrow)]
        plain: std::borrow::Cow<'a, str>,
        escaped: String,
    }
    #[derive(Deserialize)]
    struct Lent<'a> {
        #[serde(borrow)]
        plain: &'a str,
    }
    let doc = br#"{"plain":"as is","escaped":"a\"b\u00e9\uD83D\uDE00"}"#;
    let read = same_as_serde_json::<Strings<'_>>(doc).expect("read");
    assert_eq!(read.escaped, "a\"bé😀");
    let lent: Lent<'_> = from_slice(doc).expect("a plain string is lent");
    assert_eq!(lent.plain, "as is");
}

#[test]
fn invalid_json_is_refused_where_it_is_read_and_where_it_is_skipped() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct OnlyA {
        a: u8,
    }
    for bad in INVALID {
        assert!(
            serde_json::from_str::<Value>(bad).is_err(),
            "serde_json reads {bad:?}"
        );
        assert!(from_slice::<Value>(bad.as_bytes()).is_err(), "read {bad:?}");
        assert!(
            from_slice::<IgnoredAny>(bad.as_bytes()).is_err(),
            "skipped {bad:?}"
        );
        if bad.trim().is_empty() {
            continue; // `[]` is an empty list
        }
        let inside = format!(r#"{{"skipped":[{bad}],"a":1}}"#);
        assert!(serde_json::from_str::<OnlyA>(&inside).is_err(), "{inside}");
        assert!(from_slice::<OnlyA>(inside.as_bytes()).is_err(), "{inside}");
    }
    // Invalid UTF-8, anywhere.
    assert!(from_slice::<IgnoredAny>(b"\"\xff\"").is_err());
    assert!(from_slice::<OnlyA>(b"{\"skipped\":\"\xc3\",\"a\":1}").is_err());
}

#[test]
fn what_serde_json_reads_otherwise_is_left_to_it() {
    // A float, -0 and an integer past 64 bits are floats to serde_json; a lone surrogate and
    // deep nesting are refused by it or read by rules the scanner does not copy.
    for doc in [
        "1.5",
        "1e3",
        "-0",
        "18446744073709551616",
        "-9223372036854775808",
        "\"\\uD800\"",
        "\"\\uDC00\"",
        "\"\\uD800\\u0041\"",
    ] {
        assert!(from_slice::<Value>(doc.as_bytes()).is_err(), "{doc}");
    }
    let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
    assert!(from_slice::<IgnoredAny>(deep.as_bytes()).is_err());
    let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
    assert!(from_slice::<IgnoredAny>(fine.as_bytes()).is_ok());
    // Skipped, a fraction is read by its grammar.
    assert!(from_slice::<IgnoredAny>(b"[1.5e-3, -0, 2E+10]").is_ok());
}

#[test]
fn no_prefix_and_no_single_byte_change_is_read_otherwise_than_by_serde_json() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Partial<'a> {
        #[serde(borrow)]
        metadata: Option<BTreeMap<&'a str, IgnoredAny>>,
        spec: Option<Value>,
    }
    let mut accepted = 0;
    for doc in [RICH, POD] {
        let bytes = doc.as_bytes();
        for end in 0..bytes.len() {
            same_as_serde_json::<IgnoredAny>(&bytes[..end]);
            same_as_serde_json::<Value>(&bytes[..end]);
        }
        for at in 0..bytes.len() {
            for b in *b"\"\\{}[],:0-e. \x01\xffa" {
                let mut changed = bytes.to_vec();
                changed[at] = b;
                accepted += usize::from(same_as_serde_json::<IgnoredAny>(&changed).is_some());
                same_as_serde_json::<Value>(&changed);
                same_as_serde_json::<Partial<'_>>(&changed);
            }
        }
    }
    // The property holds vacuously if everything is refused.
    assert!(accepted > 1000, "only {accepted} changed documents read");
}

#[test]
fn escapes_at_every_offset_of_a_long_string_unescape_as_serde_json_does() {
    for len in 0..40 {
        for at in 0..=len {
            for escape in [r#"\""#, r"\\", r"\n", r"\u00e9", r"\ud83d\ude00", "é"] {
                let mut text = "x".repeat(len);
                text.insert_str(at, escape);
                let doc = format!(r#"["{text}", "{text}{escape}"]"#);
                let read = same_as_serde_json::<Vec<String>>(doc.as_bytes());
                assert!(read.is_some(), "refused {doc}");
            }
        }
    }
}

#[test]
fn a_list_or_map_its_visitor_leaves_unfinished_is_refused() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Pair {
        t: (String, String),
    }
    // Read on, the rest of the list could pass for entries of the object.
    for doc in [r#"{"t":["a","b","k":1}"#, r#"{"t":["a","b","c"]}"#] {
        assert!(serde_json::from_str::<Pair>(doc).is_err(), "{doc}");
        assert!(from_slice::<Pair>(doc.as_bytes()).is_err(), "{doc}");
    }
    assert!(same_as_serde_json::<Pair>(br#"{"t":["a","b"]}"#).is_some());
}

#[test]
fn asking_past_the_end_of_a_list_reads_no_further() {
    // serde's derive reads a struct from a list element by element, and asks again for each
    // defaulted field after the end (found by the `json_scan` fuzz target).
    #[derive(Debug, Deserialize, PartialEq)]
    struct Defaults {
        #[serde(default)]
        a: Option<u8>,
        #[serde(default)]
        b: Option<u8>,
        #[serde(default)]
        c: Option<u8>,
    }
    for doc in ["[]]]]]", "[1]]]", r#"{"x":[]]]}"#] {
        assert!(serde_json::from_str::<Defaults>(doc).is_err(), "{doc}");
        assert!(from_slice::<Defaults>(doc.as_bytes()).is_err(), "{doc}");
    }
    assert!(same_as_serde_json::<Defaults>(b"[1]").is_some());
    assert!(same_as_serde_json::<Defaults>(b"[]").is_some());
}

#[test]
fn a_skipped_string_is_checked_as_a_string_is_by_both_readers() {
    use super::SkippedStr;
    // Strings, with and without escapes, are skipped by the scanner and read by serde_json.
    for doc in [
        r#""""#,
        r#""plain""#,
        r#""q\" \\ \u00e9 \uD83D\uDE00""#,
        " \"x\" ",
    ] {
        assert_eq!(
            same_as_serde_json::<SkippedStr>(doc.as_bytes()),
            Some(SkippedStr)
        );
        let list = format!("[{doc}, {doc}]");
        assert_eq!(
            same_as_serde_json::<Vec<SkippedStr>>(list.as_bytes()),
            Some(vec![SkippedStr; 2])
        );
    }
    // Anything else, and any string serde_json refuses, is refused by both.
    for doc in [
        "1",
        "null",
        "[]",
        "{}",
        "true",
        r#""bad \x""#,
        "\"tab\t\"",
        r#""\uD800""#,
    ] {
        assert!(from_slice::<SkippedStr>(doc.as_bytes()).is_err(), "{doc}");
        assert!(serde_json::from_str::<SkippedStr>(doc).is_err(), "{doc}");
    }
    // `null` is a `None` where the string is optional.
    assert_eq!(
        same_as_serde_json::<Option<SkippedStr>>(b"null"),
        Some(None)
    );
}
