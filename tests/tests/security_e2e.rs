//! Security end to end, against a real kube-apiserver:
//!
//! - no secret material in logs: a full run (persi + ssh + rootfs + logs, certificates created
//!   and rotated, a broker with a password, ssh keys, a bearer token through the ssh proxy,
//!   credentials in VCAP_SERVICES and in app log lines) with every log record of this process, at
//!   TRACE for every crate, captured; none of the secret values may appear in it;
//! - the apiserver's admission client certificate verified by the webhook (mutual TLS).
//!
//! This binary installs its own global subscriber (a buffer): keep unrelated tests out of it.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use eirinix_core::certs::CertPolicy;
use eirinix_testenv::support::{core_rule, service_account_token};
use eirinix_testenv::{ControlPlane, FakeKubelet, unique_name};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Capturing every log record of this process.

/// Everything logged in this process (all crates, TRACE), from the first test on.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init()
            .expect("this test binary installs the only global subscriber");
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&captured().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Substrings whose presence in the logs would reveal `secret`, whatever the form it was
/// printed in: for PEM or OpenSSH keys every base64 line of the body (printed as text or with
/// `{:?}`, a key shows at least one), for JWTs also the signature, else the value itself; plus
/// the value base64-encoded (a Secret's `data` in JSON) and the decimal byte list `{:?}` prints
/// for a `Vec<u8>` or `ByteString`.
fn needles(secret: &str) -> Vec<String> {
    let mut out: Vec<String> = if secret.contains("-----BEGIN") {
        secret
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----") && l.len() >= 24)
            .map(str::to_owned)
            .collect()
    } else {
        let mut v = vec![secret.to_owned()];
        let parts: Vec<&str> = secret.split('.').collect();
        if parts.len() == 3 && parts.iter().all(|p| p.len() >= 16) {
            v.push(parts[2].to_owned());
        }
        v
    };
    out.push(B64.encode(secret));
    let sample = out[0].as_bytes();
    out.push(
        sample[..sample.len().min(24)]
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    out
}

/// Secrets of a run, by description.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let value = value.into();
        assert!(
            value.trim().len() >= 16,
            "too short to search for: {value:?}"
        );
        self.0.push((what.into(), value));
    }

    /// The first secret found in `logs`, with the line it is in.
    fn find_in(&self, logs: &str) -> Option<(String, String)> {
        for (what, value) in &self.0 {
            for needle in needles(value) {
                if let Some(at) = logs.find(&needle) {
                    let line_start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
                    let line_end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
                    let line = &logs[line_start..line_end.min(line_start + 2000)];
                    return Some((what.clone(), line.to_owned()));
                }
            }
        }
        None
    }
}

/// Private-key markers in the forms they could be logged in (text, base64 at the start of a
/// base64-encoded value, `{:?}` of bytes).
const KEY_MARKERS: [&str; 5] = [
    "PRIVATE KEY",
    "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t",
    "LS0tLS1CRUdJTiBPUEVOU1NIIFBSSVZBVEUgS0VZLS0tLS",
    "LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0t",
    "80, 82, 73, 86, 65, 84, 69, 32, 75, 69, 89",
];

