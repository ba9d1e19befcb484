//! Webhook token authentication (KEP-6060, alpha in Kubernetes 1.37): the apiserver may present a
//! short-lived ServiceAccount token bound to this webhook's configuration on each call. When
//! required, every review must carry one (`Authorization: Bearer`) that this module verifies
//! offline: signature against the apiserver's service-account issuer keys (fetched from its
//! discovery endpoints and refreshed), issuer, audience (the webhook's URL, or
//! `https://<service>.<namespace>.svc:<port><path>`), expiry, the bound webhook configuration
//! and the attested admission-review API group. Anything else gets 401 and is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::options::{Endpoint, Settings};

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;
/// How often the issuer's keys are fetched again.
const REFRESH: Duration = Duration::from_secs(300);
/// An unknown key id triggers a refresh at most this often.
const MIN_REFETCH: Duration = Duration::from_secs(10);

/// Why a call was refused (the `reason` label of `eirinix_webhook_token_refusals_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token.
    Missing,
    /// Not a JWT, or claims of the wrong shape.
    Malformed,
    /// Signed by a key the issuer does not publish, or the signature does not verify.
    BadSignature,
    /// Expired, or not valid yet.
    Expired,
    /// Another issuer.
    WrongIssuer,
    /// Meant for another webhook URL or path.
    WrongAudience,
    /// Bound to another webhook configuration, or to none.
    WrongWebhook,
    /// No attestation of an API group this review is about.
    NotAttested,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::WrongIssuer,
        Refusal::WrongAudience,
        Refusal::WrongWebhook,
        Refusal::NotAttested,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::WrongWebhook => "wrong_webhook",
            Refusal::NotAttested => "not_attested",
        }
    }
}

