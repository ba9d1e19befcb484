//! Helpers of the ssh tests: the real OpenSSH client, an in-process daemon, time bounds.

#![allow(dead_code)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use eirinix_ssh::keys::AppKeys;
use eirinix_ssh::{Daemon, DaemonConfig};
#[allow(unused_imports)] // Not every test binary uses every helper.
pub use eirinix_testenv::support::init_tracing;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The environment sessions of test daemons get (the "app" environment).
pub fn app_env(marker: &str) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = ["PATH", "HOME", "LANG"]
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
        .collect();
    env.push(("APP_MARKER".into(), marker.into()));
    env
}

/// A daemon serving on a loopback port until dropped.
pub struct TestDaemon {
    /// Where it listens.
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

/// Start the daemon in-process, configured as the webhook would configure it for `keys`.
pub async fn start_daemon(keys: &AppKeys, marker: &str) -> TestDaemon {
    let mut config = DaemonConfig::new(keys.host.clone(), vec![keys.authorized_public().clone()]);
    config.listen = Some(std::net::Ipv4Addr::LOCALHOST.into());
    config.port = 0;
    config.env = Some(app_env(marker));
    config.auth_rejection_time = Duration::from_millis(100);
    let daemon = Daemon::bind(config).await.unwrap();
    let addr = daemon.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let task = tokio::spawn(async move {
        daemon.serve(c).await.unwrap();
    });
    TestDaemon { addr, cancel, task }
}

/// Files the OpenSSH client needs: a private key (0600) and a known_hosts file.
pub struct SshFiles {
    dir: tempfile::TempDir,
    /// The identity file.
    pub key: PathBuf,
    /// The known_hosts file.
    pub known_hosts: PathBuf,
}

impl SshFiles {
    /// Files for logging in with `client` to a server whose host key is `host` on `port`.
    pub fn new(client: Option<&PrivateKey>, host: &PublicKey, port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        if let Some(client) = client {
            std::fs::write(&key, client.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{port} {}\n", host.to_openssh().unwrap()),
        )
        .unwrap();
        Self {
            dir,
            key,
            known_hosts,
        }
    }

    /// The temporary directory (for extra files such as an askpass script).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ssh` with strict host key checking against our known_hosts, no config, no agent.
    pub fn ssh(&self, port: u16, user: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-p")
            .arg(port.to_string())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ServerAliveInterval=5",
            ])
            .arg("-l")
            .arg(user)
            .arg("127.0.0.1")
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// [`Self::ssh`] logging in with the identity file only, no prompts.
    pub fn ssh_with_key(&self, port: u16, user: &str) -> tokio::process::Command {
        let mut cmd = self.ssh(port, user);
        cmd.arg("-i")
            .arg(&self.key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]);
        cmd
    }
}

/// Run `cmd` with `input` on stdin (then EOF), bounded by `timeout`; panics when exceeded.
pub async fn run(cmd: &mut tokio::process::Command, input: &[u8], timeout: Duration) -> Output {
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
        drop(stdin);
    });
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("command did not finish within {timeout:?}: {cmd:?}"))
        .expect("wait");
    let _ = writer.await;
    out
}

/// Stdout and stderr as text, for assertions and failure messages.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Poll `f` every 50 ms until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eirinix_testenv::support::eventually_every(Duration::from_millis(50), timeout, what, f).await
}

/// A TCP echo server on loopback (for port-forwarding tests); returns its address.
pub async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Every test's upper bound.
pub const TEST_LIMIT: Duration = Duration::from_secs(180);

/// Run `f`, failing the test when it takes longer than [`TEST_LIMIT`].
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {TEST_LIMIT:?}"))
}

/// POST an AdmissionReview (CREATE of `pod` in `namespace`) straight to the webhook at `addr`,
/// as any client that reaches the port could (curl, certificate not checked); the response.
pub async fn post_review(
    addr: SocketAddr,
    path: &str,
    namespace: &str,
    pod: &serde_json::Value,
) -> serde_json::Value {
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0d7c3c36-5d0e-4a39-9f5e-3f8f1a1f2b01",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "forger"},
            "object": pod, "dryRun": false
        }
    });
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-k", "--max-time", "20", "-X", "POST"])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("https://{addr}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run(
        &mut cmd,
        review.to_string().as_bytes(),
        Duration::from_secs(30),
    )
    .await;
    assert!(out.status.success(), "curl: {}", text(&out).1);
    serde_json::from_slice(&out.stdout).expect("an AdmissionReview response")
}