fn random(prefix: &str) -> String {
    format!(
        "{prefix}-{:016x}{:016x}",
        rand_u64(),
        rand_u64() ^ u64::from(std::process::id())
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// A small PKI (rcgen), a syslog receiver with mutual TLS, plain HTTP.

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

/// (certificate PEM, key PEM) signed by `ca`.
fn issue(ca: &TestCa, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = dn(cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A syslog receiver on loopback requiring a client certificate from `client_ca`; keeps every
/// byte received.
struct SyslogReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    cancel: CancellationToken,
}

impl Drop for SyslogReceiver {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl SyslogReceiver {
    async fn start(server_cert: &str, server_key: &str, client_ca: &str) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(
                pem_der(client_ca, "CERTIFICATE").unwrap(),
            ))
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(
                    pem_der(server_cert, "CERTIFICATE").unwrap(),
                )],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    pem_der(server_key, "PRIVATE KEY").unwrap(),
                )),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let (sink, stop) = (received.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                let (acceptor, sink, stop) = (acceptor.clone(), sink.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = tokio::select! {
                            r = tls.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                            _ = stop.cancelled() => return,
                        };
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Self {
            addr,
            received,
            cancel,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

fn pem_der(pem: &str, tag: &str) -> Option<Vec<u8>> {
    // Minimal PEM decoding (first block with `tag`).
    let begin = format!("-----BEGIN {tag}-----");
    let end = format!("-----END {tag}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = pem[start..].find(&end)? + start;
    let body: String = pem[start..stop].split_whitespace().collect();
    B64.decode(body).ok()
}

/// One HTTP/1.1 request over plain TCP (`Connection: close`): (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: (&str, &str),
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let credentials = B64.encode(format!("{}:{}", auth.0, auth.1));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Basic {credentials}\r\n\
         x-broker-api-version: 2.17\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut out))
        .await
        .expect("broker answers")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

// ---------------------------------------------------------------------------------------------
// Kubernetes helpers.

/// A ServiceAccount allowed to `create pods/exec` in `ns`, and a token for it.
async fn exec_token(client: &kube::Client, ns: &str, name: &str) -> String {
    let rules = vec![
        core_rule("pods", &["get", "list"]),
        core_rule("pods/exec", &["create"]),
    ];
    service_account_token(client, ns, name, rules).await
}

/// Report container `container` of `pod` as running (no kubelet here).
async fn set_running(client: &kube::Client, ns: &str, pod: &str, container: &str) {
    let patch = serde_json::json!({"status": {"phase": "Running", "containerStatuses": [{
        "name": container, "image": "registry.example/cflinuxfs3:v2", "imageID": "",
        "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn secret_strings(secret: &Secret) -> HashMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Maps pod names to loopback ssh daemons (pod IPs are not reachable here).
struct LoopbackResolver(HashMap<String, SocketAddr>);

#[async_trait]
impl eirinix_ssh::PodResolver for LoopbackResolver {
    async fn resolve(&self, pod: &Pod, _port: u16) -> Result<SocketAddr, String> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.0
            .get(&name)
            .copied()
            .ok_or_else(|| format!("no daemon for {name}"))
    }
}

/// `ssh` through the proxy at `proxy` as `user` with `password` (via SSH_ASKPASS); returns
/// (exit code, stdout, stderr).
async fn ssh_via_proxy(
    dir: &Path,
    proxy: SocketAddr,
    user: &str,
    password: &str,
    command: &str,
) -> (Option<i32>, String, String) {
    let secret = write(dir, &random("password"), password);
    let askpass = dir.join(random("askpass"));
    std::fs::write(&askpass, format!("#!/bin/sh\ncat '{}'\n", secret.display())).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-p", &proxy.port().to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "IdentityAgent=none",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=10",
            ])
            .args(["-l", user, "127.0.0.1", command])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ssh finishes within 30 s")
    .expect("the ssh client (openssh-client) runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------

const SERVICE_ID: &str = "svc-persi-sec";
const PLAN_ID: &str = "plan-sec";
const ROOTFS_PATTERN: &str = "registry.example/cflinuxfs*";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_no_secret_material() {
    captured();
    bounded(Duration::from_secs(240), async {
        let cp = ControlPlane::shared()
            .await
            .expect("control plane (see eirinix-testenv README)");
        let client = cp.client().await.unwrap();
        let (sys, apps) = namespaces(cp, "sec").await;
        let fp = unique_name("sec");
        let dir = tempfile::tempdir().unwrap();
        let mut secrets = Secrets::default();

        // Log forwarding over mutual TLS: the client key is a secret.
        let logs_ca = test_ca("logs-ca");
        let (server_cert, server_key) = issue(
            &logs_ca,
            "syslog",
            &["127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = issue(
            &logs_ca,
            "eirinix-logs",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        secrets.add("the syslog server key", server_key.clone());
        secrets.add("the syslog client key (logs sink mTLS)", client_key.clone());
        let receiver = SyslogReceiver::start(&server_cert, &server_key, &logs_ca.pem).await;
        let tls = eirinix_logs::TlsOptions {
            ca_file: write(dir.path(), "logs-ca.crt", &logs_ca.pem),
            cert_file: Some(write(dir.path(), "logs-client.crt", &client_cert)),
            key_file: Some(write(dir.path(), "logs-client.key", &client_key)),
            server_name: Some("127.0.0.1".into()),
        };
        let mut logs_options = eirinix_logs::LogsOptions {
            sinks: vec![eirinix_logs::SinkOptions::Syslog(
                eirinix_logs::SyslogOptions {
                    address: receiver.addr.to_string(),
                    tls: Some(tls),
                    ..Default::default()
                },
            )],
            reconnect_initial_ms: 50,
            reconnect_max_ms: 500,
            ..Default::default()
        };
        logs_options.replicas.lease_duration_secs = 3;
        logs_options.replicas.checkpoint_interval_ms = 200;
        let kubelet = FakeKubelet::start(&client, &unique_name("sec-node"))
            .await
            .unwrap();

        // The persi broker, with its password.
        let broker_password = random("broker-password");
        secrets.add("the broker password", broker_password.clone());
        let broker_config = eirinix_persi::broker::BrokerConfig::from_yaml(&format!(
            r#"
namespace: {apps}
username: cc
password: {broker_password}
catalog:
  services:
  - id: {SERVICE_ID}
    name: eirini-persi
    description: volumes
    plans:
    - id: {PLAN_ID}
      name: default
      description: 1Gi
"#
        ))
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker = listener.local_addr().unwrap();
        let stop_broker = CancellationToken::new();
        let broker_task = tokio::spawn(eirinix_persi::broker::serve_broker_on(
            listener,
            broker_config,
            client.clone(),
            {
                let stop = stop_broker.clone();
                async move { stop.cancelled().await }
            },
        ));

        // The manager with the four stock extensions and fast-rotating certificates.
        let policy = CertPolicy {
            ca_validity: Duration::from_secs(24),
            serving_validity: Duration::from_secs(6),
            renew_fraction: 0.5,
            ca_promote_delay: Duration::from_secs(2),
            previous_ca_retention: Duration::from_secs(4),
            ..CertPolicy::default()
        };
        let ssh = eirinix_ssh::SshInjector::new(eirinix_ssh::SshOptions::default());
        let builder = manager(&fp, &sys, &apps)
            .cert_policy(policy)
            .cert_check_interval(Duration::from_millis(500))
            .view_extension(eirinix_persi::Persi::new(
                eirinix_persi::PersiOptions::default(),
            ))
            .extension(ssh)
            .task("ssh-janitor", |ctx, cancel| {
                eirinix_ssh::run_janitor(ctx, eirinix_ssh::JanitorOptions::default(), cancel)
            });
        let (builder, _rootfs) = eirinix_rootfs::install(
            builder,
            eirinix_rootfs::RootfsOptions {
                version: Some("v2".into()),
                image_pattern: Some(ROOTFS_PATTERN.into()),
                namespace: Some(apps.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let (builder, _logs) = eirinix_logs::try_install(builder, logs_options).unwrap();
        let running = builder.build().unwrap().start(client.clone()).await.unwrap();
        running.wait_ready(Duration::from_secs(20)).await.unwrap();

        // Every key the certificate Secret holds during the run.
        let cert_keys = Arc::new(Mutex::new(BTreeSet::new()));
        let stop_watch = CancellationToken::new();
        let watch = {
            let (keys, stop) = (cert_keys.clone(), stop_watch.clone());
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &sys);
            let name = format!("{fp}-setupcertificate");
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if let Ok(Some(s)) = secrets.get_opt(&name).await {
                        for (k, v) in secret_strings(&s) {
                            if k.ends_with(".key") {
                                keys.lock().unwrap().insert(v);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };

        // Broker: a wrong password, then the platform's calls.
        let (code, _) = http(broker, "GET", "/v2/catalog", ("cc", "wrong-password"), None).await;
        assert_eq!(code, 401);
        let (code, body) = http(broker, "GET", "/v2/catalog", ("cc", &broker_password), None).await;
        assert_eq!(code, 200, "{body}");
        let instance = "inst-sec-1";
        let (code, body) = http(
            broker,
            "PUT",
            &format!("/v2/service_instances/{instance}"),
            ("cc", &broker_password),
            Some(serde_json::json!({"service_id": SERVICE_ID, "plan_id": PLAN_ID,
                "context": {"platform": "cloudfoundry", "organization_guid": "o", "space_guid": "s"}})),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        let (code, body) = http(
            broker,
            "PUT",
            &format!("/v2/service_instances/{instance}/service_bindings/b-sec-1"),
            ("cc", &broker_password),
            Some(serde_json::json!({"service_id": SERVICE_ID, "plan_id": PLAN_ID,
                "bind_resource": {"app_guid": "sec-app"},
                "parameters": {"mount": "/var/vcap/data/uploads", "mode": "rw"}})),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        let binding: serde_json::Value = serde_json::from_str(&body).unwrap();

        // An app pod for every extension, with credentials of another service in VCAP_SERVICES
        // and a token in its environment.
        let db_password = random("db-password");
        let app_token = random("app-token");
        secrets.add("a database password in VCAP_SERVICES", db_password.clone());
        secrets.add("a token in the pod environment", app_token.clone());
        let vcap = serde_json::json!({
            "eirini-persi": [{
                "name": "uploads", "label": "eirini-persi", "plan": "default",
                "credentials": binding["credentials"], "volume_mounts": binding["volume_mounts"]}],
            "elephantsql": [{"name": "db", "label": "elephantsql", "credentials": {
                "uri": format!("postgres://admin:{db_password}@db.example:5432/app"),
                "password": db_password}}]
        });
        let guid = unique_name("sec-guid");
        let app = |name: &str, env: serde_json::Value| -> Pod {
            let mut pod: Pod = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {
                    "cloudfoundry.org/source_type": "APP", "cloudfoundry.org/guid": guid,
                    "cloudfoundry.org/app_guid": guid, "cloudfoundry.org/version": "v1",
                    "cloudfoundry.org/process_type": "web"}},
                "spec": {"containers": [{"name": "opi", "image": "registry.example/cflinuxfs3:v1",
                    "command": ["/bin/app"], "env": env}]}
            }))
            .unwrap();
            kubelet.assign(&mut pod);
            pod
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
        let dora = pods
            .create(
                &PostParams::default(),
                &app(
                    "dora-0",
                    serde_json::json!([
                        {"name": "VCAP_SERVICES", "value": vcap.to_string()},
                        {"name": "APP_TOKEN", "value": app_token}
                    ]),
                ),
            )
            .await
            .unwrap();
        let spec = dora.spec.as_ref().unwrap();
        assert!(
            spec.volumes
                .iter()
                .flatten()
                .any(|v| v.persistent_volume_claim.is_some()),
            "persi mounted the claim"
        );
        assert_eq!(
            spec.containers[0].command.as_ref().unwrap()[0],
            "/eirinix/ssh/eirinix-sshd",
            "ssh wrapped the command"
        );
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("registry.example/cflinuxfs3:v2"),
            "rootfs set the version"
        );
        set_running(&client, &apps, "dora-0", "opi").await;

        // VCAP_SERVICES from a Secret (persi reads it through the API).
        let vcap_secret_password = random("secret-ref-password");
        secrets.add("a password in a VCAP_SERVICES Secret", vcap_secret_password.clone());
        let vcap_from_secret = serde_json::json!({"user-provided": [{"name": "creds",
            "credentials": {"password": vcap_secret_password}}]});
        Api::<Secret>::namespaced(client.clone(), &apps)
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: ObjectMeta {
                        name: Some("dora-vcap".into()),
                        ..Default::default()
                    },
                    data: Some(
                        [(
                            "VCAP_SERVICES".to_owned(),
                            ByteString(vcap_from_secret.to_string().into_bytes()),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        pods.create(
            &PostParams::default(),
            &app(
                "dora-1",
                serde_json::json!([{"name": "VCAP_SERVICES", "valueFrom": {"secretKeyRef":
                    {"name": "dora-vcap", "key": "VCAP_SERVICES"}}}]),
            ),
        )
        .await
        .unwrap();

        // A pod persi denies (a relative mount path), with a password next to the bad binding.
        let denied_password = random("denied-pod-password");
        secrets.add("a password in a denied pod", denied_password.clone());
        let bad_vcap = serde_json::json!({"eirini-persi": [{"name": "bad",
            "credentials": {"volume_id": "persi-x", "password": denied_password},
            "volume_mounts": [{"container_dir": "relative/dir", "mode": "rw",
                "device": {"volume_id": "persi-x"}}]}]});
        let err = pods
            .create(
                &PostParams::default(),
                &app(
                    "dora-2",
                    serde_json::json!([{"name": "VCAP_SERVICES", "value": bad_vcap.to_string()}]),
                ),
            )
            .await
            .expect_err("persi denies a relative container_dir");
        assert!(err.to_string().contains("not an absolute path"), "{err}");

        // ssh: the keys the webhook generated, the proxy's host key, a token through the proxy.
        let ssh_secret = Api::<Secret>::namespaced(client.clone(), &apps)
            .get(&eirinix_ssh::SshOptions::default().secret_name(&guid))
            .await
            .unwrap();
        let ssh_data = secret_strings(&ssh_secret);
        secrets.add("the app's ssh host key", ssh_data["host-key"].clone());
        secrets.add("the proxy's ssh client key", ssh_data["client-key"].clone());
        let keys = eirinix_ssh::AppKeys::from_secret(&ssh_secret).unwrap();
        let mut daemon_config = eirinix_ssh::DaemonConfig::new(
            keys.host.clone(),
            vec![keys.authorized_public().clone()],
        );
        daemon_config.listen = Some(std::net::Ipv4Addr::LOCALHOST.into());
        daemon_config.port = 0;
        daemon_config.env = Some(vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("APP_MARKER".into(), "reached-the-instance".into()),
        ]);
        let daemon = eirinix_ssh::Daemon::bind(daemon_config).await.unwrap();
        let daemon_addr = daemon.local_addr().unwrap();
        let stop_ssh = CancellationToken::new();
        tokio::spawn(daemon.serve(stop_ssh.clone()));
        // The master key the webhook made at the first admission: the app keys and the
        // proxy's host key derive from it.
        let master_name = eirinix_ssh::SshOptions::default().master_secret_name(&fp);
        let master_secret = Api::<Secret>::namespaced(client.clone(), &sys)
            .get(&master_name)
            .await
            .unwrap();
        secrets.add(
            "the ssh master key",
            secret_strings(&master_secret)["master-key"].clone(),
        );
        let master = eirinix_ssh::MasterKey::from_secret(&client, &sys, &master_name, false)
            .await
            .unwrap();
        secrets.add(
            "the proxy's host key",
            master
                .proxy_host_key()
                .unwrap()
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .unwrap()
                .to_string(),
        );
        let mut proxy_config = eirinix_ssh::ProxyConfig::new(master).unwrap();
        proxy_config.listen = "127.0.0.1:0".parse().unwrap();
        proxy_config.namespace = Some(apps.clone());
        proxy_config.refusal_time = Duration::from_millis(300);
        proxy_config.resolver = Arc::new(LoopbackResolver(HashMap::from([(
            "dora-0".to_owned(),
            daemon_addr,
        )])));
        let proxy = eirinix_ssh::Proxy::bind(proxy_config, client.clone())
            .await
            .unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        tokio::spawn(proxy.serve(stop_ssh.clone()));
        let token = exec_token(&client, &apps, "developer").await;
        secrets.add("a bearer token used at the ssh proxy", token.clone());
        let user = format!("{guid}/0");
        let (code, stdout, stderr) =
            ssh_via_proxy(dir.path(), proxy_addr, &user, &token, "echo $APP_MARKER").await;
        assert_eq!(code, Some(0), "stdout {stdout:?} stderr {stderr:?}");
        assert_eq!(stdout, "reached-the-instance\n");
        let forged = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{}",
            random("payload"),
            random("signature")
        );
        secrets.add("a forged bearer token", forged.clone());
        let (code, _, stderr) =
            ssh_via_proxy(dir.path(), proxy_addr, &user, &forged, "true").await;
        assert_eq!(code, Some(255), "a forged token is refused: {stderr}");

        // Broken material must not be echoed when it is reported. An ssh Secret whose host key
        // is damaged (a line of a real key removed) for another app, then that app's pod and a
        // login to it through the proxy.
        let guid2 = unique_name("sec-guid2");
        let mut broken = eirinix_ssh::AppKeys::generate(&guid2)
            .unwrap()
            .to_secret_data()
            .unwrap();
        let host_key = String::from_utf8(broken["host-key"].0.clone()).unwrap();
        secrets.add("a damaged ssh host key", host_key.clone());
        secrets.add(
            "the client key next to a damaged host key",
            String::from_utf8(broken["client-key"].0.clone()).unwrap(),
        );
        let mut lines: Vec<&str> = host_key.lines().collect();
        lines.remove(2);
        broken.insert("host-key".into(), ByteString(lines.join("\n").into_bytes()));
        Api::<Secret>::namespaced(client.clone(), &apps)
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: ObjectMeta {
                        name: Some(eirinix_ssh::SshOptions::default().secret_name(&guid2)),
                        // Ours (labelled): the webhook reads it and replaces the damaged keys.
                        labels: Some(
                            [
                                ("eirinix.org/ssh".to_owned(), "keys".to_owned()),
                                ("cloudfoundry.org/guid".to_owned(), guid2.clone()),
                            ]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    data: Some(broken),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut other = app("other-0", serde_json::json!([]));
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("cloudfoundry.org/guid".into(), guid2.clone());
        pods.create(&PostParams::default(), &other).await.unwrap();
        let (code, _, stderr) = ssh_via_proxy(
            dir.path(),
            proxy_addr,
            &format!("{guid2}/0"),
            &token,
            "true",
        )
        .await;
        assert_eq!(code, Some(255), "no session with a damaged Secret: {stderr}");
        // VCAP_SERVICES that is not JSON, with a password in it.
        let not_json_password = random("not-json-password");
        secrets.add("a password in VCAP_SERVICES that is not JSON", not_json_password.clone());
        let err = pods
            .create(
                &PostParams::default(),
                &app(
                    "dora-4",
                    serde_json::json!([{"name": "VCAP_SERVICES",
                        "value": format!("{{\"db\": password={not_json_password}")}]),
                ),
            )
            .await
            .expect_err("persi denies VCAP_SERVICES that is not JSON");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        // The certificate Secret with a serving key that does not match its certificate
        // (a valid key, someone else's): replaced by the manager.
        let foreign_key = KeyPair::generate().unwrap().serialize_pem();
        secrets.add("a foreign key put in the certificate Secret", foreign_key.clone());
        let cert_secrets: Api<Secret> = Api::namespaced(client.clone(), &sys);
        let patch = serde_json::json!({"data": {"tls.key": B64.encode(&foreign_key)}});
        cert_secrets
            .patch(
                &format!("{fp}-setupcertificate"),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap();
        eventually(
            Duration::from_secs(15),
            "the damaged certificate Secret to be replaced",
            || async {
                let s = cert_secrets
                    .get(&format!("{fp}-setupcertificate"))
                    .await
                    .ok()?;
                (secret_strings(&s)["tls.key"] != foreign_key).then_some(())
            },
        )
        .await;

        // Logs: a line with a credential is forwarded to the sink.
        let log_secret = random("logged-by-the-app");
        secrets.add("a secret the app printed to its log", log_secret.clone());
        kubelet
            .container(&apps, "dora-0", "opi")
            .push_line(format!("connecting with password {log_secret}"));
        eventually(
            Duration::from_secs(30),
            "the app's log line at the syslog receiver",
            || async { receiver.text().contains(&log_secret).then_some(()) },
        )
        .await;

        // Certificates rotate meanwhile: serving certificates and the CA.
        let (mut chains, mut cas) = (BTreeSet::new(), BTreeSet::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        while tokio::time::Instant::now() < deadline && (chains.len() < 4 || cas.len() < 2) {
            let p = running.published().unwrap();
            chains.insert(p.serving_chain.clone());
            cas.insert(p.ca_bundle.split("-----END").next().unwrap_or("").to_owned());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(chains.len() >= 4, "serving certificate rotations: {}", chains.len());
        assert!(cas.len() >= 2, "CA rotations: {}", cas.len());
        // Pods are still admitted after the rotations.
        pods.create(
            &PostParams::default(),
            &app("dora-3", serde_json::json!([{"name": "APP_TOKEN", "value": app_token}])),
        )
        .await
        .unwrap();

        // Stop everything, then read what was logged.
        stop_watch.cancel();
        watch.await.unwrap();
        stop_ssh.cancel();
        running.shutdown().await;
        stop_broker.cancel();
        broker_task.await.unwrap().unwrap();
        let cert_keys = cert_keys.lock().unwrap().clone();
        assert!(
            cert_keys.len() >= 4,
            "the certificate Secret's keys were sampled ({})",
            cert_keys.len()
        );
        for (i, key) in cert_keys.iter().enumerate() {
            secrets.add(format!("certificate Secret key #{i} (CA or serving)"), key.clone());
        }

        let logs = log_text();
        // For inspection: EIRINIX_SECURITY_LOG_DUMP=<file> keeps what was captured.
        if let Some(path) = std::env::var_os("EIRINIX_SECURITY_LOG_DUMP") {
            std::fs::write(path, &logs).unwrap();
        }
        println!(
            "{} bytes, {} lines of logs captured; {} secrets checked",
            logs.len(),
            logs.lines().count(),
            secrets.0.len()
        );
        // The capture saw the run, at every level.
        for expected in [
            " TRACE ",
            " DEBUG ",
            "serving certificate loaded",
            "caBundle updated in the webhook configuration",
            "ssh keys created",
            "ssh access granted",
            "service instance provisioned",
            "service binding created",
            "extension failed; denying (failure policy Fail)",
            "certificate secret is unusable",
            "ssh Secret has no usable keys",
            "the ssh Secret held other keys than the master key gives",
            "instance address unknown",
            "is not valid JSON",
        ] {
            assert!(logs.contains(expected), "the logs lack {expected:?}");
        }
        for marker in KEY_MARKERS {
            assert!(!logs.contains(marker), "a private key was logged ({marker})");
        }
        if let Some((what, line)) = secrets.find_in(&logs) {
            panic!("{what} appears in the logs, in this line:\n{line}");
        }
    })
    .await
}

/// The leak detector finds secrets in every form they could be printed in (so that the absence
/// asserted above means something).
#[test]
fn the_leak_detector_finds_secrets_in_their_printed_forms() {
    let key = KeyPair::generate().unwrap().serialize_pem();
    let openssh = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDZ5Ek2NQOKg9kPuWcdBxHFX5tYFk0PKUqY9W2UlY9g1QAAAJgAAAAAAAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    let password = "s3cret-password-0123456789";
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkZXZlbG9wZXIifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
    let mut secrets = Secrets::default();
    secrets.add("key", key.clone());
    secrets.add("openssh", openssh);
    secrets.add("password", password);
    secrets.add("jwt", jwt);
    for (value, what) in [
        (key.as_str(), "key"),
        (openssh, "openssh"),
        (password, "password"),
        (jwt, "jwt"),
    ] {
        let printed = [
            format!("x {value} y"),
            format!("x {value:?} y"),
            format!("x {} y", B64.encode(value)),
            format!("x {:?} y", ByteString(value.as_bytes().to_vec())),
            serde_json::to_string(&ByteString(value.as_bytes().to_vec())).unwrap(),
        ];
        for p in printed {
            assert_eq!(
                secrets.find_in(&p).map(|(w, _)| w).as_deref(),
                Some(what),
                "{what} not found in {p:?}"
            );
        }
    }
    // A JWT's signature alone.
    assert!(
        secrets
            .find_in("sig c2lnbmF0dXJlLW9mLXRoZS10b2tlbg")
            .is_some()
    );
    // The markers catch a key block however it is printed.
    for printed in [
        key.clone(),
        format!("{key:?}"),
        B64.encode(&key),
        format!("{:?}", ByteString(key.as_bytes().to_vec())),
        B64.encode(openssh),
    ] {
        assert!(
            KEY_MARKERS.iter().any(|m| printed.contains(m)),
            "no marker in {printed:?}"
        );
    }
    assert!(secrets.find_in("nothing to see here").is_none());
}

/// The apiserver presents the client certificate of its admission kubeconfig; a manager
/// requiring certificates from that CA admits and mutates pods, one requiring another CA refuses
/// the apiserver at the handshake (so the failure policy applies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_verifies_the_apiservers_client_certificate() {
    captured();
    bounded(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let apiserver_ca = test_ca("apiserver-admission-client-ca");
        let (cert, key) = issue(
            &apiserver_ca,
            "kube-apiserver-admission",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        // The apiserver's admission kubeconfig: the credentials it uses for every webhook ("*").
        let kubeconfig = write(
            dir.path(),
            "admission-kubeconfig.yaml",
            &format!(
                "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    \
                 client-certificate-data: {}\n    client-key-data: {}\n",
                B64.encode(&cert),
                B64.encode(&key)
            ),
        );
        let admission = write(
            dir.path(),
            "admission.yaml",
            &format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n\
                 - name: MutatingAdmissionWebhook\n  configuration:\n    \
                 apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    \
                 kubeConfigFile: {}\n",
                kubeconfig.display()
            ),
        );
        let cp = ControlPlane::builder()
            .apiserver_flag(format!(
                "--admission-control-config-file={}",
                admission.display()
            ))
            .start()
            .await
            .expect("control plane (see eirinix-testenv README)");
        let client = cp.client().await.unwrap();
        let client_ca = write(dir.path(), "client-ca.pem", &apiserver_ca.pem);
        let other_ca = write(dir.path(), "other-ca.pem", &test_ca("someone-else").pem);

        // Verified against the CA that signed the apiserver's certificate: admitted, mutated.
        let (sys, ns) = namespaces(&cp, "mtls").await;
        let fp = unique_name("mtls");
        let running = manager(&fp, &sys, &ns)
            .client_ca_file(&client_ca)
            .extension(Sticky)
            .build()
            .unwrap()
            .start(client.clone())
            .await
            .unwrap();
        running
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("readiness (self handshake) works with client verification on");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod = pods
            .create(&PostParams::default(), &app_pod("mtls-0"))
            .await
            .unwrap();
        assert_eq!(sticky(&pod).as_deref(), Some("hello"));
        running.shutdown().await;

        // Another CA: the apiserver's certificate is refused, Fail denies the pod.
        let (sys, ns) = namespaces(&cp, "mtls-other").await;
        let fp = unique_name("mtls-other");
        let running = manager(&fp, &sys, &ns)
            .client_ca_file(&other_ca)
            .extension(Sticky)
            .build()
            .unwrap()
            .start(client.clone())
            .await
            .unwrap();
        running.wait_ready(Duration::from_secs(10)).await.unwrap();
        let err = Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &app_pod("mtls-1"))
            .await
            .expect_err("a webhook that does not trust the apiserver's certificate");
        let msg = err.to_string();
        println!("refused: {}", msg.chars().take(400).collect::<String>());
        // In TLS 1.3 the client finishes its handshake before the server has checked its
        // certificate, so the apiserver sees the webhook's alert ("unknown certificate
        // authority") or, when it is already writing the request, only the closed connection
        // (closed, reset, or a broken pipe, depending on where its write was). Either way the
        // webhook is what refused, and its log says why: an unknown issuer (not "certificate
        // required": the apiserver did present its certificate).
        assert!(
            msg.contains("failed calling webhook")
                && (msg.contains("tls: unknown certificate authority")
                    || msg.contains("use of closed network connection")
                    || msg.contains("connection reset by peer")
                    || msg.contains("write: broken pipe")),
            "expected the webhook to refuse the apiserver's certificate, got {msg}"
        );
        // The apiserver can read the alert before the server's task has logged the refusal.
        eventually(
            Duration::from_secs(10),
            "the refusal logged at debug, for an unknown issuer (UnknownIssuer)",
            || async {
                log_text()
                    .lines()
                    .any(|l| l.contains("TLS handshake failed") && l.contains("UnknownIssuer"))
                    .then_some(())
            },
        )
        .await;
        running.shutdown().await;

        // The admission client key never reaches the logs.
        let mut secrets = Secrets::default();
        secrets.add("the apiserver's admission client key", key);
        if let Some((what, line)) = secrets.find_in(&log_text()) {
            panic!("{what} appears in the logs, in this line:\n{line}");
        }
    })
    .await
}
