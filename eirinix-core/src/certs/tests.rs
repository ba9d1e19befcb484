use super::*;
use x509_parser::extensions::GeneralName;

/// 2030-03-17T17:46:40Z: a whole second, far from the real clock.
fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap()
}

fn s(n: i64) -> Duration {
    Duration::seconds(n)
}

fn ms(n: i64) -> Duration {
    Duration::milliseconds(n)
}

fn names() -> SubjectNames {
    SubjectNames::for_service("hook", "system")
}

/// CA 3000 s (backdate 300 s), serving 300 s (backdate 30 s), promote after 60 s,
/// previous kept 120 s.
fn short_policy() -> CertPolicy {
    CertPolicy {
        ca_validity: StdDuration::from_secs(3000),
        serving_validity: StdDuration::from_secs(300),
        renew_fraction: 2.0 / 3.0,
        ca_promote_delay: StdDuration::from_secs(60),
        previous_ca_retention: StdDuration::from_secs(120),
        ..CertPolicy::default()
    }
}

fn pem_count(pem: &str) -> usize {
    pem::parse_many(pem).unwrap().len()
}

fn der_of(pem: &str) -> Vec<u8> {
    first_cert_der("test", pem.as_bytes()).unwrap()
}

/// Whether `leaf_pem` verifies against any certificate of `bundle_pem`.
fn trusted_by(leaf_pem: &str, bundle_pem: &str) -> bool {
    let leaf = der_of(leaf_pem);
    cert_ders("bundle", bundle_pem.as_bytes())
        .unwrap()
        .iter()
        .any(|ca| signature_verifies(&leaf, ca))
}

fn with(data: &BTreeMap<String, Vec<u8>>, key: &str, value: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut data = data.clone();
    data.insert(key.to_owned(), value.to_vec());
    data
}

fn without(data: &BTreeMap<String, Vec<u8>>, key: &str) -> BTreeMap<String, Vec<u8>> {
    let mut data = data.clone();
    data.remove(key);
    data
}

// ---- rustls handshake harness ------------------------------------------------------------

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// An in-memory TLS handshake: server presents `key`, client trusts `trusted_pem`.
fn handshake(
    key: Arc<rustls::sign::CertifiedKey>,
    trusted_pem: &str,
    server_name: &str,
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(key)));
    let mut roots = rustls::RootCertStore::empty();
    for der in cert_ders("trusted", trusted_pem.as_bytes()).unwrap() {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name)?;
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg))?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

// ---- clocks ------------------------------------------------------------------------------

#[test]
fn manual_clock_moves_only_when_told() {
    let clock = Arc::new(ManualClock::new(t0()));
    let shared: Arc<dyn Clock> = clock.clone();
    assert_eq!(shared.now(), t0());
    clock.advance(StdDuration::from_millis(1500));
    assert_eq!(shared.now(), t0() + ms(1500));
    clock.set(t0() - s(10));
    assert_eq!(clock.now(), t0() - s(10));
    clock.advance(StdDuration::MAX);
    assert!(clock.now() > t0() + Duration::days(365 * 1000));

    let real = SystemClock.now();
    assert!((real - OffsetDateTime::now_utc()).abs() < s(5));
}

// ---- names ---------------------------------------------------------------------------------

#[test]
fn subject_names_for_service_host_and_merge() {
    assert_eq!(
        names().dns,
        [
            "hook",
            "hook.system",
            "hook.system.svc",
            "hook.system.svc.cluster.local"
        ]
    );
    assert!(names().ips.is_empty());

    let ip = SubjectNames::for_host("10.1.2.3");
    assert_eq!(ip.ips, ["10.1.2.3".parse::<IpAddr>().unwrap()]);
    assert!(ip.dns.is_empty());
    let v6 = SubjectNames::for_host("[fd00::1]");
    assert_eq!(v6.ips, ["fd00::1".parse::<IpAddr>().unwrap()]);
    let dns = SubjectNames::for_host(" Webhook.Example.com. ");
    assert_eq!(dns.dns, ["webhook.example.com"]);
    assert!(dns.ips.is_empty());
    assert!(SubjectNames::for_host("").is_empty());

    let merged = names()
        .merge(SubjectNames::for_service("HOOK", "system"))
        .merge(ip.clone())
        .merge(ip);
    assert_eq!(merged.dns.len(), 4, "case-insensitive duplicates dropped");
    assert_eq!(merged.ips.len(), 1);
}

// ---- generation and contents ---------------------------------------------------------------

