//! A wrong client CA against a real apiserver that presents an admission client certificate:
//! given that certificate (`apiserver_client_cert_file`), the manager refuses to start with a
//! CA that does not verify it, is ready and admits with the right one, and stops being ready
//! when the certificate no longer verifies (expired); without it, the metrics show the
//! rejections.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use eirinix_core::manager::ManagerError;
use eirinix_core::tls::ClientCaError;
use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn test_ca(cn: &str) -> TestCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A client certificate of `ca` (PEM certificate, PEM key), valid for `valid` from now.
fn client_cert(ca: &TestCa, valid: Duration) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn("kube-apiserver-admission");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + valid;
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A control plane whose apiserver presents `cert`/`key` to every webhook.
async fn plane_presenting(dir: &Path, cert: &str, key: &str) -> ControlPlane {
    let b64 = base64::engine::general_purpose::STANDARD;
    let kubeconfig = write(
        dir,
        "admission-kubeconfig.yaml",
        &format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    \
             client-certificate-data: {}\n    client-key-data: {}\n",
            b64.encode(cert),
            b64.encode(key)
        ),
    );
    let admission = write(
        dir,
        "admission.yaml",
        &format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n\
             - name: MutatingAdmissionWebhook\n  configuration:\n    \
             apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    \
             kubeConfigFile: {}\n",
            kubeconfig.display()
        ),
    );
    init_tracing();
    ControlPlane::builder()
        .apiserver_flag(format!(
            "--admission-control-config-file={}",
            admission.display()
        ))
        .start()
        .await
        .expect("control plane (see eirinix-testenv README)")
}

fn client_cert_counts(text: &str) -> (u64, u64) {
    let count = |result: &str| {
        let prefix = format!("eirinix_client_certificates_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap()
    };
    (count("verified"), count("rejected"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_that_cannot_verify_the_apiserver_is_refused_or_not_ready() {
    bounded(Duration::from_secs(180), async {
        let dir = tempfile::tempdir().unwrap();
        let apiserver_ca = test_ca("apiserver-admission-client-ca");
        let (cert, key) = client_cert(&apiserver_ca, Duration::from_secs(24 * 3600));
        let cp = plane_presenting(dir.path(), &cert, &key).await;
        let client = cp.client().await.unwrap();
        let right_ca = write(dir.path(), "client-ca.pem", &apiserver_ca.pem);
        let wrong_ca = write(dir.path(), "other-ca.pem", &test_ca("someone-else").pem);
        let apiserver_cert = write(dir.path(), "apiserver-client.pem", &cert);

        // Told which certificate the apiserver presents, a wrong CA is refused at start.
        let (sys, ns) = namespaces(&cp, "ca-wrong").await;
        let fp = unique_name("ca-wrong");
        let err = manager(&fp, &sys, &ns)
            .client_ca_file(&wrong_ca)
            .apiserver_client_cert_file(&apiserver_cert)
            .extension(Sticky)
            .build()
            .unwrap()
            .start(client.clone())
            .await
            .err()
            .expect("a client CA that does not verify the apiserver's certificate");
        println!("refused: {err}");
        assert!(
            matches!(&err, ManagerError::ClientCa(ClientCaError::Rejects { .. })),
            "{err}"
        );

        // The right CA: ready, the apiserver's certificate verified, the pod mutated.
        let fp = unique_name("ca-right");
        let running = manager(&fp, &sys, &ns)
            .client_ca_file(&right_ca)
            .apiserver_client_cert_file(&apiserver_cert)
            .extension(Sticky)
            .build()
            .unwrap()
            .start(client.clone())
            .await
            .unwrap();
        running.wait_ready(Duration::from_secs(20)).await.unwrap();
        let pod = admit(&client, &ns, &app_pod("right-ca")).await;
        assert_eq!(sticky(&pod).as_deref(), Some("hello"));
        let (verified, rejected) = client_cert_counts(&running.metrics().render());
        assert!(
            verified >= 1 && rejected == 0,
            "{verified} verified, {rejected} rejected"
        );
        running.shutdown().await;

        // Not told: a wrong CA cannot be seen before the apiserver calls; then the metrics
        // show the apiserver's certificate rejected and none verified.
        let (sys, ns) = namespaces(&cp, "ca-unknown").await;
        let fp = unique_name("ca-unknown");
        let running = manager(&fp, &sys, &ns)
            .client_ca_file(&wrong_ca)
            .extension(Sticky)
            .build()
            .unwrap()
            .start(client.clone())
            .await
            .unwrap();
        running.wait_ready(Duration::from_secs(20)).await.unwrap();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &app_pod("wrong-ca"))
            .await
            .expect_err("the webhook refuses the apiserver: Fail denies");
        let (verified, rejected) = client_cert_counts(&running.metrics().render());
        assert!(
            verified == 0 && rejected >= 1,
            "{verified} verified, {rejected} rejected"
        );
        running.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_once_the_apiservers_certificate_no_longer_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (client, sys, ns, fp) = setup("ca-expiry", "e2e-ca-expiry").await;
    let apiserver_ca = test_ca("apiserver-admission-client-ca");
    let ca = write(dir.path(), "client-ca.pem", &apiserver_ca.pem);
    // The certificate the apiserver presents expires in a few seconds.
    let (short, _) = client_cert(&apiserver_ca, Duration::from_secs(4));
    let cert = write(dir.path(), "apiserver-client.pem", &short);
    let running = manager(&fp, &sys, &ns)
        .client_ca_file(&ca)
        .apiserver_client_cert_file(&cert)
        .extension(Sticky)
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(Duration::from_secs(20)).await.unwrap();
    let why = eventually(
        Duration::from_secs(20),
        "not ready after the expiry",
        || async { running.health().readiness().err() },
    )
    .await;
    println!("not ready: {why}");
    assert!(
        why.contains("does not accept the apiserver's client certificate")
            && why.contains("expired"),
        "{why}"
    );
    // The renewed certificate is picked up from the file.
    let (renewed, _) = client_cert(&apiserver_ca, Duration::from_secs(24 * 3600));
    std::fs::write(&cert, renewed).unwrap();
    running
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("ready again with the renewed certificate");
    running.shutdown().await;
}