/// The `kubernetes.io` claims of a webhook-bound token.
#[derive(Debug, Deserialize)]
struct KubernetesClaims {
    #[serde(default)]
    mutatingwebhookconfiguration: Option<NamedRef>,
    #[serde(default)]
    attestations: HashMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct NamedRef {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

/// The issuer's published keys.
struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// Verifies webhook tokens for one manager's configuration.
pub struct TokenVerifier {
    client: kube::Client,
    issuer: String,
    configuration: String,
    /// Extension path (`/persi`) to the audience its calls must carry.
    audiences: HashMap<String, String>,
    keys: RwLock<Keys>,
    refusals: [AtomicU64; 8],
    accepted: AtomicU64,
}

/// The discovery document's fields we use.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.issuer)
            .field("configuration", &self.configuration)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

/// What went wrong while setting up token verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenAuthError {
    /// The apiserver's discovery document or keys could not be read.
    #[error("reading the service-account issuer's {what} from the apiserver: {source}")]
    Discovery {
        /// `discovery document` or `keys`.
        what: &'static str,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// The audience the apiserver puts into tokens for calls of the webhook at `path`.
pub fn audience(settings: &Settings, path: &str, port: u16) -> String {
    match &settings.endpoint {
        Endpoint::Service {
            name,
            namespace,
            port: service_port,
        } => format!("https://{name}.{namespace}.svc:{service_port}{path}"),
        Endpoint::Url { host } => {
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            format!("https://{host}:{port}{path}")
        }
    }
}

async fn fetch_keys(client: &kube::Client) -> Result<JwkSet, TokenAuthError> {
    let request = http::Request::get("/openid/v1/jwks")
        .body(Vec::new())
        .map_err(|e| TokenAuthError::Discovery {
            what: "keys",
            source: kube::Error::HttpError(e),
        })?;
    client
        .request::<JwkSet>(request)
        .await
        .map_err(|source| TokenAuthError::Discovery {
            what: "keys",
            source,
        })
}

impl TokenVerifier {
    /// Reads the issuer and its keys from the apiserver's discovery endpoints
    /// (`/.well-known/openid-configuration`, `/openid/v1/jwks`).
    pub async fn discover(
        client: kube::Client,
        configuration: String,
        audiences: HashMap<String, String>,
    ) -> Result<Self, TokenAuthError> {
        let request = http::Request::get("/.well-known/openid-configuration")
            .body(Vec::new())
            .map_err(|e| TokenAuthError::Discovery {
                what: "discovery document",
                source: kube::Error::HttpError(e),
            })?;
        let discovery: Discovery =
            client
                .request(request)
                .await
                .map_err(|source| TokenAuthError::Discovery {
                    what: "discovery document",
                    source,
                })?;
        let set = fetch_keys(&client).await?;
        Ok(Self {
            client,
            issuer: discovery.issuer,
            configuration,
            audiences,
            keys: RwLock::new(Keys {
                set,
                fetched: Instant::now(),
            }),
            refusals: Default::default(),
            accepted: AtomicU64::new(0),
        })
    }

    /// Fetches the keys again when they are old, or when `unknown_kid` is set and the last
    /// fetch is not too recent (keys rotate: a new key id may be published since).
    async fn refresh(&self, unknown_kid: bool) {
        let age = self
            .keys
            .read()
            .map(|k| k.fetched.elapsed())
            .unwrap_or(REFRESH);
        if age < REFRESH && !(unknown_kid && age >= MIN_REFETCH) {
            return;
        }
        match fetch_keys(&self.client).await {
            Ok(set) => {
                if let Ok(mut keys) = self.keys.write() {
                    *keys = Keys {
                        set,
                        fetched: Instant::now(),
                    };
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the service-account issuer keys failed")
            }
        }
    }

    /// The decoding key and algorithm for `kid` (or the only key, without a key id).
    fn key(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        let keys = self.keys.read().ok()?;
        let jwk = match kid {
            Some(kid) => keys.set.find(kid)?,
            None if keys.set.keys.len() == 1 => keys.set.keys.first()?,
            None => return None,
        };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                jsonwebtoken::jwk::EllipticCurve::P256 => Algorithm::ES256,
                jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            },
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => return None,
        };
        DecodingKey::from_jwk(jwk).ok().map(|k| (k, alg))
    }

    /// Checks the call to `path` carrying `authorization` (the header's value), about a review
    /// of a resource in `group` (`""` for the core group).
    pub async fn verify(
        &self,
        path: &str,
        authorization: Option<&str>,
        group: &str,
    ) -> Result<(), Refusal> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Missing)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let kid = header.kid.as_deref();
        if self.key(kid).is_none() {
            self.refresh(true).await;
        } else {
            self.refresh(false).await;
        }
        let (key, alg) = self.key(kid).ok_or(Refusal::BadSignature)?;
        if header.alg != alg {
            return Err(Refusal::BadSignature);
        }
        let audience = self.audiences.get(path).ok_or(Refusal::WrongAudience)?;
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => Refusal::Expired,
                ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
                ErrorKind::InvalidAudience => Refusal::WrongAudience,
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => Refusal::BadSignature,
                _ => Refusal::Malformed,
            }
        })?;
        let k8s = data.claims.kubernetes.ok_or(Refusal::WrongWebhook)?;
        if k8s
            .mutatingwebhookconfiguration
            .as_ref()
            .is_none_or(|r| r.name != self.configuration)
        {
            return Err(Refusal::WrongWebhook);
        }
        let attested = k8s
            .attestations
            .get("admissionReviewAPIGroups")
            .is_some_and(|groups| groups.iter().any(|g| g == "*" || g == group));
        if !attested {
            return Err(Refusal::NotAttested);
        }
        Ok(())
    }

    fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }
}

impl prometheus_client::collector::Collector for TokenVerifier {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::Encode as _;
        e.counter_family(
            "eirinix_webhook_token_refusals_total",
            "Webhook calls refused for their token, by reason.",
            "reason",
            Refusal::ALL
                .iter()
                .zip(&self.refusals)
                .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed))),
        )?;
        e.counter(
            "eirinix_webhook_token_accepted_total",
            "Webhook calls with a valid token.",
            self.accepted.load(Ordering::Relaxed),
        )
    }
}