#[test]
fn service_mode_certificate_contents() {
    let policy = CertPolicy::default();
    let b = CertBundle::generate(&names(), &policy, t0()).unwrap();

    // Serving leaf.
    let leaf_der = der_of(&b.serving.cert_pem);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let san: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(san, names().dns);
    assert_eq!(b.serving.dns, names().dns);
    assert!(b.serving.ips.is_empty());
    let cn: Vec<_> = leaf.subject().iter_common_name().collect();
    assert_eq!(cn.len(), 1);
    assert_eq!(cn[0].as_str().unwrap(), "hook");
    assert!(!leaf.is_ca());
    assert!(
        leaf.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    assert_eq!(b.serving.not_before, t0() - Duration::minutes(5));
    assert_eq!(b.serving.not_after, t0() + Duration::days(90));
    assert_eq!(leaf.validity().not_after.to_datetime(), b.serving.not_after);

    // CA.
    let ca_der = der_of(&b.ca.cert_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert!(ca.is_ca());
    assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
    let ca_cn = ca.subject().iter_common_name().next().unwrap();
    let ca_cn = ca_cn.as_str().unwrap();
    assert!(
        ca_cn.starts_with("eirinix-ca-") && ca_cn.len() == 23,
        "{ca_cn}"
    );
    assert_eq!(b.ca.not_before, t0() - Duration::minutes(5));
    assert_eq!(b.ca.not_after, t0() + Duration::days(3650));

    // ECDSA P-256 keys.
    for key in [&b.ca.key_pem, &b.serving.key_pem] {
        let kp = KeyPair::from_pem(key).unwrap();
        assert_eq!(kp.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }
    assert_eq!(b.ca_bundle_pem().trim(), b.ca.cert_pem.trim());
    assert!(
        !format!("{b:?}").contains("PRIVATE KEY"),
        "Debug leaks a key"
    );
}

#[test]
fn url_mode_ip_san_and_custom_ca_name() {
    let policy = CertPolicy {
        ca_common_name: "my-webhook-ca".into(),
        ..CertPolicy::default()
    };
    let host = SubjectNames::for_host("10.1.2.3");
    let b = CertBundle::generate(&host, &policy, t0()).unwrap();
    let leaf_der = der_of(&b.serving.cert_pem);
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let ips: Vec<&[u8]> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::IPAddress(ip) => Some(*ip),
            _ => None,
        })
        .collect();
    assert_eq!(ips, [&[10u8, 1, 2, 3][..]]);
    assert_eq!(b.serving.ips, host.ips);
    let cn = leaf.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "10.1.2.3");
    let ca_der = der_of(&b.ca.cert_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let ca_cn = ca.subject().iter_common_name().next().unwrap();
    assert!(ca_cn.as_str().unwrap().starts_with("my-webhook-ca-"));
}

#[test]
fn generate_rejects_bad_input() {
    assert!(matches!(
        CertBundle::generate(&SubjectNames::default(), &CertPolicy::default(), t0()),
        Err(CertError::NoSubjectNames)
    ));
    for f in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        let policy = CertPolicy {
            renew_fraction: f,
            ..CertPolicy::default()
        };
        let err = CertBundle::generate(&names(), &policy, t0()).unwrap_err();
        assert!(matches!(err, CertError::InvalidPolicy(_)), "{f}: {err}");
    }
    // A 1 s certificate would be due for renewal as soon as issued.
    let policy = CertPolicy {
        serving_validity: StdDuration::from_secs(1),
        ..CertPolicy::default()
    };
    assert!(matches!(
        policy.validate(),
        Err(CertError::InvalidPolicy(_))
    ));
    let policy = CertPolicy {
        ca_validity: StdDuration::ZERO,
        ..CertPolicy::default()
    };
    assert!(matches!(
        policy.validate(),
        Err(CertError::InvalidPolicy(_))
    ));
    assert!(CertPolicy::default().validate().is_ok());
    assert!(short_policy().validate().is_ok());
}

