//! Optional verification of the apiserver's client certificate (mutual TLS on the webhook port),
//! with no cluster: the server composed from its pieces as in `server.rs`, real rustls clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use eirinix_core::admission::ExtensionHandler;
use eirinix_core::certs::{CertBundle, CertPolicy, SubjectNames};
use eirinix_core::manager::ManagerError;
use eirinix_core::metrics::Metrics;
use eirinix_core::server::{AppState, Health, ServeOptions, router, self_handshake};
use eirinix_core::tls::{
    CertResolver, ClientCa, ClientCaError, server_config, server_config_with_client_ca,
};
use eirinix_core::{
    Context, Extension, ExtensionError, FailurePolicy, Manager, Mutation, Request, Settings,
    async_trait,
};
use k8s_openapi::api::core::v1::Pod;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Allow;

#[async_trait]
impl Extension for Allow {
    fn name(&self) -> &str {
        "allow"
    }
    async fn mutate(&self, _: &Context, _: &Request, _: &Pod) -> Result<Mutation, ExtensionError> {
        Ok(Mutation::unchanged())
    }
}

/// A CA able to sign client certificates.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca(cn: &str) -> TestCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A leaf signed by `ca` for `usage` (what the apiserver's admission kubeconfig would hold).
fn leaf(ca: &TestCa, cn: &str, usage: ExtendedKeyUsagePurpose) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = name(cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

struct Server {
    addr: SocketAddr,
    ca: String,
    cancel: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(client_ca: Option<&ClientCa>) -> Server {
    eirinix_core::tls::install_default_provider();
    let bundle = CertBundle::generate(
        &SubjectNames::for_host("127.0.0.1"),
        &CertPolicy::default(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let resolver = Arc::new(CertResolver::new());
    resolver.set(bundle.certified_key().unwrap());
    let state = Arc::new(AppState {
        handlers: vec![ExtensionHandler::new(
            Arc::new(Allow),
            FailurePolicy::Fail,
            Duration::from_secs(5),
            0,
        )],
        ctx: Context::offline(Arc::new(Settings::default())),
        metrics: Arc::new(Metrics::new(["allow"])),
        health: Arc::new(Health::new()),
    });
    let listening = eirinix_core::server::Server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let addr = listening.local_addr();
    let cancel = CancellationToken::new();
    let tls = match client_ca {
        Some(ca) => server_config_with_client_ca(resolver, false, Some(ca)).unwrap(),
        None => server_config(resolver, false).unwrap(),
    };
    tokio::spawn(listening.serve_tls(
        tls,
        router(state, 1 << 20, Duration::from_secs(5)),
        ServeOptions {
            max_connections: 16,
            handshake_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        cancel.clone(),
    ));
    Server {
        addr,
        ca: bundle.ca_bundle_pem(),
        cancel,
    }
}

fn client(
    server: &Server,
    identity: Option<Identity>,
    version: &'static rustls::SupportedProtocolVersion,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for block in pem::parse_many(&server.ca).unwrap() {
        roots
            .add(CertificateDer::from(block.into_contents()))
            .unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(eirinix_core::tls::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-mtls","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i"}]}}}}"#;

/// Handshake, send one review, read the answer: `Ok(response)` or the first error (handshake,
/// write or read: with TLS 1.3 the server's refusal of a client certificate arrives as an alert
/// after the client considers its handshake done).
async fn exchange(
    server: &Server,
    identity: Option<Identity>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<String, String> {
    let fut = async {
        let tcp = TcpStream::connect(server.addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = client(server, identity, version)
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let head = format!(
            "POST /allow HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            REVIEW.len()
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.write_all(REVIEW.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if out.is_empty() {
            return Err("connection closed without a response".into());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_owned())?
}

const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn a_client_certificate_signed_by_the_client_ca_is_answered() {
    let apiserver_ca = ca("apiserver-client-ca");
    let client_ca = ClientCa::from_pem(&apiserver_ca.pem).unwrap();
    assert_eq!(client_ca.anchors(), 1);
    let server = start(Some(&client_ca)).await;
    for version in VERSIONS {
        let identity = leaf(
            &apiserver_ca,
            "kube-apiserver-admission",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let answer = exchange(&server, Some(identity), version)
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{version:?}: {answer}");
        assert!(answer.contains("\"uid\":\"u-mtls\""), "{answer}");
        assert!(answer.contains("\"allowed\":true"), "{answer}");
    }
}

#[tokio::test]
async fn clients_without_a_certificate_or_with_a_wrong_one_are_refused_at_the_handshake() {
    let apiserver_ca = ca("apiserver-client-ca");
    let other_ca = ca("someone-else");
    let server = start(Some(&ClientCa::from_pem(&apiserver_ca.pem).unwrap())).await;
    for version in VERSIONS {
        // No certificate at all.
        let err = exchange(&server, None, version)
            .await
            .expect_err("a client without a certificate must be refused");
        println!("{version:?}, no certificate: {err}");
        assert!(
            !err.contains("HTTP/1.1"),
            "{version:?}: got an HTTP answer: {err}"
        );
        assert!(
            err.contains("fatal alert: CertificateRequired"),
            "{version:?}: expected a TLS alert for the missing certificate, got {err}"
        );

        // A certificate from another CA.
        let stranger = leaf(
            &other_ca,
            "kube-apiserver-admission",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let err = exchange(&server, Some(stranger), version)
            .await
            .expect_err("a certificate from another CA must be refused");
        println!("{version:?}, another CA: {err}");
        assert!(
            err.contains("fatal alert: UnknownCA"),
            "{version:?}: expected an unknown-CA alert, got {err}"
        );

        // Right CA, but a server certificate (no clientAuth usage).
        let wrong_usage = leaf(
            &apiserver_ca,
            "not-a-client",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let err = exchange(&server, Some(wrong_usage), version)
            .await
            .expect_err("a certificate without clientAuth usage must be refused");
        println!("{version:?}, serverAuth only: {err}");
        assert!(
            err.contains("fatal alert: UnsupportedCertificate"),
            "{version:?}: expected an unsupported-certificate alert, got {err}"
        );
    }
}

#[tokio::test]
async fn without_a_client_ca_no_certificate_is_asked_for() {
    let server = start(None).await;
    let answer = exchange(&server, None, &rustls::version::TLS13)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn the_readiness_self_check_still_verifies_the_serving_chain() {
    // The self-check presents no client certificate. It verifies the served chain (what
    // readiness is about); over TLS 1.3 its handshake completes before the server's refusal
    // of the missing certificate, so readiness keeps working with verification on.
    let apiserver_ca = ca("apiserver-client-ca");
    let server = start(Some(&ClientCa::from_pem(&apiserver_ca.pem).unwrap())).await;
    self_handshake(server.addr, "127.0.0.1", &server.ca)
        .await
        .unwrap();
    // And it still fails against a chain it does not trust.
    let err = self_handshake(server.addr, "127.0.0.1", &apiserver_ca.pem)
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn unusable_client_ca_input_is_a_clear_error() {
    assert!(matches!(
        ClientCa::from_pem(""),
        Err(ClientCaError::Empty { .. })
    ));
    // A key alone is not a CA.
    let key = KeyPair::generate().unwrap().serialize_pem();
    assert!(matches!(
        ClientCa::from_pem(&key),
        Err(ClientCaError::Empty { .. })
    ));
    let garbage =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    let err = ClientCa::from_pem(garbage).unwrap_err();
    assert!(matches!(err, ClientCaError::Invalid { .. }), "{err:?}");
    let missing = std::path::Path::new("/nonexistent/eirinix-client-ca.pem");
    let err = ClientCa::from_file(missing).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/eirinix-client-ca.pem"),
        "{err}"
    );
    // Several CAs in one bundle (e.g. during a rotation of the apiserver's client CA).
    let bundle = format!("{}{}", ca("a").pem, ca("b").pem);
    assert_eq!(ClientCa::from_pem(&bundle).unwrap().anchors(), 2);
    // A file is read as such.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &bundle).unwrap();
    assert_eq!(ClientCa::from_file(&path).unwrap().anchors(), 2);
}

#[tokio::test]
async fn the_manager_refuses_to_start_with_an_unreadable_client_ca() {
    // The file is read before anything touches the cluster: a client for an address where
    // nothing listens is enough.
    let config = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let manager = Manager::builder()
        .port(0)
        .bind_address("127.0.0.1".parse().unwrap())
        .client_ca_file("/nonexistent/eirinix-client-ca.pem")
        .extension(Allow)
        .build()
        .unwrap();
    assert_eq!(
        manager.settings().client_ca.as_deref(),
        Some(std::path::Path::new("/nonexistent/eirinix-client-ca.pem"))
    );
    match manager.start(client).await {
        Err(ManagerError::ClientCa(ClientCaError::Read { path, .. })) => {
            assert_eq!(
                path,
                std::path::Path::new("/nonexistent/eirinix-client-ca.pem")
            )
        }
        Err(other) => panic!("expected a client CA error, got {other}"),
        Ok(_) => panic!("the manager started without its client CA"),
    }
}

/// The PEM of a leaf's certificate chain.
fn chain_pem(identity: &Identity) -> String {
    identity
        .0
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect()
}

/// A client leaf of `ca` valid from `from` to `to` (seconds from now).
fn leaf_valid(ca: &TestCa, from: i64, to: i64) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = name("kube-apiserver-admission");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(to);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A CA valid from `from` to `to` (seconds from now).
fn ca_valid(cn: &str, from: i64, to: i64) -> TestCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(from);
    params.not_after = now + time::Duration::seconds(to);
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

#[test]
fn the_apiservers_client_certificate_is_checked_against_the_client_ca() {
    let now = rustls::pki_types::UnixTime::now;
    let apiserver_ca = ca("apiserver-client-ca");
    let client_ca = ClientCa::from_pem(&apiserver_ca.pem).unwrap();
    let good = leaf(
        &apiserver_ca,
        "kube-apiserver-admission",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    client_ca
        .verify_client_pem(&chain_pem(&good), "good.pem", now())
        .unwrap();
    let cases = [
        (
            "another CA",
            leaf(&ca("other"), "x", ExtendedKeyUsagePurpose::ClientAuth),
            "UnknownIssuer",
        ),
        (
            "a server certificate",
            leaf(&apiserver_ca, "x", ExtendedKeyUsagePurpose::ServerAuth),
            "",
        ),
        (
            "an expired one",
            leaf_valid(&apiserver_ca, -7200, -3600),
            "certificate expired",
        ),
        (
            "a future one",
            leaf_valid(&apiserver_ca, 3600, 7200),
            "not valid",
        ),
    ];
    for (what, identity, reason) in cases {
        let err = client_ca
            .verify_client_pem(&chain_pem(&identity), "apiserver.pem", now())
            .expect_err(what);
        let text = err.to_string();
        println!("{what}: {text}");
        assert!(
            matches!(err, ClientCaError::Rejects { .. }),
            "{what}: {err:?}"
        );
        assert!(
            text.contains("does not accept the apiserver's client certificate apiserver.pem")
                && text.contains(reason),
            "{what}: {text}"
        );
    }
    // Checking is not counted as a client of the webhook port.
    assert_eq!(
        client_ca.stats().verified() + client_ca.stats().rejected(),
        0
    );

    // A CA bundle none of whose certificates is valid now verifies nobody.
    let secs = |t: rustls::pki_types::UnixTime| t.as_secs() as i64;
    let expired = ClientCa::from_pem(&ca_valid("old", -7200, -3600).pem).unwrap();
    let err = expired.check_validity(secs(now())).unwrap_err();
    assert!(matches!(err, ClientCaError::NotValid { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("no certificate in it is valid now"),
        "{err}"
    );
    let rotating = format!("{}{}", ca_valid("old", -7200, -3600).pem, apiserver_ca.pem);
    ClientCa::from_pem(&rotating)
        .unwrap()
        .check_validity(secs(now()))
        .unwrap();
}

#[tokio::test]
async fn client_certificates_presented_on_the_port_are_counted() {
    let apiserver_ca = ca("apiserver-client-ca");
    let client_ca = ClientCa::from_pem(&apiserver_ca.pem).unwrap();
    let server = start(Some(&client_ca)).await;
    let good = leaf(&apiserver_ca, "k", ExtendedKeyUsagePurpose::ClientAuth);
    exchange(&server, Some(good), &rustls::version::TLS13)
        .await
        .unwrap();
    let stranger = leaf(&ca("other"), "k", ExtendedKeyUsagePurpose::ClientAuth);
    exchange(&server, Some(stranger), &rustls::version::TLS13)
        .await
        .unwrap_err();
    assert_eq!(client_ca.stats().verified(), 1);
    assert_eq!(client_ca.stats().rejected(), 1);
    let metrics = Metrics::with(["allow"], Some(client_ca.stats().clone()), Vec::new());
    let text = metrics.render();
    assert!(
        text.contains("eirinix_client_certificates_total{result=\"verified\"} 1")
            && text.contains("eirinix_client_certificates_total{result=\"rejected\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_manager_refuses_a_client_ca_that_cannot_verify_the_apiserver() {
    let config = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let apiserver_ca = ca("apiserver-client-ca");
    let apiserver_cert = write(
        "apiserver.pem",
        &chain_pem(&leaf(
            &apiserver_ca,
            "k",
            ExtendedKeyUsagePurpose::ClientAuth,
        )),
    );
    let manager = |ca: &std::path::Path, cert: Option<&std::path::Path>| {
        let mut b = Manager::builder()
            .port(0)
            .bind_address("127.0.0.1".parse().unwrap())
            .client_ca_file(ca)
            .extension(Allow);
        if let Some(cert) = cert {
            b = b.apiserver_client_cert_file(cert);
        }
        b.build().unwrap()
    };
    let start_err = |m: Manager| {
        let client = client.clone();
        async move {
            match m.start(client).await {
                Err(e) => e,
                Ok(_) => panic!("the manager started"),
            }
        }
    };
    // Not the CA of the apiserver's certificate.
    let other = write("other-ca.pem", &ca("someone-else").pem);
    let err = start_err(manager(&other, Some(&apiserver_cert))).await;
    println!("{err}");
    assert!(
        matches!(&err, ManagerError::ClientCa(ClientCaError::Rejects { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // A CA that has expired.
    let expired = write("expired-ca.pem", &ca_valid("old", -7200, -3600).pem);
    let err = start_err(manager(&expired, None)).await;
    assert!(
        matches!(&err, ManagerError::ClientCa(ClientCaError::NotValid { .. })),
        "{err}"
    );
    // The certificate file must be readable.
    let err = start_err(manager(
        &write("ca.pem", &apiserver_ca.pem),
        Some(std::path::Path::new("/nonexistent/apiserver.pem")),
    ))
    .await;
    assert!(
        err.to_string().contains("/nonexistent/apiserver.pem"),
        "{err}"
    );
    // A certificate to check needs a CA to check it against.
    let err = Manager::builder()
        .apiserver_client_cert_file(&apiserver_cert)
        .extension(Allow)
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("client CA"), "{err}");
}
