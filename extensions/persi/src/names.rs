//! Kubernetes names derived from claim and instance ids: readable, valid, collision-resistant.

/// Longest DNS-1123 label Kubernetes accepts (volume names, PVC names here).
pub const MAX_LABEL: usize = 63;

/// Hex digits of the hash suffix (48 bits).
const HASH_HEX: usize = 12;

/// FNV-1a, 64 bits: stable across versions and platforms (names must not change on upgrade).
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so that ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A short stable hash of `key` (12 lowercase hex digits).
pub fn short_hash(key: &str) -> String {
    short_hash_salted(key, 0)
}

fn short_hash_salted(key: &str, salt: u32) -> String {
    let mut out = String::with_capacity(HASH_HEX);
    push_hash(&mut out, key, salt);
    out
}

/// Append the hash of `key` and `salt`: the top 48 bits of its FNV-1a as 12 lowercase hex digits.
fn push_hash(out: &mut String, key: &str, salt: u32) {
    let h = fnv1a64(&[key.as_bytes(), &salt.to_be_bytes()]);
    for shift in (64 - 4 * HASH_HEX..64).step_by(4).rev() {
        out.push(char::from(
            b"0123456789abcdef"[((h >> shift) & 0xf) as usize],
        ));
    }
}

/// `s` lowercased with every run of characters outside `[a-z0-9]` turned into one `-`,
/// trimmed of `-` at both ends.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_sanitized(&mut out, s, usize::MAX);
    out
}

/// Append [`sanitize`]`(s)` cut to at most `limit` bytes and trimmed of a `-` the cut leaves at
/// its end, written straight into `out` (names are made on the path of every review).
/// Byte by byte: the bytes of a character outside ASCII are all outside `[a-z0-9]`, so they
/// collapse into one `-` as the character does.
fn push_sanitized(out: &mut String, s: &str, limit: usize) {
    let start = out.len();
    // Whether the last byte written is a `-` (written only after a kept byte).
    let mut dash = false;
    for b in s.bytes() {
        if out.len() - start >= limit {
            break;
        }
        let b = b.to_ascii_lowercase();
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            out.push(char::from(b));
            dash = false;
        } else if out.len() > start && !dash {
            out.push('-');
            dash = true;
        }
    }
    if dash {
        out.pop();
    }
}

pub use eirinix_core::names::is_dns_label;

/// `<prefix>-<readable part of key>-<hash of key and salt>`, a DNS-1123 label of at most 63
/// characters. Two different keys give different names unless their 48-bit hashes collide;
/// callers that must rule that out retry with another `salt`.
pub fn hashed_label(prefix: &str, key: &str, salt: u32) -> String {
    let mut out = String::with_capacity(MAX_LABEL);
    push_sanitized(&mut out, prefix, usize::MAX);
    let budget = MAX_LABEL.saturating_sub(out.len() + HASH_HEX + 2);
    if !out.is_empty() {
        out.push('-');
    }
    let before = out.len();
    push_sanitized(&mut out, key, budget);
    if out.len() > before {
        out.push('-');
    }
    push_hash(&mut out, key, salt);
    out
}

/// The pod volume name persi uses for claim `claim` (`persi-<claim>-<hash>`), with `salt` 0
/// unless that name is already taken by another volume of the pod.
pub fn volume_name(claim: &str, salt: u32) -> String {
    hashed_label("persi", claim, salt)
}

/// A label value standing for `value`: itself when it is a valid label value, else a hash.
pub fn label_value(value: &str) -> String {
    let valid = value.len() <= MAX_LABEL
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if valid {
        value.to_owned()
    } else {
        format!("h-{}", short_hash(value))
    }
}

/// The PVC name of service instance `instance_id`: `persi-<id>` for ids that are DNS labels
/// (Cloud Foundry GUIDs are), a hashed name otherwise.
pub fn claim_name(instance_id: &str) -> String {
    let direct = format!("persi-{instance_id}");
    if is_dns_label(&direct) {
        direct
    } else {
        hashed_label("persi", instance_id, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_do_not_change_across_versions() {
        // Pods and claims carry these names: a new version must give the same ones.
        for (prefix, key, salt, name) in [
            ("persi", "my-data", 0, "persi-my-data-5901976269e2"),
            (
                "persi",
                "pvc-data-7f3a",
                1,
                "persi-pvc-data-7f3a-8725a22828bb",
            ),
            ("persi", "", 0, "persi-ce3a37fc658f"),
            ("persi", "---", 0, "persi-720f79cb8272"),
            ("persi", "Data/ÄÖ x", 2, "persi-data-x-1ff57f29f4ec"),
            ("", "k", 7, "k-f9612c0e4c97"),
        ] {
            assert_eq!(hashed_label(prefix, key, salt), name);
            assert_eq!(
                &short_hash_salted(key, salt),
                &name[name.len() - HASH_HEX..]
            );
        }
        let long = format!("{}a", "x".repeat(300));
        assert_eq!(
            hashed_label("persi", &long, 0),
            format!("persi-{}-65bf81a86ad1", "x".repeat(44))
        );
        assert_eq!(
            hashed_label("", &long, 0),
            format!("{}-65bf81a86ad1", "x".repeat(49))
        );
        assert_eq!(
            hashed_label("--P--", "-a--b-", 0),
            format!("p-a-b-{}", short_hash_salted("-a--b-", 0))
        );
    }

    #[test]
    fn volume_names_are_valid_and_readable() {
        let n = volume_name("my-data", 0);
        assert!(n.starts_with("persi-my-data-"), "{n}");
        assert!(is_dns_label(&n));
        assert_eq!(n, volume_name("my-data", 0), "stable");
    }

    #[test]
    fn long_and_odd_claims_give_valid_distinct_names() {
        let long_a = format!("{}a", "x".repeat(300));
        let long_b = format!("{}b", "x".repeat(300));
        let odd = [
            "",
            "---",
            "Data",
            "data",
            "DATA_1",
            "data.1",
            "data-1",
            "ünïcödé/päth",
            "a b",
            long_a.as_str(),
            long_b.as_str(),
        ];
        let names: Vec<String> = odd.iter().map(|c| volume_name(c, 0)).collect();
        for (claim, name) in odd.iter().zip(&names) {
            assert!(is_dns_label(name), "{claim:?} -> {name:?}");
            assert!(name.len() <= 63);
        }
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_ne!(
            volume_name("data", 0),
            volume_name("data", 1),
            "salt changes the name"
        );
    }

    #[test]
    fn claim_names_of_guids_are_direct() {
        let guid = "1c9c3d3e-7f2a-4b55-9d4e-2f3c8a1b0e77";
        assert_eq!(claim_name(guid), format!("persi-{guid}"));
        let odd = claim_name("Instance With Spaces");
        assert!(is_dns_label(&odd) && odd.starts_with("persi-instance-with-spaces-"));
        let long = claim_name(&"a".repeat(70));
        assert!(is_dns_label(&long), "{long}");
    }

    #[test]
    fn label_values() {
        assert_eq!(label_value("abc-123"), "abc-123");
        assert_eq!(label_value(""), "");
        let h = label_value("not valid!");
        assert!(h.starts_with("h-") && h.len() == 14, "{h}");
        assert!(label_value(&"a".repeat(64)).starts_with("h-"));
    }
}