#[test]
fn chain_verifies() {
    let b = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
    let other = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
    let leaf = der_of(&b.serving.cert_pem);
    let (_, leaf_x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let ca = der_of(&b.ca.cert_pem);
    let (_, ca_x) = x509_parser::parse_x509_certificate(&ca).unwrap();
    assert!(leaf_x.verify_signature(Some(ca_x.public_key())).is_ok());
    assert!(ca_x.verify_signature(None).is_ok(), "CA is self-signed");
    assert_eq!(leaf_x.issuer(), ca_x.subject());
    assert!(!signature_verifies(&leaf, &der_of(&other.ca.cert_pem)));
    assert!(b.serving.signed_by(&b.ca));
    assert!(!b.serving.signed_by(&other.ca));
}

#[test]
fn rustls_handshake_service_and_ip() {
    let now = OffsetDateTime::now_utc();
    let all = names().merge(SubjectNames::for_host("10.1.2.3"));
    let b = CertBundle::generate(&all, &CertPolicy::default(), now).unwrap();
    let key = b.certified_key().unwrap();
    assert_eq!(key.cert.len(), 2, "leaf + CA");
    assert_eq!(key.cert[0].as_ref(), der_of(&b.serving.cert_pem).as_slice());
    assert_eq!(key.cert[1].as_ref(), der_of(&b.ca.cert_pem).as_slice());

    handshake(key.clone(), &b.ca_bundle_pem(), "hook.system.svc").unwrap();
    handshake(
        key.clone(),
        &b.ca_bundle_pem(),
        "hook.system.svc.cluster.local",
    )
    .unwrap();
    handshake(key.clone(), &b.ca_bundle_pem(), "10.1.2.3").unwrap();
    assert!(handshake(key.clone(), &b.ca_bundle_pem(), "other.system.svc").is_err());
    let other = CertBundle::generate(&all, &CertPolicy::default(), now).unwrap();
    assert!(handshake(key, &other.ca_bundle_pem(), "hook.system.svc").is_err());
}

// ---- secret data -----------------------------------------------------------------------------

#[test]
fn secret_data_round_trip() {
    let p = short_policy();
    let b = CertBundle::generate(&names(), &p, t0()).unwrap();
    let data = b.to_secret_data();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    );
    let tls_crt = std::str::from_utf8(&data["tls.crt"]).unwrap();
    assert_eq!(pem_count(tls_crt), 2, "tls.crt is leaf + CA");
    assert_eq!(der_of(tls_crt), der_of(&b.serving.cert_pem), "leaf first");
    assert_eq!(CertBundle::from_secret_data(&data).unwrap(), b);

    // With next and previous CA and their timestamps (sub-second instants).
    let t = t0() + ms(1234);
    let b = b.apply(&Renewal::StageNextCa, &names(), &p, t).unwrap();
    let b = b
        .apply(&Renewal::PromoteNextCa, &names(), &p, t + ms(61_500))
        .unwrap();
    let b = b
        .apply(&Renewal::StageNextCa, &names(), &p, t + ms(62_750))
        .unwrap();
    let data = b.to_secret_data();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "ca-next.crt",
            "ca-next.key",
            "ca-next.staged-at",
            "ca-previous.crt",
            "ca-previous.retired-at",
            "ca.crt",
            "ca.key",
            "tls.crt",
            "tls.key"
        ]
    );
    assert_eq!(data["ca-next.staged-at"], b"2030-03-17T17:47:43.984Z");
    let back = CertBundle::from_secret_data(&data).unwrap();
    assert_eq!(back, b);
    assert_eq!(back.next_ca_staged_at, Some(t + ms(62_750)));
    assert_eq!(back.previous_ca_retired_at, Some(t + ms(61_500)));

    // Without the timestamps: conservative fallbacks (never earlier than the truth).
    let data = without(&without(&data, CA_NEXT_STAGED_AT), CA_PREVIOUS_RETIRED_AT);
    let back = CertBundle::from_secret_data(&data).unwrap();
    assert!(back.next_ca_staged_at.unwrap() >= b.next_ca_staged_at.unwrap());
    assert!(back.previous_ca_retired_at.unwrap() >= b.previous_ca_retired_at.unwrap());
}