/// Middleware: extension paths (those with an audience) require a valid token; health,
/// readiness and metrics do not.
pub async fn require_token(verifier: Arc<TokenVerifier>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if !verifier.audiences.contains_key(&path) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Every stock extension admits Pods (core group); the attestation must cover it.
    match verifier.verify(&path, authorization.as_deref(), "").await {
        Ok(()) => {
            verifier.accepted.fetch_add(1, Ordering::Relaxed);
            next.run(request).await
        }
        Err(why) => {
            verifier.refused(why);
            tracing::info!(
                path,
                reason = why.as_str(),
                "webhook call refused: no valid webhook token"
            );
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                format!("webhook token refused: {}", why.as_str()),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::routing::get;
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    use super::*;

    /// A signing key and its JWK under `kid`.
    fn signing_key(kid: &str) -> (EncodingKey, Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        });
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        (key, jwk)
    }

    /// The apiserver's discovery endpoints, serving `keys` and counting key fetches.
    async fn issuer(keys: Arc<Mutex<Vec<Value>>>, fetches: Arc<AtomicUsize>) -> kube::Client {
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|| async { axum::Json(json!({"issuer": "https://issuer.test"})) }),
            )
            .route(
                "/openid/v1/jwks",
                get(move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let keys = keys.lock().unwrap().clone();
                    axum::Json(json!({ "keys": keys }))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn token(key: &EncodingKey, kid: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = json!({
            "iss": "https://issuer.test", "aud": "https://webhook.test/p", "exp": now + 600,
            "kubernetes.io": {
                "mutatingwebhookconfiguration": {"name": "hooks"},
                "attestations": {"admissionReviewAPIGroups": ["*"]},
            },
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &claims, key).unwrap()
        )
    }

    /// Pretend the keys were fetched `ago`.
    fn fetched_ago(verifier: &TokenVerifier, ago: Duration) {
        verifier.keys.write().unwrap().fetched = Instant::now() - ago;
    }

    /// The issuer rotates its keys: a token under a new key id makes the verifier fetch the
    /// keys again (at most every 10 s, so unknown ids cannot flood the apiserver), and the keys
    /// are fetched again every 5 minutes anyway.
    #[tokio::test]
    async fn rotated_issuer_keys_are_fetched_again() {
        let (key_a, jwk_a) = signing_key("a");
        let (key_b, jwk_b) = signing_key("b");
        let keys = Arc::new(Mutex::new(vec![jwk_a.clone()]));
        let fetches = Arc::new(AtomicUsize::new(0));
        let client = issuer(keys.clone(), fetches.clone()).await;
        let audiences = HashMap::from([("/p".to_owned(), "https://webhook.test/p".to_owned())]);
        let verifier = TokenVerifier::discover(client, "hooks".into(), audiences)
            .await
            .unwrap();
        let fetched = || fetches.load(Ordering::SeqCst);
        assert_eq!(fetched(), 1);
        let verify = |t: String| {
            let verifier = &verifier;
            async move { verifier.verify("/p", Some(&t), "").await }
        };
        assert_eq!(verify(token(&key_a, "a")).await, Ok(()));
        assert_eq!(fetched(), 1, "fresh keys are not fetched again");

        // The issuer publishes key b. Within 10 s of the last fetch, an unknown id is refused
        // without asking the apiserver.
        *keys.lock().unwrap() = vec![jwk_a, jwk_b];
        assert_eq!(verify(token(&key_b, "b")).await, Err(Refusal::BadSignature));
        assert_eq!(fetched(), 1);
        // Later, the unknown id makes it fetch the keys: b is now known.
        fetched_ago(&verifier, MIN_REFETCH + Duration::from_secs(1));
        assert_eq!(verify(token(&key_b, "b")).await, Ok(()));
        assert_eq!(fetched(), 2);
        // A made-up id right after: refused, no fetch.
        let (key_c, _) = signing_key("c");
        assert_eq!(verify(token(&key_c, "c")).await, Err(Refusal::BadSignature));
        assert_eq!(fetched(), 2);

        // Key a retired: once the keys are older than the refresh period, a's tokens fail.
        *keys.lock().unwrap() = vec![signing_key("b").1];
        fetched_ago(&verifier, REFRESH + Duration::from_secs(1));
        assert_eq!(verify(token(&key_a, "a")).await, Err(Refusal::BadSignature));
        assert_eq!(fetched(), 3, "old keys are fetched again");
    }
}
