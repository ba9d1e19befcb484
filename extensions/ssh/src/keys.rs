//! Per-app keys: one Ed25519 host key and one Ed25519 client key, kept in one Secret.
//!
//! Every key derives from one [`MasterKey`] (HKDF-SHA256 of the master and the app guid gives
//! each key's 32-byte Ed25519 seed): the webhook writes an app's keys into the app's Secret for
//! the pod, and the proxy derives the same keys itself, so it needs no right on app Secrets,
//! only on the master's Secret, whose name is known. Derivation takes microseconds, so it is
//! safe inside an admission call; predecessor EiriniX generated RSA keys there and took seconds.

use std::collections::BTreeMap;
use std::sync::Arc;

use eirinix_core::names::is_dns_subdomain;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
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

/// Secret key holding the master key (at least 32 bytes; any bytes, e.g. 64 random characters).
pub const MASTER_KEY: &str = "master-key";
/// Shortest master key accepted, in bytes.
pub const MASTER_KEY_MIN_LEN: usize = 32;

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

/// The secret every ssh key derives from: app host and client keys, the proxy's host key.
///
/// Whoever holds it can derive every app's keys: it lives in one Secret of the release
/// namespace that only the webhook server and the proxy may `get` (by name).
#[derive(Clone)]
pub struct MasterKey(Arc<ring::hkdf::Prk>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// HKDF output length of an Ed25519 seed.
struct SeedLen;

impl ring::hkdf::KeyType for SeedLen {
    fn len(&self) -> usize {
        32
    }
}

impl MasterKey {
    /// The master key of these bytes (at least [`MASTER_KEY_MIN_LEN`] of them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < MASTER_KEY_MIN_LEN {
            return Err(SshError::Config(format!(
                "the ssh master key has {} bytes; at least {MASTER_KEY_MIN_LEN} are needed",
                bytes.len()
            )));
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"eirinix-ssh master v1");
        Ok(Self(Arc::new(salt.extract(bytes))))
    }

    /// A new random master key and its bytes (what goes into the Secret): 32 random bytes as
    /// 64 hexadecimal characters, printable like the chart's.
    pub fn generate() -> Result<(Self, Vec<u8>)> {
        use ring::rand::SecureRandom as _;
        let mut random = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| SshError::Random)?;
        let bytes: Vec<u8> = random
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect();
        random.fill(0);
        Ok((Self::from_bytes(&bytes)?, bytes))
    }

    fn derive(&self, purpose: &str, guid: &str, comment: &str) -> Result<PrivateKey> {
        let info = [purpose.as_bytes(), b"\0", guid.as_bytes()];
        let mut seed = [0u8; 32];
        self.0
            .expand(&info, SeedLen)
            .and_then(|okm| okm.fill(&mut seed))
            .map_err(|_| SshError::Config("ssh key derivation failed".into()))?;
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        seed.fill(0);
        key.set_comment(comment);
        Ok(key)
    }

    /// The keys of app `guid`: the same for every instance, every replica and the proxy.
    pub fn app_keys(&self, guid: &str) -> Result<AppKeys> {
        Ok(AppKeys {
            host: self.derive("app-host", guid, &format!("eirinix-ssh host {guid}"))?,
            client: self.derive("app-client", guid, &format!("eirinix-ssh client {guid}"))?,
        })
    }

    /// The proxy's host key (what users pin; the same for all replicas).
    pub fn proxy_host_key(&self) -> Result<PrivateKey> {
        self.derive("proxy-host", "", "eirinix-ssh-proxy")
    }

    /// The master key from Secret `namespace/name` (entry [`MASTER_KEY`]); with `create`, a new
    /// random one is stored when the Secret does not exist (concurrent creators agree: the
    /// loser of the race reads the winner's).
    pub async fn from_secret(
        client: &kube::Client,
        namespace: &str,
        name: &str,
        create: bool,
    ) -> Result<Self> {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let read = |secret: Secret| -> Result<Self> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(MASTER_KEY))
                .ok_or_else(|| SshError::BadSecret {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    reason: format!("no {MASTER_KEY:?} entry"),
                })?;
            Self::from_bytes(&bytes.0).map_err(|e| SshError::BadSecret {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                reason: e.to_string(),
            })
        };
        if let Some(secret) = api.get_opt(name).await? {
            return read(secret);
        }
        if !create {
            return Err(SshError::Config(format!(
                "the ssh master key Secret {namespace}/{name} does not exist"
            )));
        }
        let (key, bytes) = Self::generate()?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some([(MASTER_KEY.to_owned(), ByteString(bytes))].into()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(key),
            Err(kube::Error::Api(s)) if s.code == 409 => read(api.get(name).await?),
            Err(e) => Err(e.into()),
        }
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
    /// Fresh random keys for the app `guid`, not derived from a master (tests, impostors).
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

    /// Whether `secret` holds exactly these keys (private and public entries).
    pub fn matches_secret(&self, secret: &Secret) -> bool {
        let Ok(data) = self.to_secret_data() else {
            return false;
        };
        let Ok(stored) = Self::from_secret(secret) else {
            return false;
        };
        let existing = secret.data.as_ref();
        stored.host_public().key_data() == self.host_public().key_data()
            && stored.authorized_public().key_data() == self.authorized_public().key_data()
            && [HOST_PUBLIC_KEY, AUTHORIZED_KEY]
                .iter()
                .all(|k| existing.and_then(|d| d.get(*k)) == data.get(*k))
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

/// The name of the Secret holding the keys of app `guid`: `<prefix>-<guid>`.
///
/// A guid that cannot appear in a Secret name as is (upper case, `_`...) is sanitised and
/// suffixed with a hash of the original, so that two guids never share a Secret.
pub fn secret_name(prefix: &str, guid: &str) -> String {
    let plain = format!("{prefix}-{guid}");
    if is_dns_subdomain(&plain) {
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
    fn keys_derive_from_the_master_and_the_guid() {
        let master = MasterKey::from_bytes(&[7u8; 32]).unwrap();
        let a = master.app_keys("app-a").unwrap();
        let again = MasterKey::from_bytes(&[7u8; 32])
            .unwrap()
            .app_keys("app-a")
            .unwrap();
        assert_eq!(a.host_public().key_data(), again.host_public().key_data());
        assert_eq!(
            a.authorized_public().key_data(),
            again.authorized_public().key_data()
        );
        let b = master.app_keys("app-b").unwrap();
        let other = MasterKey::from_bytes(&[8u8; 32])
            .unwrap()
            .app_keys("app-a")
            .unwrap();
        let proxy = master.proxy_host_key().unwrap();
        let all = [
            a.host_public(),
            a.authorized_public(),
            b.host_public(),
            b.authorized_public(),
            other.host_public(),
            proxy.public_key(),
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x.key_data(), y.key_data(), "every key is distinct");
            }
        }
        let secret = Secret {
            data: Some(a.to_secret_data().unwrap()),
            ..Default::default()
        };
        assert!(again.matches_secret(&secret));
        assert!(!b.matches_secret(&secret));
        assert!(MasterKey::from_bytes(&[1u8; 31]).is_err(), "too short");
        assert_eq!(format!("{master:?}"), "MasterKey(..)");
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
        let master = MasterKey::from_bytes(&[5; 32]).unwrap();
        let start = std::time::Instant::now();
        for i in 0..n {
            master
                .app_keys(&format!("app-{i}"))
                .unwrap()
                .to_secret_data()
                .unwrap();
        }
        let per = start.elapsed() / n;
        println!("MasterKey::app_keys + Secret data: {per:?} per app (debug build)");
        assert!(
            per < std::time::Duration::from_millis(20),
            "derivation took {per:?}"
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