#[test]
fn from_secret_data_errors() {
    let p = CertPolicy::default();
    let b = CertBundle::generate(&names(), &p, t0()).unwrap();
    let other = CertBundle::generate(&names(), &p, t0()).unwrap();
    let data = b.to_secret_data();
    let other_data = other.to_secret_data();
    let err = |d: &BTreeMap<String, Vec<u8>>| CertBundle::from_secret_data(d).unwrap_err();

    for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
        let e = err(&without(&data, key));
        assert!(
            matches!(&e, CertError::MissingKey { key: k } if k == key),
            "{e}"
        );
        assert!(e.to_string().contains(key), "{e}");
    }

    let e = err(&with(&data, "tls.crt", b"not a certificate"));
    assert!(
        matches!(&e, CertError::InvalidPem { key, .. } if key == "tls.crt"),
        "{e}"
    );
    let junk = b"-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    let e = err(&with(&data, "tls.crt", junk));
    assert!(
        matches!(&e, CertError::InvalidCertificate { key, .. } if key == "tls.crt"),
        "{e}"
    );
    let e = err(&with(&data, "ca.crt", b"garbage"));
    assert!(
        matches!(&e, CertError::InvalidPem { key, .. } if key == "ca.crt"),
        "{e}"
    );
    let e = err(&with(&data, "ca.key", b"garbage"));
    assert!(
        matches!(&e, CertError::InvalidPem { key, .. } if key == "ca.key"),
        "{e}"
    );
    let bad_key = b"-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
    let e = err(&with(&data, "ca.key", bad_key));
    assert!(
        matches!(&e, CertError::InvalidKey { key, .. } if key == "ca.key"),
        "{e}"
    );
    let e = err(&with(&data, "tls.key", &[0xff, 0xfe, 0x00]));
    assert!(
        matches!(&e, CertError::NotUtf8 { key } if key == "tls.key"),
        "{e}"
    );

    // Keys that do not match their certificates.
    let e = err(&with(&data, "tls.key", &other_data["tls.key"]));
    assert!(
        matches!(&e, CertError::KeyMismatch { cert, key } if cert == "tls.crt" && key == "tls.key"),
        "{e}"
    );
    let e = err(&with(&data, "ca.key", &other_data["ca.key"]));
    assert!(
        matches!(&e, CertError::KeyMismatch { cert, key } if cert == "ca.crt" && key == "ca.key"),
        "{e}"
    );

    // A consistent CA that did not sign the serving certificate.
    let mixed = with(
        &with(&data, "ca.crt", &other_data["ca.crt"]),
        "ca.key",
        &other_data["ca.key"],
    );
    let e = err(&mixed);
    assert!(
        matches!(&e, CertError::NotSignedByCa { key, .. } if key == "tls.crt"),
        "{e}"
    );

    // Swapped roles.
    let e = err(&with(
        &with(&data, "ca.crt", &data["tls.crt"]),
        "ca.key",
        &data["tls.key"],
    ));
    assert!(
        matches!(&e, CertError::NotCa { key } if key == "ca.crt"),
        "{e}"
    );
    let e = err(&with(
        &with(&data, "tls.crt", &data["ca.crt"]),
        "tls.key",
        &data["ca.key"],
    ));
    assert!(
        matches!(&e, CertError::InvalidCertificate { key, .. } if key == "tls.crt"),
        "{e}"
    );

    // Half a next CA, bad timestamps.
    let e = err(&with(&data, "ca-next.crt", &other_data["ca.crt"]));
    assert!(
        matches!(&e, CertError::MissingKey { key } if key == "ca-next.key"),
        "{e}"
    );
    let staged = b
        .apply(&Renewal::StageNextCa, &names(), &p, t0() + s(1))
        .unwrap()
        .to_secret_data();
    assert!(CertBundle::from_secret_data(&staged).is_ok());
    let e = err(&with(&staged, "ca-next.staged-at", b"yesterday"));
    assert!(
        matches!(&e, CertError::InvalidTimestamp { key, .. } if key == "ca-next.staged-at"),
        "{e}"
    );
    let e = err(&with(&staged, "ca-next.key", &other_data["ca.key"]));
    assert!(
        matches!(&e, CertError::KeyMismatch { cert, .. } if cert == "ca-next.crt"),
        "{e}"
    );
}

// ---- plan: each rule at its instant -------------------------------------------------------------

#[test]
fn plan_serving_renew_and_expiry_points() {
    let p = short_policy();
    let clock = ManualClock::new(t0());
    let b = CertBundle::generate(&names(), &p, clock.now()).unwrap();
    // Window [t0-30s, t0+300s] = 330 s; 2/3 of it is 220 s after not_before.
    assert_eq!(b.serving.not_before, t0() - s(30));
    assert_eq!(b.serving.not_after, t0() + s(300));
    let renew = t0() + s(190);
    assert_eq!(b.serving.renew_at(&p), renew);
    assert_eq!(b.next_action_at(&p), renew);
    assert_eq!(b.plan(&names(), &p, clock.now()), Renewal::None);

    clock.set(renew - ms(1));
    assert_eq!(b.plan(&names(), &p, clock.now()), Renewal::None);
    clock.advance(StdDuration::from_millis(1));
    assert_eq!(
        b.plan(&names(), &p, clock.now()),
        Renewal::ReissueServing(ReissueReason::Expiring)
    );
    clock.set(t0() + s(300) - ms(1));
    assert_eq!(
        b.plan(&names(), &p, clock.now()),
        Renewal::ReissueServing(ReissueReason::Expiring)
    );
    clock.advance(StdDuration::from_millis(1));
    let action = b.plan(&names(), &p, clock.now());
    assert_eq!(action, Renewal::ReissueServing(ReissueReason::Expired));

    let b2 = b.apply(&action, &names(), &p, clock.now()).unwrap();
    assert_eq!(b2.plan(&names(), &p, clock.now()), Renewal::None);
    assert_eq!(b2.ca, b.ca, "reissue keeps the CA");
    assert_ne!(b2.serving.key_pem, b.serving.key_pem, "fresh key");
    assert_eq!(b2.serving.not_after, t0() + s(600));
    assert_eq!(b2.ca_bundle_pem(), b.ca_bundle_pem());
    assert!(!action.changes_ca_bundle());
}

