//! Image references and the rootfs image pattern (a glob on the repository part).

use crate::error::RootfsError;

/// The parts of an image reference: `repository[:tag][@digest]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Registry and path, e.g. `registry.example:5000/cloudfoundry/cflinuxfs4`.
    pub repository: &'a str,
    /// The tag, if any.
    pub tag: Option<&'a str>,
    /// The digest (`sha256:...`), if any.
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    /// Split `image` into repository, tag and digest (a registry port is not a tag).
    pub fn parse(image: &'a str) -> Self {
        let (name, digest) = match image.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (image, None),
        };
        let last_slash = name.rfind('/');
        match name.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => Self {
                repository: &name[..colon],
                tag: Some(&name[colon + 1..]),
                digest,
            },
            _ => Self {
                repository: name,
                tag: None,
                digest,
            },
        }
    }
}

/// Which container images are rootfs images: a glob (`*` matches anything) on the repository.
///
/// `registry.example/cloudfoundry/cflinuxfs*` matches `registry.example/cloudfoundry/cflinuxfs4:1.2`;
/// a trailing `:` is accepted and ignored (`cflinuxfs*:` reads as "any tag of cflinuxfs*").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePattern(String);

impl ImagePattern {
    /// Parse and validate a pattern.
    pub fn new(pattern: &str) -> Result<Self, RootfsError> {
        let p = pattern.trim().trim_end_matches(':');
        if p.is_empty()
            || p.contains('@')
            || p.chars().any(char::is_whitespace)
            || p.chars().all(|c| c == '*' || c == '/')
        {
            return Err(RootfsError::InvalidPattern(pattern.to_owned()));
        }
        Ok(Self(p.to_owned()))
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `image`'s repository matches.
    pub fn matches(&self, image: &str) -> bool {
        glob(
            self.0.as_bytes(),
            ImageRef::parse(image).repository.as_bytes(),
        )
    }

    /// The image rewritten to `version` (`repository:version`, digest dropped), when it matches
    /// and is not already exactly that.
    pub fn rewrite(&self, image: &str, version: &str) -> Option<String> {
        if !self.matches(image) {
            return None;
        }
        let r = ImageRef::parse(image);
        if r.tag == Some(version) && r.digest.is_none() {
            return None;
        }
        Some(format!("{}:{version}", r.repository))
    }
}

impl std::fmt::Display for ImagePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*`-only glob, linear-time backtracking on the last star.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = ImageRef::parse("registry:5000/cf/cflinuxfs4:1.2@sha256:abc");
        assert_eq!(r.repository, "registry:5000/cf/cflinuxfs4");
        assert_eq!(r.tag, Some("1.2"));
        assert_eq!(r.digest, Some("sha256:abc"));
        let r = ImageRef::parse("registry:5000/cf/cflinuxfs4");
        assert_eq!((r.repository, r.tag), ("registry:5000/cf/cflinuxfs4", None));
        let r = ImageRef::parse("cflinuxfs4@sha256:abc");
        assert_eq!((r.repository, r.tag), ("cflinuxfs4", None));
        assert_eq!(ImageRef::parse("busybox:1").tag, Some("1"));
    }

    #[test]
    fn globs() {
        let p = ImagePattern::new("registry/cf/cflinuxfs*:").unwrap();
        assert!(p.matches("registry/cf/cflinuxfs3:1.0"));
        assert!(p.matches("registry/cf/cflinuxfs4"));
        assert!(!p.matches("registry/cf/other:1"));
        assert!(!p.matches("other/cf/cflinuxfs3:1"));
        let p = ImagePattern::new("*/cflinuxfs4").unwrap();
        assert!(p.matches("a/b/cflinuxfs4:1"));
        assert!(!p.matches("a/b/cflinuxfs4x:1"));
        assert!(ImagePattern::new("").is_err());
        assert!(ImagePattern::new("*").is_err());
        assert!(ImagePattern::new("a b").is_err());
        assert!(ImagePattern::new("a@sha256:x").is_err());
    }

    #[test]
    fn rewrites_only_matching_images_and_is_idempotent() {
        let p = ImagePattern::new("registry:5000/cf/cflinuxfs4").unwrap();
        assert_eq!(
            p.rewrite("registry:5000/cf/cflinuxfs4:1.0", "2.0")
                .as_deref(),
            Some("registry:5000/cf/cflinuxfs4:2.0")
        );
        assert_eq!(
            p.rewrite("registry:5000/cf/cflinuxfs4@sha256:abc", "2.0")
                .as_deref(),
            Some("registry:5000/cf/cflinuxfs4:2.0")
        );
        assert_eq!(p.rewrite("registry:5000/cf/cflinuxfs4:2.0", "2.0"), None);
        assert_eq!(p.rewrite("registry:5000/cf/app:1.0", "2.0"), None);
    }
}
