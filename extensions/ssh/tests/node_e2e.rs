//! `cf ssh` on running pods: a real single-node cluster (eirinix-testenv `Cluster`: kubelet,
//! containerd, runc), Eirini-shaped app StatefulSets whose image has no ssh daemon, the ssh
//! webhook registered in-process (URL mode), the init container copying the daemon out of the
//! real eirinix image, the real proxy, and the real OpenSSH client with ServiceAccount tokens.
//!
//! The cluster needs root and the node packages (see the eirinix-testenv README); the tests
//! fail, never skip, without them.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use eirinix_core::{Manager, RunningManager};
use eirinix_ssh::keys::MasterKey;
use eirinix_ssh::proxy::{DENIED, Proxy, ProxyConfig};
use eirinix_ssh::{SshInjector, SshOptions};
use eirinix_testenv::eirini::{EIRINIX_IMAGE, EiriniApp};
use eirinix_testenv::support::{core_rule, eventually, service_account_token, wait_pod_ready};
use eirinix_testenv::{Cluster, unique_name};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// A pod becoming Ready: pulling nothing, but 2 cores shared with everything else.
const READY: Duration = Duration::from_secs(120);
/// Anything else the cluster does (controllers, kubelet status updates).
const WAIT: Duration = Duration::from_secs(120);
/// One `ssh` invocation.
const SSH: Duration = Duration::from_secs(60);

/// The shared cluster with the eirinix image loaded (built once per test binary).
async fn cluster() -> &'static Cluster {
    static LOADED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    init_tracing();
    let cluster = Cluster::shared()
        .await
        .expect("the test cluster (root, containerd, runc; see the eirinix-testenv README)");
    LOADED
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                let image = eirinix_testenv::eirini::eirinix_image()
                    .expect("the eirinix image (static binary) builds");
                cluster.load_image(&image).expect("the eirinix image loads");
            })
            .await
            .unwrap();
        })
        .await;
    cluster
}

/// The ssh webhook served in-process for the pods of `apps`, registered in URL mode.
async fn webhook(
    client: &kube::Client,
    sys: &str,
    apps: &str,
    fingerprint: &str,
) -> RunningManager {
    let options = SshOptions {
        image: EIRINIX_IMAGE.into(),
        image_pull_policy: Some("IfNotPresent".into()),
        ..SshOptions::default()
    };
    let running = Manager::builder()
        .fingerprint(fingerprint)
        .url_mode("127.0.0.1")
        .bind_address(std::net::Ipv4Addr::LOCALHOST.into())
        .port(0)
        .webhook_namespace(sys)
        .namespace(apps)
        .shutdown_timeout(Duration::from_secs(2))
        .extension(SshInjector::new(options))
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(WAIT).await.unwrap();
    running
}

/// The proxy on loopback, for the apps of `apps`, with the webhook's master key; pods are
/// reached on their IP (routed from this machine into the node).
struct TestProxy {
    addr: std::net::SocketAddr,
    host_key: russh::keys::PublicKey,
    cancel: CancellationToken,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn proxy(client: &kube::Client, sys: &str, apps: &str, fingerprint: &str) -> TestProxy {
    let master_secret = SshOptions::default().master_secret_name(fingerprint);
    let master = MasterKey::from_secret(client, sys, &master_secret, false)
        .await
        .expect("the master key the webhook made at the first admission");
    let mut config = ProxyConfig::new(master).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.namespace = Some(apps.to_owned());
    config.refusal_time = Duration::from_millis(500);
    let host_key = config.host_key.public_key().clone();
    let proxy = Proxy::bind(config, client.clone()).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(proxy.serve(cancel.clone()));
    TestProxy {
        addr,
        host_key,
        cancel,
    }
}

/// The OpenSSH client, logging in to the proxy with a token (given by an askpass script, as a
/// user would paste it at the password prompt).
struct Ssh {
    files: SshFiles,
    askpass: PathBuf,
    port: u16,
}

impl Ssh {
    fn new(proxy: &TestProxy, token: &str) -> Self {
        let files = SshFiles::new(None, &proxy.host_key, proxy.addr.port());
        let secret = files.dir().join("token");
        std::fs::write(&secret, token).unwrap();
        let askpass = files.dir().join("askpass.sh");
        std::fs::write(&askpass, format!("#!/bin/sh\ncat '{}'\n", secret.display())).unwrap();
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self {
            files,
            askpass,
            port: proxy.addr.port(),
        }
    }