#[test]
fn plan_ca_rotation_points_and_bundle_contents() {
    let p = short_policy();
    let n = names();
    let clock = ManualClock::new(t0());
    let b0 = CertBundle::generate(&n, &p, clock.now()).unwrap();
    assert_eq!(pem_count(&b0.ca_bundle_pem()), 1);
    // CA window [t0-300s, t0+3000s] = 3300 s; renew 2200 s after not_before.
    let ca_renew = t0() + s(1900);
    assert_eq!(b0.ca.renew_at(&p), ca_renew);

    // Keep the serving certificate fresh so only the CA rule can fire.
    clock.set(ca_renew - s(20));
    let b1 = b0
        .apply(&b0.plan(&n, &p, clock.now()), &n, &p, clock.now())
        .unwrap();
    assert_eq!(b1.plan(&n, &p, clock.now()), Renewal::None);
    assert_eq!(b1.next_action_at(&p), ca_renew);
    assert_eq!(b1.plan(&n, &p, ca_renew - ms(1)), Renewal::None);
    clock.set(ca_renew);
    assert_eq!(b1.plan(&n, &p, clock.now()), Renewal::StageNextCa);

    // Stage: bundle = current + next; serving unchanged.
    let b2 = b1
        .apply(&Renewal::StageNextCa, &n, &p, clock.now())
        .unwrap();
    let next = b2.next_ca.clone().unwrap();
    assert_eq!(b2.serving, b1.serving);
    assert_eq!(b2.ca, b1.ca);
    assert_eq!(b2.next_ca_staged_at, Some(ca_renew));
    let bundle2 = b2.ca_bundle_pem();
    assert_eq!(pem_count(&bundle2), 2);
    let ders2 = cert_ders("b", bundle2.as_bytes()).unwrap();
    assert_eq!(ders2[0], der_of(&b1.ca.cert_pem));
    assert_eq!(ders2[1], der_of(&next.cert_pem));
    assert_eq!(b2.plan(&n, &p, clock.now()), Renewal::None);

    // Promote exactly ca_promote_delay after staging.
    let promote = ca_renew + s(60);
    assert_eq!(b2.next_action_at(&p), promote);
    assert_eq!(b2.plan(&n, &p, promote - ms(1)), Renewal::None);
    clock.set(promote);
    assert_eq!(b2.plan(&n, &p, clock.now()), Renewal::PromoteNextCa);
    let b3 = b2
        .apply(&Renewal::PromoteNextCa, &n, &p, clock.now())
        .unwrap();
    assert_eq!(b3.ca, next);
    assert!(b3.next_ca.is_none());
    assert_eq!(b3.previous_ca_pem.as_deref(), Some(b1.ca.cert_pem.as_str()));
    assert_eq!(b3.previous_ca_retired_at, Some(promote));
    assert!(b3.serving.signed_by(&next));
    assert!(trusted_by(&b3.serving.cert_pem, &next.cert_pem));
    // Overlap: clients with the staged bundle accept the new certificate, clients with the
    // new bundle still accept the old certificate.
    assert!(trusted_by(&b3.serving.cert_pem, &bundle2));
    let bundle3 = b3.ca_bundle_pem();
    assert_eq!(pem_count(&bundle3), 2);
    let ders3 = cert_ders("b", bundle3.as_bytes()).unwrap();
    assert_eq!(ders3[0], der_of(&next.cert_pem));
    assert_eq!(ders3[1], der_of(&b1.ca.cert_pem));
    assert!(trusted_by(&b2.serving.cert_pem, &bundle3));
    assert_eq!(b3.plan(&n, &p, clock.now()), Renewal::None);

    // Drop the previous CA after the retention (120 s; serving renews only after 190 s).
    let drop_at = promote + s(120);
    assert_eq!(b3.next_action_at(&p), drop_at);
    assert_eq!(b3.plan(&n, &p, drop_at - ms(1)), Renewal::None);
    clock.set(drop_at);
    assert_eq!(b3.plan(&n, &p, clock.now()), Renewal::DropPreviousCa);
    let b4 = b3
        .apply(&Renewal::DropPreviousCa, &n, &p, clock.now())
        .unwrap();
    assert_eq!(pem_count(&b4.ca_bundle_pem()), 1);
    assert_eq!(der_of(&b4.ca_bundle_pem()), der_of(&next.cert_pem));
    assert_eq!(b4.plan(&n, &p, clock.now()), Renewal::None);
    assert!(b4.previous_ca_retired_at.is_none());

    for action in [
        Renewal::StageNextCa,
        Renewal::PromoteNextCa,
        Renewal::DropPreviousCa,
    ] {
        assert!(action.changes_ca_bundle());
    }
    // Actions that do not fit the state are refused.
    assert!(matches!(
        b4.apply(&Renewal::DropPreviousCa, &n, &p, clock.now()),
        Err(CertError::NotApplicable { .. })
    ));
    assert!(matches!(
        b4.apply(&Renewal::PromoteNextCa, &n, &p, clock.now()),
        Err(CertError::NotApplicable { .. })
    ));
}

