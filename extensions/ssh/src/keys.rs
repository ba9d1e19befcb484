//! Per-app keys: one Ed25519 host key and one Ed25519 client key, kept in one Secret.
//!
//! Generation takes microseconds (two 32-byte seeds from the system RNG), so it is safe to do
//! inside an admission call; predecessor EiriniX generated RSA keys there and took seconds.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};

use crate::error::{Result, SshError};

/// Secret key holding the daemon's private host key (OpenSSH format).
pub const HOST_KEY: &str = "host-key";
/// Secret key holding the daemon's public host key (`ssh-ed25519 AAAA...`).
pub const HOST_PUBLIC_KEY: &str = "host-key.pub";
/// Secret key holding the client private key the proxy logs in with (OpenSSH format).
pub const CLIENT_KEY: &str = "client-key";
/// Secret key holding the public key the daemon accepts (authorized_keys line).
pub const AUTHORIZED_KEY: &str = "authorized-key";

/// Label put on every app key Secret (value [`SECRET_LABEL_VALUE`]); the janitor selects on it.
pub const SECRET_LABEL: &str = "eirinix.org/ssh";
/// Value of [`SECRET_LABEL`].
pub const SECRET_LABEL_VALUE: &str = "keys";

/// The keys of one app.
#[derive(Clone)]
pub struct AppKeys {
    /// The daemon's host key.
    pub host: PrivateKey,
    /// The client key the proxy authenticates with; its public half is the authorized key.
    pub client: PrivateKey,
}

impl std::fmt::Debug for AppKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeys")
            .field("host", &fingerprint(self.host.public_key()))
            .field("client", &fingerprint(self.client.public_key()))
            .finish()
    }
}

/// A new Ed25519 key from the system RNG (ring's `SystemRandom`).
pub fn generate_ed25519(comment: &str) -> Result<PrivateKey> {
    use ring::rand::SecureRandom as _;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| SshError::Random)?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment(comment);
    Ok(key)
}

/// The SHA-256 fingerprint of `key`, as OpenSSH prints it (safe to log).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

/// Parse an OpenSSH private key (PEM `BEGIN OPENSSH PRIVATE KEY`).
pub fn parse_private_key(pem: &str) -> Result<PrivateKey> {
    Ok(PrivateKey::from_openssh(pem.trim())?)
}

/// Parse an `authorized_keys` text: one key per line, blank lines and `#` comments skipped.
///
/// Lines with options before the key type are accepted; the options are ignored.
pub fn parse_authorized_keys(text: &str) -> Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = match PublicKey::from_openssh(line) {
            Ok(k) => k,
            Err(first) => {
                // `options ssh-ed25519 AAAA...`: retry from the first token that parses.
                let mut found = None;
                let mut rest = line;
                while let Some((_, tail)) = rest.split_once(char::is_whitespace) {
                    rest = tail.trim_start();
                    if let Ok(k) = PublicKey::from_openssh(rest) {
                        found = Some(k);
                        break;
                    }
                }
                found.ok_or(SshError::Key(first))?
            }
        };
        keys.push(key);
    }
    Ok(keys)
}

impl AppKeys {
    /// Fresh keys for the app `guid` (the guid only goes into the key comments).
    pub fn generate(guid: &str) -> Result<Self> {
        Ok(Self {
            host: generate_ed25519(&format!("eirinix-ssh host {guid}"))?,
            client: generate_ed25519(&format!("eirinix-ssh client {guid}"))?,
        })
    }

    /// The public host key, for known_hosts checks.
    pub fn host_public(&self) -> &PublicKey {
        self.host.public_key()
    }

    /// The public client key, the daemon's only authorized key.
    pub fn authorized_public(&self) -> &PublicKey {
        self.client.public_key()
    }

    /// The Secret `data` holding these keys.
    pub fn to_secret_data(&self) -> Result<BTreeMap<String, ByteString>> {
        let host = self.host.to_openssh(LineEnding::LF)?;
        let client = self.client.to_openssh(LineEnding::LF)?;
        let mut data = BTreeMap::new();
        data.insert(HOST_KEY.to_owned(), ByteString(host.as_bytes().to_vec()));
        data.insert(
            HOST_PUBLIC_KEY.to_owned(),
            ByteString(self.host_public().to_openssh()?.into_bytes()),
        );
        data.insert(
            CLIENT_KEY.to_owned(),
            ByteString(client.as_bytes().to_vec()),
        );
        data.insert(
            AUTHORIZED_KEY.to_owned(),
            ByteString(self.authorized_public().to_openssh()?.into_bytes()),
        );
        Ok(data)
    }

