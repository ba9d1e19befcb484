//! The proxy on loopback in front of in-process daemons, with the real kube-apiserver doing the
//! TokenReview and SubjectAccessReview for ServiceAccount tokens, and the real `ssh` client.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use eirinix_ssh::keys::{self, AppKeys};
use eirinix_ssh::proxy::{PodResolver, Proxy, ProxyConfig};
use eirinix_ssh::webhook::ensure_secret;
use eirinix_testenv::support::{core_rule, service_account_token};
use eirinix_testenv::{ControlPlane, unique_name};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// Everything the proxy and daemons log, to check that tokens never appear.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("eirinix_ssh=debug,warn")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        // Also to the test output, for failures.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// Maps pod names to loopback daemons (pod IPs are not reachable here).
struct LoopbackResolver(HashMap<String, SocketAddr>);

#[async_trait]
impl PodResolver for LoopbackResolver {
    async fn resolve(&self, pod: &Pod, _port: u16) -> Result<SocketAddr, String> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.0
            .get(&name)
            .copied()
            .ok_or_else(|| format!("no daemon for {name}"))
    }
}

struct Setup {
    ns: String,
    guid: String,
    proxy: SocketAddr,
    proxy_key: russh::keys::PublicKey,
    tokens: HashMap<&'static str, String>,
    _daemons: Vec<TestDaemon>,
    cancel: CancellationToken,
    echo: SocketAddr,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn app_pod(client: &kube::Client, ns: &str, name: &str, guid: &str) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {
            "cloudfoundry.org/guid": guid, "cloudfoundry.org/source_type": "APP"}},
        "spec": {"containers": [{"name": "opi", "image": "eirini/app:1", "command": ["/bin/app"]}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// A ServiceAccount token; everyone may read pods, only `exec` accounts may create pods/exec.
async fn token(client: &kube::Client, ns: &str, name: &str, exec: bool) -> String {
    let mut rules = vec![core_rule("pods", &["get", "list"])];
    if exec {
        rules.push(core_rule("pods/exec", &["create"]));
    }
    service_account_token(client, ns, name, rules).await
}

async fn setup() -> Setup {
    logs();
    let cp = ControlPlane::shared()
        .await
        .expect("control plane (see eirinix-testenv README; scripts/provision.sh)");
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("ssh-proxy").await.unwrap();
    let guid = format!("{}-guid", unique_name("papp"));

    // Instance 0: a real daemon with the app's keys from its Secret.
    app_pod(&client, &ns, "papp-0", &guid).await;
    let secret_name = keys::secret_name("eirinix-ssh", &guid);
    ensure_secret(&client, &ns, &secret_name, &guid, None)
        .await
        .unwrap();
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&secret_name)
        .await
        .unwrap();
    let keys = AppKeys::from_secret(&secret).unwrap();
    let daemon = start_daemon(&keys, "through-the-proxy").await;
    // Instance 1: an impostor with other keys (what a wrong IP or a hijacked one would reach).
    app_pod(&client, &ns, "papp-1", &guid).await;
    let impostor = start_daemon(&AppKeys::generate(&guid).unwrap(), "impostor").await;

    let tokens = HashMap::from([
        ("dev", token(&client, &ns, "dev", true).await),
        ("viewer", token(&client, &ns, "viewer", false).await),
    ]);

    // Two replicas starting at once share one host key.
    let key_secret = unique_name("proxy-host-key");
    let (a, b) = tokio::join!(
        eirinix_ssh::proxy::proxy_host_key(&client, &ns, &key_secret),
        eirinix_ssh::proxy::proxy_host_key(&client, &ns, &key_secret)
    );
    let proxy_key = a.unwrap();
    assert_eq!(
        proxy_key.public_key().key_data(),
        b.unwrap().public_key().key_data()
    );
    let mut config = ProxyConfig::new(proxy_key.clone());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.namespace = Some(ns.clone());
    config.auth_rejection_time = Duration::from_millis(100);
    config.resolver = Arc::new(LoopbackResolver(HashMap::from([
        ("papp-0".to_owned(), daemon.addr),
        ("papp-1".to_owned(), impostor.addr),
    ])));
    let proxy = Proxy::bind(config, client.clone()).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(proxy.serve(cancel.clone()));
    Setup {
        ns,
        guid,
        proxy: addr,
        proxy_key: proxy_key.public_key().clone(),
        tokens,
        _daemons: vec![daemon, impostor],
        cancel,
        echo: echo_server().await,
    }
}

/// `ssh` to the proxy as `user`, the password read by an askpass script from a file.
struct Login {
    files: SshFiles,
    askpass: PathBuf,
}

impl Login {
    fn new(s: &Setup, password: &str) -> Self {
        let files = SshFiles::new(None, &s.proxy_key, s.proxy.port());
        let secret = files.dir().join("password");
        std::fs::write(&secret, password).unwrap();
        let askpass = files.dir().join("askpass.sh");
        std::fs::write(&askpass, format!("#!/bin/sh\ncat '{}'\n", secret.display())).unwrap();
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self { files, askpass }
    }

    fn ssh(&self, s: &Setup, user: &str) -> tokio::process::Command {
        let mut cmd = self.files.ssh(s.proxy.port(), user);
        cmd.args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=1",
        ])
        .env("SSH_ASKPASS", &self.askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0");
        cmd
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_user_reaches_the_instance_through_the_proxy() {
    bounded(async {
        let s = setup().await;
        let login = Login::new(&s, &s.tokens["dev"]);
        let user = format!("{}/0", s.guid);

        // exec with exit status, app environment.
        let out = run(login.ssh(&s, &user).arg("echo $APP_MARKER; exit 3"), b"", T).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(3),
            "stdout {stdout:?} stderr {stderr:?}"
        );
        assert_eq!(stdout, "through-the-proxy\n");

        // The Cloud Foundry user-name form; stdin and stderr are relayed.
        let out = run(
            login
                .ssh(&s, &format!("cf:{}/0", s.guid))
                .arg("cat; echo err >&2"),
            b"from stdin",
            T,
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(stdout, "from stdin");
        assert!(stderr.contains("err"));

        // An interactive shell with a pty.
        let mut cmd = login.ssh(&s, &user);
        cmd.arg("-tt");
        let out = run(&mut cmd, b"tty\necho \"A$((40+2))B\"\nexit 4\n", T).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(4),
            "stdout {stdout:?} stderr {stderr:?}"
        );
        assert!(
            stdout.contains("/dev/pts/") && stdout.contains("A42B"),
            "{stdout:?}"
        );

        // Local forwarding through the proxy and the daemon.
        let mut cmd = login.ssh(&s, &user);
        cmd.arg("-W").arg(format!("127.0.0.1:{}", s.echo.port()));
        let out = run(&mut cmd, b"forwarded\n", T).await;
        assert_eq!(text(&out).0, "forwarded\n", "{:?}", text(&out));

        // A token pasted with its "Bearer " prefix works too.
        let login = Login::new(&s, &format!("Bearer {}\n", s.tokens["dev"]));
        let out = run(login.ssh(&s, &user).arg("true"), b"", T).await;
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

        let logs = log_text();
        assert!(logs.contains("ssh access granted"), "{logs}");
        assert!(
            logs.contains("system:serviceaccount:"),
            "the user is logged"
        );
        assert!(!logs.contains(&s.tokens["dev"]), "a token was logged");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_users_and_unknown_instances_are_refused_with_a_clear_message() {
    bounded(async {
    let s = setup().await;
    let refused = |out: &std::process::Output, why: &str| {
        let (stdout, stderr) = text(out);
        assert_eq!(
            out.status.code(),
            Some(255),
            "stdout {stdout:?} stderr {stderr:?}"
        );
        assert!(stderr.contains(why), "expected {why:?} in {stderr:?}");
        println!("refused as expected; ssh printed:\n{stderr}");
        assert!(!stdout.contains("should-not-run"));
    };

    // A valid token without pods/exec.
    let viewer = Login::new(&s, &s.tokens["viewer"]);
    let out = run(
        viewer
            .ssh(&s, &format!("{}/0", s.guid))
            .arg("echo should-not-run"),
        b"",
        T,
    )
    .await;
    refused(
        &out,
        &format!(
            "not authorized: system:serviceaccount:{ns}:viewer may not create pods/exec on {ns}/papp-0",
            ns = s.ns
        ),
    );

    // Not a token.
    let bad = Login::new(&s, "not-a-token");
    let out = run(
        bad.ssh(&s, &format!("{}/0", s.guid))
            .arg("echo should-not-run"),
        b"",
        T,
    )
    .await;
    refused(&out, "authentication failed");

    // Unknown index, unknown app, malformed user name (with a good token).
    let dev = Login::new(&s, &s.tokens["dev"]);
    let out = run(
        dev.ssh(&s, &format!("{}/7", s.guid))
            .arg("echo should-not-run"),
        b"",
        T,
    )
    .await;
    refused(&out, &format!("no instance 7 of app {}", s.guid));
    let out = run(
        dev.ssh(&s, "nope-guid/0").arg("echo should-not-run"),
        b"",
        T,
    )
    .await;
    refused(&out, "no instance 0 of app nope-guid");
    let out = run(dev.ssh(&s, "root").arg("echo should-not-run"), b"", T).await;
    refused(&out, "user name must be <app-guid>/<index>");

    // The instance answering with another host key than the app Secret's is not trusted.
    let out = run(
        dev.ssh(&s, &format!("{}/1", s.guid))
            .arg("echo should-not-run"),
        b"",
        T,
    )
    .await;
    refused(&out, "cannot be reached over ssh");

    let logs = log_text();
    assert!(logs.contains("ssh access refused"), "{logs}");
    assert!(logs.contains("Forbidden"), "the reason is logged: {logs}");
    for token in s.tokens.values() {
        assert!(!logs.contains(token.as_str()), "a token was logged");
    }
    })
    .await
}