#[test]
fn previous_ca_dropped_when_it_expires_before_retention_ends() {
    let p = CertPolicy {
        previous_ca_retention: StdDuration::from_secs(100_000),
        ..short_policy()
    };
    let n = names();
    let b = CertBundle::generate(&n, &p, t0()).unwrap();
    let old_ca_end = b.ca.not_after; // t0 + 3000 s
    let b = b
        .apply(&Renewal::StageNextCa, &n, &p, t0() + s(1900))
        .unwrap();
    let b = b
        .apply(&Renewal::PromoteNextCa, &n, &p, t0() + s(1960))
        .unwrap();
    // Fresh serving certificate shortly before the old CA expires.
    let b = b
        .apply(
            &Renewal::ReissueServing(ReissueReason::Expiring),
            &n,
            &p,
            old_ca_end - s(10),
        )
        .unwrap();
    assert_eq!(b.next_action_at(&p), old_ca_end);
    assert_eq!(b.plan(&n, &p, old_ca_end - ms(1)), Renewal::None);
    assert_eq!(pem_count(&b.ca_bundle_pem_at(old_ca_end - ms(1))), 2);
    assert_eq!(b.plan(&n, &p, old_ca_end), Renewal::DropPreviousCa);
    assert_eq!(pem_count(&b.ca_bundle_pem_at(old_ca_end)), 1);
    assert_eq!(pem_count(&b.ca_bundle_pem()), 2);
}

#[test]
fn expired_ca_regenerates_or_promotes_at_once() {
    let p = CertPolicy {
        ca_promote_delay: StdDuration::from_secs(100_000),
        ..short_policy()
    };
    let n = names();
    let b = CertBundle::generate(&n, &p, t0()).unwrap();
    let dead = b.ca.not_after;
    // Serving certificates are never issued past the CA's expiry...
    let late = b
        .apply(
            &Renewal::ReissueServing(ReissueReason::Expired),
            &n,
            &p,
            dead - s(100),
        )
        .unwrap();
    assert_eq!(late.serving.not_after, dead);
    // ...and such a certificate is not re-issued before the CA rotates (it could not last
    // longer), which leaves the CA rules in charge.
    assert!(late.serving.renew_at(&p) < dead - s(1));
    assert_eq!(late.plan(&n, &p, dead - ms(1)), Renewal::StageNextCa);
    assert_eq!(late.plan(&n, &p, dead), Renewal::Regenerate);
    let fresh = late.apply(&Renewal::Regenerate, &n, &p, dead).unwrap();
    assert_ne!(fresh.ca, late.ca);
    assert_eq!(fresh.plan(&n, &p, dead), Renewal::None);
    assert!(Renewal::Regenerate.changes_ca_bundle());
    // A dead CA cannot sign.
    assert!(matches!(
        late.apply(
            &Renewal::ReissueServing(ReissueReason::Expired),
            &n,
            &p,
            dead
        ),
        Err(CertError::CaExpired { .. })
    ));

    // With a staged successor, the (here huge) promotion delay is cut short by the CA's death.
    let staged = late
        .apply(&Renewal::StageNextCa, &n, &p, dead - s(100))
        .unwrap();
    assert_eq!(staged.next_action_at(&p), dead);
    assert_eq!(staged.plan(&n, &p, dead - ms(1)), Renewal::None);
    assert_eq!(staged.plan(&n, &p, dead), Renewal::PromoteNextCa);
    let promoted = staged.apply(&Renewal::PromoteNextCa, &n, &p, dead).unwrap();
    assert!(promoted.serving.signed_by(staged.next_ca.as_ref().unwrap()));
    // The old CA is already dead: no point keeping it in the bundle.
    assert_eq!(promoted.plan(&n, &p, dead), Renewal::DropPreviousCa);
    let dropped = promoted
        .apply(&Renewal::DropPreviousCa, &n, &p, dead)
        .unwrap();
    assert_eq!(dropped.plan(&n, &p, dead), Renewal::None);
}

#[test]
fn names_change_triggers_reissue() {
    let p = CertPolicy::default();
    let b = CertBundle::generate(&names(), &p, t0()).unwrap();
    let more = names().merge(SubjectNames::for_host("10.0.0.7"));
    assert!(!more.covered_by(&b.serving));
    let action = b.plan(&more, &p, t0());
    assert_eq!(action, Renewal::ReissueServing(ReissueReason::NamesChanged));
    let b2 = b.apply(&action, &more, &p, t0() + s(1)).unwrap();
    assert!(more.covered_by(&b2.serving));
    assert_eq!(b2.plan(&more, &p, t0() + s(1)), Renewal::None);
    // Fewer names are still covered: no churn.
    let fewer = SubjectNames::for_host("hook.system.svc");
    assert_eq!(b2.plan(&fewer, &p, t0() + s(1)), Renewal::None);
    // A different service is not.
    let renamed = SubjectNames::for_service("hook2", "system");
    assert_eq!(
        b2.plan(&renamed, &p, t0() + s(1)),
        Renewal::ReissueServing(ReissueReason::NamesChanged)
    );
}