    /// `ssh -p <port> <user>@127.0.0.1 <command>`.
    fn cmd(&self, user: &str, command: &str) -> tokio::process::Command {
        let mut cmd = self.files.ssh(self.port, user);
        cmd.args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=1",
        ])
        .arg(command)
        .env("SSH_ASKPASS", &self.askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0");
        cmd
    }

    /// Run `command` with `input` on stdin; exit code, stdout (bytes) and stderr.
    async fn run(&self, user: &str, command: &str, input: &[u8]) -> (Option<i32>, Vec<u8>, String) {
        let out = run(&mut self.cmd(user, command), input, SSH).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), out.stdout, stderr)
    }
}

/// A ServiceAccount of the app namespace and its token: a developer allowed `cf ssh` (create
/// `pods/exec`) or a viewer (read pods only).
async fn user_token(client: &kube::Client, ns: &str, name: &str, exec: bool) -> String {
    let mut rules = vec![core_rule("pods", &["get", "list"])];
    if exec {
        rules.push(core_rule("pods/exec", &["create"]));
    }
    service_account_token(client, ns, name, rules).await
}

/// Create the app's StatefulSet (after `edit`) and return it.
async fn push(
    client: &kube::Client,
    ns: &str,
    app: &EiriniApp,
    edit: impl FnOnce(&mut StatefulSet),
) {
    let mut sts = app.statefulset();
    edit(&mut sts);
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
}

/// `GET /` from the app on its pod IP (what the router does).
async fn http_get(pod: &Pod, port: u16) -> Option<String> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((ip.as_str(), port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// The `opi` container's status in `pod`.
fn opi_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "opi")
}

