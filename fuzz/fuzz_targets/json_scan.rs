//! The JSON scanner (`eirinix_core::scan`) against serde_json on arbitrary bytes.
//!
//! Asserts: whatever the scanner reads, serde_json reads too and gives the same, read as a
//! `Value`, skipped whole (`IgnoredAny`), as a struct that reads a few fields, borrows strings
//! and skips the rest (as the review decode and persi's `VCAP_SERVICES` reader do), and as a
//! list of strings checked and dropped (`SkippedStr`, as persi's view skips env values). The
//! scanner may refuse what serde_json reads (callers then use serde_json), never the reverse.

#![no_main]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;

use eirinix_core::scan;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// A few fields read, strings borrowed where the text allows, the rest skipped.
#[derive(Debug, Deserialize, PartialEq)]
struct Partial<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    count: Option<i64>,
    #[serde(borrow, default)]
    labels: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    #[serde(default)]
    items: Option<Vec<Value>>,
    #[serde(default)]
    flag: Option<bool>,
    #[serde(default)]
    skipped: Option<Vec<Option<scan::SkippedStr>>>,
}

/// If the scanner reads `data` as a `T`, serde_json reads the same `T`.
fn agrees<'de, T: Deserialize<'de> + PartialEq + Debug>(data: &'de [u8], what: &str) {
    let Ok(read) = scan::from_slice::<T>(data) else {
        return;
    };
    match serde_json::from_slice::<T>(data) {
        Ok(expected) => assert_eq!(read, expected, "{what}: the scanner read otherwise"),
        Err(e) => panic!("{what}: the scanner read what serde_json refuses ({e}): {read:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    agrees::<IgnoredAny>(data, "skipped");
    agrees::<Value>(data, "value");
    agrees::<Partial<'_>>(data, "partial");
    agrees::<Vec<scan::SkippedStr>>(data, "skipped strings");
});