#[test]
fn serving_not_signed_by_current_ca_is_reissued() {
    let p = CertPolicy::default();
    let b = CertBundle::generate(&names(), &p, t0()).unwrap();
    let other = CertBundle::generate(&names(), &p, t0()).unwrap();
    let mixed = CertBundle {
        serving: other.serving.clone(),
        ..b.clone()
    };
    assert!(mixed.next_action_at(&p) <= t0());
    let action = mixed.plan(&names(), &p, t0());
    assert_eq!(
        action,
        Renewal::ReissueServing(ReissueReason::NotSignedByCurrentCa)
    );
    let fixed = mixed.apply(&action, &names(), &p, t0()).unwrap();
    assert!(fixed.serving.signed_by(&b.ca));
    assert!(trusted_by(&fixed.serving.cert_pem, &b.ca.cert_pem));
    assert_eq!(fixed.plan(&names(), &p, t0()), Renewal::None);

    // Loaded from a Secret: a serving cert signed by the previous CA is accepted, then
    // re-issued.
    let n = names();
    let p = short_policy();
    let s0 = CertBundle::generate(&n, &p, t0()).unwrap();
    let s1 = s0
        .apply(&Renewal::StageNextCa, &n, &p, t0() + s(1))
        .unwrap();
    let s2 = s1
        .apply(&Renewal::PromoteNextCa, &n, &p, t0() + s(61))
        .unwrap();
    let mut data = s2.to_secret_data();
    data.insert(TLS_CRT.into(), s0.serving_chain_pem().into_bytes());
    data.insert(TLS_KEY.into(), s0.serving.key_pem.clone().into_bytes());
    let loaded = CertBundle::from_secret_data(&data).unwrap();
    assert!(loaded.serving.signed_by(&s0.ca));
    assert_eq!(
        loaded.plan(&n, &p, t0() + s(62)),
        Renewal::ReissueServing(ReissueReason::NotSignedByCurrentCa)
    );
}

/// Runs the caller's loop for many rotations with second-scale lifetimes and fractional-second
/// ticks; checks that the serving certificate is always valid and trusted by the published
/// caBundle, that `next_action_at` is exact, that each loop settles, and that the state
/// survives the Secret round trip.
#[test]
fn long_run_with_second_scale_lifetimes_never_expires() {
    let p = CertPolicy {
        ca_validity: StdDuration::from_secs(30),
        serving_validity: StdDuration::from_secs(3),
        renew_fraction: 2.0 / 3.0,
        ca_promote_delay: StdDuration::from_secs(2),
        previous_ca_retention: StdDuration::from_secs(5),
        ..CertPolicy::default()
    };
    let n = names();
    let clock = ManualClock::new(t0() + ms(500));
    let mut b = CertBundle::generate(&n, &p, clock.now()).unwrap();
    // Sub-second renew point: window [t0, t0+4s] (backdate 0.3 s, whole seconds).
    assert_eq!(b.serving.not_before, t0());
    assert_eq!(b.serving.not_after, t0() + s(4));
    let renew = b.serving.renew_at(&p);
    assert_eq!(renew, t0() + Duration::nanoseconds(2_666_666_667));
    assert_eq!(b.plan(&n, &p, renew - ms(1)), Renewal::None);
    assert_eq!(
        b.plan(&n, &p, renew),
        Renewal::ReissueServing(ReissueReason::Expiring)
    );

    let mut published = b.ca_bundle_pem();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _tick in 0..480 {
        clock.advance(StdDuration::from_millis(250));
        let now = clock.now();
        let mut steps = 0;
        loop {
            let action = b.plan(&n, &p, now);
            assert_eq!(
                action != Renewal::None,
                now >= b.next_action_at(&p),
                "next_action_at disagrees with plan at {now}: {action:?}"
            );
            if action == Renewal::None {
                break;
            }
            assert_ne!(action, Renewal::Regenerate, "rotation fell behind at {now}");
            *counts.entry(format!("{action:?}")).or_default() += 1;
            let old_serving = b.serving.clone();
            b = b.apply(&action, &n, &p, now).unwrap();
            // New serving certs are trusted by the bundle published before the switch...
            if b.serving != old_serving {
                assert!(trusted_by(&b.serving.cert_pem, &published), "{action:?}");
            }
            published = b.ca_bundle_pem();
            // ...and the old one is still trusted by the new bundle (other replicas).
            assert!(trusted_by(&old_serving.cert_pem, &published), "{action:?}");
            assert!(pem_count(&published) <= 3);
            b = CertBundle::from_secret_data(&b.to_secret_data()).unwrap();
            steps += 1;
            assert!(steps <= 5, "plan/apply loop does not settle at {now}");
        }
        assert!(b.serving.not_before <= now && now < b.serving.not_after);
        assert!(b.ca.not_before <= now && now < b.ca.not_after);
        assert!(trusted_by(&b.serving.cert_pem, &published));
        assert!(b.next_action_at(&p) > now);
    }
    // 120 s with a 33 s CA window: several full rotations happened.
    assert!(counts["StageNextCa"] >= 4, "{counts:?}");
    assert!(counts["PromoteNextCa"] >= 4, "{counts:?}");
    assert!(counts["DropPreviousCa"] >= 4, "{counts:?}");
    assert!(counts["ReissueServing(Expiring)"] >= 20, "{counts:?}");
    assert!(
        !counts.contains_key("ReissueServing(Expired)"),
        "{counts:?}"
    );
}