/// The hex SHA-256 of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The static eirinix binary the image was built from.
fn eirinix_binary() -> Vec<u8> {
    let path = eirinix_testenv::eirini::eirinix_binary().expect("the eirinix binary");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cf_ssh_reaches_a_running_app_through_the_proxy() {
    let cluster = cluster().await;
    let client = cluster.client().await.unwrap();
    let sys = cluster.namespace("ssh-node-sys").await.unwrap();
    let apps = cluster.namespace("ssh-node-apps").await.unwrap();
    let fingerprint = unique_name("ssh-node");
    let _webhook = webhook(&client, &sys, &apps, &fingerprint).await;

    // `cf push`: an app whose image has no ssh daemon.
    let marker = unique_name("marker");
    let app = EiriniApp::new(&unique_name("dora")).env("APP_MARKER", &marker);
    push(&client, &apps, &app, |_| {}).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let pod_name = app.pod_name(0);
    let pod = wait_pod_ready(&pods, &pod_name, READY).await;
    let exec = |cmd: &str| {
        let (apps, pod_name, cmd) = (apps.clone(), pod_name.clone(), cmd.to_owned());
        async move {
            let out = cluster
                .exec(&apps, &pod_name, "opi", ["sh", "-c", &cmd])
                .await
                .unwrap();
            assert!(out.success(), "`{cmd}` in the app container: {out:?}");
            out.stdout
        }
    };
    assert_eq!(
        exec("command -v sshd dropbear ssh || echo none").await,
        "none\n",
        "the app image has no ssh daemon"
    );

    // The init container copied the daemon out of the eirinix image: the very binary.
    let spec = pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().expect("the init container")[0];
    assert_eq!(init.name, "eirinix-ssh-install");
    assert_eq!(init.image.as_deref(), Some(EIRINIX_IMAGE));
    let init_status = &pod
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    let done = init_status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    assert_eq!(done.map(|t| t.exit_code), Some(0), "{init_status:?}");
    let copied =
        exec("sha256sum /eirinix/ssh/eirinix-sshd; stat -c %a /eirinix/ssh/eirinix-sshd").await;
    assert_eq!(
        copied,
        format!(
            "{}  /eirinix/ssh/eirinix-sshd\n755\n",
            sha256(&eirinix_binary())
        ),
    );

    // The app's own process runs as PID 1 and serves.
    let pid1 = exec("tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(
        pid1.starts_with("httpd -f -p 8080"),
        "PID 1 is the app: {pid1}"
    );
    let page = eventually(WAIT, "the app to answer on its pod IP", || async {
        http_get(&pod, 8080).await.filter(|p| p.ends_with("ok\n"))
    })
    .await;
    assert!(
        page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"),
        "{page}"
    );

    // `cf ssh`: a developer allowed pods/exec, through the proxy, into the app container.
    let proxy = proxy(&client, &sys, &apps, &fingerprint).await;
    let developer = Ssh::new(&proxy, &user_token(&client, &apps, "developer", true).await);
    let user = format!("{}/0", app.guid);
    let (code, stdout, stderr) = developer
        .run(
            &user,
            "id -u; hostname; echo \"$PORT $APP_MARKER ${EIRINIX_SSH_HOST_KEY:-no-key}\"; cat /tmp/www/index.html; pwd",
            b"",
        )
        .await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        format!("2000\n{pod_name}\n8080 {marker} no-key\nok\n/home/vcap\n"),
        "the app's user, filesystem and environment (without the keys)"
    );

    // A file there and back: `ssh ... 'cat > f'` then `ssh ... cat f`.
    let payload: Vec<u8> = (0u32..256 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (code, _, stderr) = developer
        .run(&user, "cat > /tmp/uploaded.bin", &payload)
        .await;
    assert_eq!(code, Some(0), "upload: {stderr}");
    assert_eq!(
        exec("sha256sum /tmp/uploaded.bin").await,
        format!("{}  /tmp/uploaded.bin\n", sha256(&payload)),
        "the file landed in the app container"
    );
    let (code, downloaded, stderr) = developer.run(&user, "cat /tmp/uploaded.bin", b"").await;
    assert_eq!(code, Some(0), "download: {stderr}");
    assert!(
        downloaded == payload,
        "the file came back changed ({} bytes)",
        downloaded.len()
    );
    let (code, _, _) = developer.run(&user, "exit 7", b"").await;
    assert_eq!(code, Some(7), "exit status relayed");

    // A user who may read pods but not exec is refused, with the proxy's one message.
    let viewer = Ssh::new(&proxy, &user_token(&client, &apps, "viewer", false).await);
    let (code, stdout, stderr) = viewer.run(&user, "echo should-not-run", b"").await;
    assert_eq!(code, Some(255), "stderr {stderr}");
    assert!(stderr.contains(DENIED), "{stderr}");
    assert!(!String::from_utf8_lossy(&stdout).contains("should-not-run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_keeps_its_exit_code_and_its_signals_under_the_wrapper() {
    let cluster = cluster().await;
    let client = cluster.client().await.unwrap();
    let sys = cluster.namespace("ssh-sig-sys").await.unwrap();
    let apps = cluster.namespace("ssh-sig-apps").await.unwrap();
    let _webhook = webhook(&client, &sys, &apps, &unique_name("ssh-sig")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);

    // An app that exits with code 3: the pod status shows 3 (the wrapper execs the app).
    let mut crashing = EiriniApp::new(&unique_name("exits"));
    crashing.command = vec![
        "sh".into(),
        "-c".into(),
        "echo started; sleep 2; exit 3".into(),
    ];
    crashing.ready_port = None;
    push(&client, &apps, &crashing, |_| {}).await;
    // An app that handles SIGTERM: exits 42 on it. A long grace period tells a stop on SIGTERM
    // from the kubelet's SIGKILL at its end.
    let mut graceful = EiriniApp::new(&unique_name("graceful"));
    graceful.command = vec![
        "sh".into(),
        "-c".into(),
        "trap 'echo TERM received; exit 42' TERM; echo started; while :; do sleep 1; done".into(),
    ];
    graceful.ready_port = None;
    push(&client, &apps, &graceful, |sts| {
        let spec = sts.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        spec.termination_grace_period_seconds = Some(90);
    })
    .await;

    let exited = eventually(
        WAIT,
        "the crashing app's exit code in its pod status",
        || {
            let pods = pods.clone();
            let name = crashing.pod_name(0);
            async move {
                let pod = pods.get_opt(&name).await.ok()??;
                let status = opi_status(&pod)?;
                let terminated = status
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .or_else(|| status.state.as_ref().and_then(|s| s.terminated.as_ref()))?;
                Some((terminated.exit_code, pod))
            }
        },
    )
    .await;
    assert_eq!(exited.0, 3, "exitCode in the pod status");
    let command = exited.1.spec.as_ref().unwrap().containers[0]
        .command
        .clone()
        .unwrap();
    assert_eq!(
        command[0], "/eirinix/ssh/eirinix-sshd",
        "the app ran under the wrapper: {command:?}"
    );

    // SIGTERM to PID 1 (what the kubelet sends) reaches the app's own handler.
    let name = graceful.pod_name(0);
    let pod = wait_pod_ready(&pods, &name, READY).await;
    let command = pod.spec.as_ref().unwrap().containers[0]
        .command
        .clone()
        .unwrap();
    assert_eq!(command[0], "/eirinix/ssh/eirinix-sshd", "{command:?}");
    let out = cluster
        .exec(
            &apps,
            &name,
            "opi",
            ["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; kill -TERM 1"],
        )
        .await
        .unwrap();
    assert!(
        out.stdout.starts_with("sh -c trap"),
        "PID 1 is the app: {out:?}"
    );
    let restarted = eventually(WAIT, "the app's exit on SIGTERM in its pod status", || {
        let (pods, name) = (pods.clone(), name.clone());
        async move {
            let pod = pods.get_opt(&name).await.ok()??;
            let status = opi_status(&pod)?;
            let code = status.last_state.as_ref()?.terminated.as_ref()?.exit_code;
            Some((code, status.restart_count))
        }
    })
    .await;
    assert_eq!(
        restarted,
        (42, 1),
        "(exit code of the TERM handler, restarts)"
    );
    let pod = wait_pod_ready(&pods, &name, READY).await;

    // Deleting the pod: the kubelet's SIGTERM stops the app long before the 90 s grace period.
    let uid = pod.metadata.uid.clone().unwrap();
    let started = Instant::now();
    pods.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "the deleted pod to be gone", || {
        let (pods, name, uid) = (pods.clone(), name.clone(), uid.clone());
        async move {
            match pods.get_opt(&name).await.ok()? {
                Some(p) if p.metadata.uid.as_deref() == Some(&uid) => None,
                _ => Some(()),
            }
        }
    })
    .await;
    let took = started.elapsed();
    println!("pod stopped {took:?} after its deletion (grace period 90 s)");
    assert!(
        took < Duration::from_secs(45),
        "the app did not stop on SIGTERM: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_recreations_never_keep_the_app_from_starting() {
    let cluster = cluster().await;
    let client = cluster.client().await.unwrap();
    let sys = cluster.namespace("ssh-restart-sys").await.unwrap();
    let apps = cluster.namespace("ssh-restart-apps").await.unwrap();
    let fingerprint = unique_name("ssh-restart");
    let webhook = webhook(&client, &sys, &apps, &fingerprint).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &apps);

    // A web app that stops (exit 42) on SIGTERM.
    let mut app = EiriniApp::new(&unique_name("dora"));
    app.command = vec![
        "sh".into(),
        "-c".into(),
        "mkdir -p /tmp/www; echo ok > /tmp/www/index.html; trap 'exit 42' TERM; httpd -f -p \"$PORT\" -h /tmp/www & wait".into(),
    ];
    push(&client, &apps, &app, |_| {}).await;
    let name = app.pod_name(0);
    let first = wait_pod_ready(&pods, &name, READY).await;
    let secret_name = SshOptions::default().secret_name(&app.guid);
    let secret = secrets.get(&secret_name).await.unwrap();
    let proxy = proxy(&client, &sys, &apps, &fingerprint).await;
    let developer = Ssh::new(&proxy, &user_token(&client, &apps, "developer", true).await);
    let user = format!("{}/0", app.guid);

    // The container restarts (its process ends): the wrapper starts the daemon again, the app
    // starts, ssh works.
    let out = cluster
        .exec(&apps, &name, "opi", ["kill", "-TERM", "1"])
        .await
        .unwrap();
    // `kill` lives in the container's PID namespace: when PID 1 exits before `kill` itself has
    // exited, the kernel SIGKILLs it (137). Both mean the signal was sent; the restart below
    // (exit 42, restart count 1) is what proves it arrived.
    assert!(
        out.success() || out.code == Some(137),
        "kill -TERM 1 failed: {out:?}"
    );
    eventually(WAIT, "the container to restart and be Ready", || {
        let (pods, name) = (pods.clone(), name.clone());
        async move {
            let pod = pods.get_opt(&name).await.ok()??;
            let status = opi_status(&pod)?;
            let code = status.last_state.as_ref()?.terminated.as_ref()?.exit_code;
            (code == 42
                && status.restart_count == 1
                && eirinix_testenv::support::pod_is_ready(&pod))
            .then_some(())
        }
    })
    .await;
    let (code, stdout, stderr) = developer.run(&user, "cat /tmp/www/index.html", b"").await;
    assert_eq!(
        (code, String::from_utf8_lossy(&stdout).into_owned()),
        (Some(0), "ok\n".to_owned()),
        "{stderr}"
    );

    // Delete the pod, and delete it again (twice in a row, as a node reboot and a rolling restart
    // would): the StatefulSet recreates it, the webhook reuses the existing Secret, the app starts.
    let mut previous = first.metadata.uid.clone().unwrap();
    for round in 0..2 {
        let started = Instant::now();
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        let pod = eventually(READY, "the recreated pod to be Ready", || {
            let (pods, name, previous) = (pods.clone(), name.clone(), previous.clone());
            async move {
                let pod = pods.get_opt(&name).await.ok()??;
                (pod.metadata.uid.as_deref() != Some(&previous)
                    && eirinix_testenv::support::pod_is_ready(&pod))
                .then_some(pod)
            }
        })
        .await;
        println!(
            "round {round}: the recreated pod was Ready {:?} after the deletion",
            started.elapsed()
        );
        previous = pod.metadata.uid.clone().unwrap();
        let again = secrets.get(&secret_name).await.unwrap();
        assert_eq!(again.metadata.uid, secret.metadata.uid, "the same Secret");
        assert_eq!(
            again.metadata.resource_version, secret.metadata.resource_version,
            "unchanged"
        );
        let (code, stdout, stderr) = developer.run(&user, "hostname", b"").await;
        assert_eq!(
            (code, String::from_utf8_lossy(&stdout).into_owned()),
            (Some(0), format!("{name}\n")),
            "{stderr}"
        );
    }

    // The Secret gone too (deleted by hand, or a garbage-collected leftover): made again, with
    // the same keys (they derive from the master key), and ssh keeps working.
    secrets
        .delete(&secret_name, &DeleteParams::default())
        .await
        .unwrap();
    pods.delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let pod = eventually(READY, "the recreated pod to be Ready", || {
        let (pods, name, previous) = (pods.clone(), name.clone(), previous.clone());
        async move {
            let pod = pods.get_opt(&name).await.ok()??;
            (pod.metadata.uid.as_deref() != Some(&previous)
                && eirinix_testenv::support::pod_is_ready(&pod))
            .then_some(pod)
        }
    })
    .await;
    previous = pod.metadata.uid.clone().unwrap();
    let remade = secrets.get(&secret_name).await.unwrap();
    assert_ne!(remade.metadata.uid, secret.metadata.uid);
    assert_eq!(remade.data, secret.data, "the same derived keys");
    let (code, _, stderr) = developer.run(&user, "true", b"").await;
    assert_eq!(code, Some(0), "{stderr}");

    // The webhook down (crashed, its configuration still registered): failure policy Ignore,
    // the app starts without ssh.
    webhook.abort();
    pods.delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let pod = eventually(
        READY,
        "the pod recreated without the webhook to be Ready",
        || {
            let (pods, name, previous) = (pods.clone(), name.clone(), previous.clone());
            async move {
                let pod = pods.get_opt(&name).await.ok()??;
                (pod.metadata.uid.as_deref() != Some(&previous)
                    && eirinix_testenv::support::pod_is_ready(&pod))
                .then_some(pod)
            }
        },
    )
    .await;
    let command = pod.spec.as_ref().unwrap().containers[0]
        .command
        .clone()
        .unwrap();
    assert_eq!(command, app.command, "admitted unchanged");
}