    /// Read the keys back from an app Secret.
    pub fn from_secret(secret: &Secret) -> Result<Self> {
        let bad = |reason: String| SshError::BadSecret {
            namespace: secret.metadata.namespace.clone().unwrap_or_default(),
            name: secret.metadata.name.clone().unwrap_or_default(),
            reason,
        };
        let field = |key: &str| -> Result<String> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| bad(format!("no {key:?} entry")))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| bad(format!("{key:?} is not UTF-8")))
        };
        let host =
            parse_private_key(&field(HOST_KEY)?).map_err(|e| bad(format!("{HOST_KEY:?}: {e}")))?;
        let client = parse_private_key(&field(CLIENT_KEY)?)
            .map_err(|e| bad(format!("{CLIENT_KEY:?}: {e}")))?;
        Ok(Self { host, client })
    }
}

/// Whether `name` is a DNS-1123 subdomain (a valid Secret name).
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The name of the Secret holding the keys of app `guid`: `<prefix>-<guid>`.
///
/// A guid that cannot appear in a Secret name as is (upper case, `_`...) is sanitised and
/// suffixed with a hash of the original, so that two guids never share a Secret.
pub fn secret_name(prefix: &str, guid: &str) -> String {
    let plain = format!("{prefix}-{guid}");
    if is_dns_subdomain(&plain) && plain.len() <= 253 {
        return plain;
    }
    let mut clean: String = guid
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    clean.truncate(200);
    let clean = clean.trim_matches('-');
    let digest = ring::digest::digest(&ring::digest::SHA256, guid.as_bytes());
    let hash: String = digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if clean.is_empty() {
        format!("{prefix}-{hash}")
    } else {
        format!("{prefix}-{clean}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_secret_data() {
        let keys = AppKeys::generate("app-1").unwrap();
        let secret = Secret {
            data: Some(keys.to_secret_data().unwrap()),
            ..Default::default()
        };
        let back = AppKeys::from_secret(&secret).unwrap();
        assert_eq!(back.host_public().key_data(), keys.host_public().key_data());
        assert_eq!(
            back.authorized_public().key_data(),
            keys.authorized_public().key_data()
        );
        let data = secret.data.unwrap();
        let authorized = String::from_utf8(data[AUTHORIZED_KEY].0.clone()).unwrap();
        assert!(authorized.starts_with("ssh-ed25519 "), "{authorized}");
        let parsed = parse_authorized_keys(&authorized).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].key_data(), keys.authorized_public().key_data());
        assert_ne!(
            keys.host_public().key_data(),
            keys.authorized_public().key_data(),
            "two independent keys"
        );
    }

    #[test]
    fn a_secret_without_keys_is_reported() {
        let secret = Secret::default();
        let err = AppKeys::from_secret(&secret).unwrap_err().to_string();
        assert!(err.contains("host-key"), "{err}");
    }

    #[test]
    fn authorized_keys_with_options_and_comments() {
        let key = generate_ed25519("c").unwrap();
        let line = key.public_key().to_openssh().unwrap();
        let text = format!("# comment\n\nno-pty,from=\"1.2.3.4\" {line}\n{line}\n");
        let keys = parse_authorized_keys(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(parse_authorized_keys("garbage here").is_err());
    }

    #[test]
    fn key_generation_takes_microseconds() {
        let n = 200;
        let start = std::time::Instant::now();
        for _ in 0..n {
            AppKeys::generate("g").unwrap();
        }
        let per = start.elapsed() / n;
        println!("AppKeys::generate (two Ed25519 keys): {per:?} per app (debug build)");
        assert!(
            per < std::time::Duration::from_millis(20),
            "key generation took {per:?}"
        );
    }

    #[test]
    fn secret_names() {
        assert_eq!(
            secret_name("eirinix-ssh", "4e7c8f2a-0b1c"),
            "eirinix-ssh-4e7c8f2a-0b1c"
        );
        let a = secret_name("eirinix-ssh", "My_App");
        let b = secret_name("eirinix-ssh", "my-app");
        assert_ne!(a, b);
        assert!(is_dns_subdomain(&a), "{a}");
        assert!(is_dns_subdomain(&secret_name("p", "___")));
        assert!(is_dns_subdomain(&secret_name("p", &"A".repeat(63))));
    }
}