// ---- rustls material and files -------------------------------------------------------------

#[test]
fn certified_key_checks_material() {
    let b = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
    let other = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
    let key = certified_key(&b.serving_chain_pem(), &b.serving.key_pem).unwrap();
    assert_eq!(key.cert.len(), 2);
    assert!(key.keys_match().is_ok());
    assert_eq!(
        key.end_entity_cert().unwrap().as_ref(),
        der_of(&b.serving.cert_pem)
    );

    let e = certified_key(&b.serving_chain_pem(), &other.serving.key_pem).unwrap_err();
    assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");
    let e = certified_key("nope", &b.serving.key_pem).unwrap_err();
    assert!(matches!(e, CertError::InvalidPem { .. }), "{e}");
    let e = certified_key(&b.serving_chain_pem(), &b.serving.cert_pem).unwrap_err();
    assert!(matches!(e, CertError::InvalidPem { .. }), "{e}");

    // SEC1 ("EC PRIVATE KEY") keys, cert-manager's default for ECDSA, are accepted: the
    // SEC1 structure is the OCTET STRING inside the PKCS#8 wrapper.
    let pkcs8 = pem::parse(&b.serving.key_pem).unwrap();
    let (_, info) = x509_parser::der_parser::parse_der(pkcs8.contents()).unwrap();
    let fields = info.as_sequence().unwrap();
    let sec1 = fields[2].as_slice().unwrap();
    let sec1_pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1));
    let key = certified_key(&b.serving_chain_pem(), &sec1_pem).unwrap();
    assert!(key.keys_match().is_ok());
    // The same bytes under a wrong tag are rejected by rustls, not silently accepted.
    let mislabeled = pem::encode(&pem::Pem::new("EC PRIVATE KEY", pkcs8.contents()));
    let e = certified_key(&b.serving_chain_pem(), &mislabeled).unwrap_err();
    assert!(matches!(e, CertError::Rustls(_)), "{e}");
}

#[test]
fn file_certs_load() {
    let dir = tempfile::tempdir().unwrap();
    let b = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
    let data = b.to_secret_data();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.path().join(key), &data[key]).unwrap();
    }
    let crt = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let ca = dir.path().join("ca.crt");

    let files = FileCerts::load(&crt, &key, Some(&ca)).unwrap();
    assert_eq!(files.cert_chain_pem, b.serving_chain_pem());
    assert_eq!(files.key_pem, b.serving.key_pem);
    assert_eq!(files.ca_pem.as_deref(), Some(b.ca.cert_pem.as_str()));
    assert_eq!(files.leaf_not_after().unwrap(), b.serving.not_after);
    let ck = certified_key(&files.cert_chain_pem, &files.key_pem).unwrap();
    assert_eq!(ck.cert.len(), 2);
    assert!(!format!("{files:?}").contains("PRIVATE KEY"));

    let no_ca = FileCerts::load(&crt, &key, None).unwrap();
    assert!(no_ca.ca_pem.is_none());

    let missing = dir.path().join("absent.crt");
    let e = FileCerts::load(&missing, &key, None).unwrap_err();
    assert!(
        matches!(&e, CertError::Io { path, .. } if path == &missing),
        "{e}"
    );
    assert!(e.to_string().contains("absent.crt"), "{e}");

    let other = CertBundle::generate(&names(), &CertPolicy::default(), t0()).unwrap();
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &other.serving.key_pem).unwrap();
    let e = FileCerts::load(&crt, &other_key, None).unwrap_err();
    assert!(
        matches!(&e, CertError::KeyMismatch { key, .. } if key.ends_with("other.key")),
        "{e}"
    );
    let e = FileCerts::load(&crt, &key, Some(&key)).unwrap_err();
    assert!(
        matches!(&e, CertError::InvalidPem { key, .. } if key.ends_with("tls.key")),
        "{e}"
    );
}
