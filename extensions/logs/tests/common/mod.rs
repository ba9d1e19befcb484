//! Shared test harness: a real rsyslogd on a loopback port writing what it receives to a file,
//! a small PKI for TLS, and helpers for app pods on a fake kubelet.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use eirinix_logs::{LogsOptions, SinkOptions, SyslogOptions, TlsOptions};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodSpec, PodStatus,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,eirinix_logs=info,eirinix_logs::follower=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A CA with a server certificate (localhost, 127.0.0.1) and a client certificate, as files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "eirinix-logs-test-ca");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);

        let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            p.distinguished_name = dn;
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into(), "metron".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(vec![], "eirinix-logs", ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            dir,
        }
    }

    pub fn client_tls(&self, server_name: &str) -> TlsOptions {
        TlsOptions {
            ca_file: self.ca.clone(),
            cert_file: Some(self.client_cert.clone()),
            key_file: Some(self.client_key.clone()),
            server_name: Some(server_name.into()),
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One message as rsyslog wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub host: String,
    pub app: String,
    pub procid: String,
    pub msgid: String,
    pub sd: String,
    pub timestamp: String,
    pub pri: String,
    pub msg: Vec<u8>,
}

impl Received {
    /// The value of SD-PARAM `name` (unescaped).
    pub fn param(&self, name: &str) -> Option<String> {
        let needle = format!(" {name}=\"");
        let start = self.sd.find(&needle)? + needle.len();
        let mut out = String::new();
        let mut chars = self.sd[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        None
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.msg).into_owned()
    }
}

/// A real rsyslogd listening on 127.0.0.1 (TCP or TLS), killed on drop.
pub struct Rsyslog {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub out: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    /// Partial records cut from the end of the file after a SIGKILL (see [`Rsyslog::kill`]).
    pub cut: Vec<Vec<u8>>,
    /// Complete lines counted so far, and the file offset after the last of them.
    counted: std::cell::Cell<(u64, usize)>,
}

/// What a test rsyslogd listens for.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// Syslog over TCP (`imtcp`), or over TLS with the server certificate of the PKI.
    Syslog(Option<&'a Pki>),
    /// RELP (`imrelp`), or RELP over TLS requiring a client certificate of the PKI.
    Relp(Option<&'a Pki>),
}

impl Rsyslog {
    pub fn start(tls: Option<&Pki>) -> Rsyslog {
        Self::start_on(free_port(), tls)
    }

    pub fn start_on(port: u16, tls: Option<&Pki>) -> Rsyslog {
        Self::start_input(port, Input::Syslog(tls))
    }

    /// rsyslogd receiving RELP. Its ruleset runs in the input's thread (`queue.type="Direct"`):
    /// a message is written to the output file before imrelp acknowledges it, so what was
    /// acknowledged survives a SIGKILL.
    pub fn start_relp(tls: Option<&Pki>) -> Rsyslog {
        Self::start_input(free_port(), Input::Relp(tls))
    }

    pub fn start_input(port: u16, input: Input<'_>) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let out = dir.path().join("out.log");
        let (globals, module, input) = match input {
            Input::Syslog(None) => (
                String::new(),
                r#"module(load="imtcp")"#.to_owned(),
                format!(r#"input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="r")"#),
            ),
            Input::Syslog(Some(pki)) => (
                format!(
                    "global(DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")\n",
                    pki.ca.display(),
                    pki.server_cert.display(),
                    pki.server_key.display()
                ),
                r#"module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")"#.to_owned(),
                format!(r#"input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="r")"#),
            ),
            Input::Relp(None) => (
                String::new(),
                r#"module(load="imrelp")"#.to_owned(),
                format!(r#"input(type="imrelp" port="{port}" address="127.0.0.1" ruleset="r")"#),
            ),
            Input::Relp(Some(pki)) => (
                String::new(),
                r#"module(load="imrelp")"#.to_owned(),
                format!(
                    r#"input(type="imrelp" port="{port}" address="127.0.0.1" ruleset="r" tls="on" tls.authMode="certvalid" tls.cacert="{}" tls.mycert="{}" tls.myprivkey="{}")"#,
                    pki.ca.display(),
                    pki.server_cert.display(),
                    pki.server_key.display()
                ),
            ),
        };
        let conf = format!(
            r#"global(maxMessageSize="65536")
global(workDirectory="{d}")
{globals}{module}
{input}
template(name="raw" type="string" string="%HOSTNAME%|%APP-NAME%|%PROCID%|%MSGID%|%STRUCTURED-DATA%|%TIMESTAMP:::date-rfc3339%|%PRI%|%msg%\n")
ruleset(name="r" queue.type="Direct") {{ action(type="omfile" file="{d}/out.log" template="raw") }}
"#
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut r = Rsyslog {
            dir,
            port,
            out,
            conf: conf_path,
            child: None,
            cut: Vec::new(),
            counted: Default::default(),
        };
        r.spawn();
        r
    }

    /// rsyslogd with the configuration `conf(dir)` returns (`dir`: its work directory), listening
    /// on `port`; `received` does not apply (its output is whatever `conf` says).
    pub fn start_custom(port: u16, conf: impl FnOnce(&std::path::Path) -> String) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "global(workDirectory=\"{}\")\n{}",
            dir.path().display(),
            conf(dir.path())
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, text).unwrap();
        let mut r = Rsyslog {
            out: dir.path().join("out.log"),
            dir,
            port,
            conf: conf_path,
            child: None,
            cut: Vec::new(),
            counted: Default::default(),
        };
        r.spawn();
        r
    }

    /// Crash rsyslogd (SIGKILL: no flush, no goodbye to clients); `restart` brings it back.
    ///
    /// A kill can land between two `write`s of one record (omfile flushes its buffer in pieces,
    /// and the kernel stops a write to a file at a page boundary when a fatal signal is
    /// pending), leaving a record without its newline. That record was never acknowledged, so
    /// the sender sends it again, and the restarted rsyslogd would append the whole record to the
    /// partial one on the same line. As a reader that splits records on newlines would, the
    /// partial tail is cut from the file here and kept in [`Rsyslog::cut`] for the test to report.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let data = std::fs::read(&self.out).unwrap_or_default();
        if data.last().is_some_and(|b| *b != b'\n') {
            let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.out)
                .expect("rsyslog output file");
            file.set_len(keep as u64).expect("cut the partial record");
            self.cut.push(data[keep..].to_vec());
        }
    }

    /// How many complete lines the output file holds: cheap to poll, it reads only what was
    /// appended since the last call.
    pub fn line_count(&self) -> usize {
        use std::io::{Read as _, Seek as _};
        let (offset, mut count) = self.counted.get();
        let Ok(mut file) = std::fs::File::open(&self.out) else {
            return count;
        };
        let mut tail = Vec::new();
        if file.seek(std::io::SeekFrom::Start(offset)).is_err()
            || file.read_to_end(&mut tail).is_err()
        {
            return count;
        }
        let Some(last) = tail.iter().rposition(|b| *b == b'\n') else {
            return count;
        };
        count += tail[..=last].iter().filter(|b| **b == b'\n').count();
        self.counted.set((offset + last as u64 + 1, count));
        count
    }

    /// Wait until the output file holds at least `n` complete lines; panics after `timeout`.
    pub async fn wait_for_lines(&self, timeout: Duration, what: &str, n: usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.line_count();
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}: rsyslog stored {got} of {n} lines"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let pid = self.dir.path().join("rsyslogd.pid");
        let _ = std::fs::remove_file(&pid);
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("rsyslogd.stderr"))
                    .unwrap(),
            ))
            .spawn()
            .expect("rsyslogd must be installed (apt-get install rsyslog rsyslog-gnutls)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "rsyslogd exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("rsyslogd.stderr"))
                        .unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stop rsyslogd (SIGTERM, wait for exit): its port refuses connections until `restart`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze rsyslogd (SIGSTOP): connections stay open, nothing is read or acknowledged
    /// until `resume`.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Let a paused rsyslogd run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("rsyslogd runs");
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(c.id() as i32, sig) };
        assert_eq!(rc, 0, "signal {sig} to rsyslogd");
    }

    /// Start rsyslogd again on the same port, appending to the same file.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        let data = std::fs::read(&self.out).unwrap_or_default();
        data.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut parts = l.splitn(8, |b| *b == b'|');
                let mut next =
                    || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let host = next();
                let app = next();
                let procid = next();
                let msgid = next();
                let sd = next();
                let timestamp = next();
                let pri = next();
                let msg = parts.next().unwrap_or_default().to_vec();
                Received {
                    host,
                    app,
                    procid,
                    msgid,
                    sd,
                    timestamp,
                    pri,
                    msg,
                }
            })
            .collect()
    }

    /// Wait until `done(received)` holds; panics with the last state after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        self.wait_for_with(timeout, what, done, String::new).await
    }

    /// Like [`Rsyslog::wait_for`]; a timeout's message also carries `context()` (for one, the
    /// service's counters, [`Running::counters`]).
    pub async fn wait_for_with(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
        context: impl Fn() -> String,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.received();
            if done(&r) {
                return r;
            }
            if Instant::now() >= deadline {
                // Up to 100 messages: their texts, in order, say which lines are missing.
                let texts: Vec<String> = r.iter().take(100).map(Received::text).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; rsyslog received {} messages; last: {:?}; the first 100 texts: {texts:?}{}",
                    r.len(),
                    r.last(),
                    context()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Options for tests: one syslog sink, fast retries, short intervals.
pub fn options(address: &str, tls: Option<TlsOptions>) -> LogsOptions {
    let mut o = LogsOptions {
        sinks: vec![SinkOptions::Syslog(SyslogOptions {
            address: address.into(),
            tls,
            ..SyslogOptions::default()
        })],
        reconnect_initial_ms: 50,
        reconnect_max_ms: 500,
        pod_deleted_grace_ms: 500,
        drain_timeout_ms: 5_000,
        drop_report_interval_secs: 1,
        ..LogsOptions::default()
    };
    o.replicas.checkpoint_interval_ms = 200;
    o.replicas.lease_duration_secs = 3;
    o
}

/// Lines whose message starts with `prefix`, in arrival order, as text.
pub fn messages_with(received: &[Received], prefix: &str) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.msg.starts_with(prefix.as_bytes()))
        .map(Received::text)
        .collect()
}

/// Asserts `got` is exactly `prefix0 .. prefix{n-1}` in order (no gap, no duplicate).
pub fn assert_sequence(got: &[String], prefix: &str, n: usize) {
    let expected: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    if got != expected {
        let dups = got.len() as i64 - {
            let mut s = got.to_vec();
            s.sort();
            s.dedup();
            s.len() as i64
        };
        let first_diff = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{prefix}: expected {n} lines in order, got {} ({dups} duplicates); first difference at {first_diff}: got {:?}, expected {:?}",
            got.len(),
            got.get(first_diff),
            expected.get(first_diff)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pods on the fake kubelet.

/// The shared control plane, an admin client, a fresh namespace `<prefix>-...` and a fake
/// kubelet on a node of its own.
pub async fn plane_with_kubelet(
    prefix: &str,
) -> (
    &'static eirinix_testenv::ControlPlane,
    kube::Client,
    String,
    eirinix_testenv::FakeKubelet,
) {
    init_tracing();
    let plane = eirinix_testenv::ControlPlane::shared()
        .await
        .expect("control plane (run scripts/provision.sh)");
    let client = plane.client().await.unwrap();
    let ns = plane.namespace(prefix).await.unwrap();
    let kubelet =
        eirinix_testenv::FakeKubelet::start(&client, &eirinix_testenv::unique_name("node"))
            .await
            .unwrap();
    (plane, client, ns, kubelet)
}

pub const APP_GUID: &str = "7d1f3b3c-0000-4000-8000-00000000beef";

/// An Eirini-like app pod (labels as Eirini sets them) bound to the kubelet's node.
pub fn app_pod(name: &str, source_type: &str, containers: &[&str], node: &str) -> Pod {
    let labels = BTreeMap::from([
        ("cloudfoundry.org/app_guid".to_owned(), APP_GUID.to_owned()),
        ("cloudfoundry.org/guid".to_owned(), "lrp-guid".to_owned()),
        ("cloudfoundry.org/process_type".to_owned(), "web".to_owned()),
        (
            "cloudfoundry.org/source_type".to_owned(),
            source_type.to_owned(),
        ),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: containers
                .iter()
                .map(|c| Container {
                    name: (*c).into(),
                    image: Some("registry.invalid/app:latest".into()),
                    ..Container::default()
                })
                .collect(),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

pub async fn create_pod(client: &kube::Client, ns: &str, pod: &Pod) -> Pod {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), pod)
        .await
        .unwrap()
}

pub async fn delete_pod(client: &kube::Client, ns: &str, name: &str) {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// Container states a test can report in the pod status.
#[derive(Clone, Copy, Debug)]
pub enum State {
    Running,
    Terminated,
    /// Exited and waiting to be started again (`CrashLoopBackOff`, the exit as `lastState`).
    BackOff,
}

/// Patch the status of `container` (as a kubelet would report it).
pub async fn set_status(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    container: &str,
    restarts: i32,
    state: State,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut current = api.get_status(pod).await.unwrap();
    let status = current.status.get_or_insert_with(PodStatus::default);
    let statuses = status.container_statuses.get_or_insert_with(Vec::new);
    statuses.retain(|s| s.name != container);
    let terminated = ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 0,
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    };
    let last_state = matches!(state, State::BackOff).then(|| terminated.clone());
    let state = match state {
        State::Running => ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        },
        State::Terminated => terminated,
        State::BackOff => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        },
    };
    statuses.push(ContainerStatus {
        name: container.into(),
        image: "registry.invalid/app:latest".into(),
        image_id: "".into(),
        ready: state.running.is_some(),
        restart_count: restarts,
        state: Some(state),
        last_state,
        ..ContainerStatus::default()
    });
    status.phase = Some("Running".into());
    let patch =
        serde_json::json!({ "status": { "phase": "Running", "containerStatuses": statuses } });
    api.patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// An app pod `name` (one container `opi`) on `kubelet`'s node, reported running as its first
/// instance, and the handle that scripts the container's log.
pub async fn running_app(
    client: &kube::Client,
    ns: &str,
    kubelet: &eirinix_testenv::FakeKubelet,
    name: &str,
) -> eirinix_testenv::ContainerLog {
    create_pod(
        client,
        ns,
        &app_pod(name, "APP", &["opi"], kubelet.node_name()),
    )
    .await;
    set_status(client, ns, name, "opi", 0, State::Running).await;
    kubelet.container(ns, name, "opi")
}

// ---------------------------------------------------------------------------------------------
// Running the service.

/// A logs service running on the current runtime.
pub struct Running {
    pub cancel: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<eirinix_logs::LogsMetrics>,
}

impl Running {
    /// The follower's counters, for a failure message.
    pub fn counters(&self) -> String {
        let m = &self.metrics;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "; counters: lines read {}, forwarded {}, duplicates skipped {}, streams opened {}, stream errors {}, instances missed {}, gaps {}",
            get(&m.lines_read),
            get(&m.records_forwarded),
            get(&m.duplicates_skipped),
            get(&m.streams_opened),
            get(&m.stream_errors),
            get(&m.instances_missed),
            get(&m.log_gaps)
        )
    }

    /// Graceful stop: drain, final checkpoint, lease released.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the logs service stops within 30 s")
            .unwrap();
    }
}

/// Start the logs service watching `ns` (state in `ns` too).
pub fn start_service(client: &kube::Client, ns: &str, options: LogsOptions) -> Running {
    let settings = eirinix_core::Settings {
        namespace: Some(ns.into()),
        webhook_namespace: ns.into(),
        ..eirinix_core::Settings::default()
    };
    let scope = eirinix_logs::Scope {
        namespaces: vec![ns.into()],
        state_namespace: ns.into(),
    };
    let service = eirinix_logs::LogsService::new(options).unwrap();
    let metrics = service.metrics();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(service.run(client.clone(), scope, settings, cancel.clone()));
    Running {
        cancel,
        task,
        metrics,
    }
}

/// Poll `f` until true or panic after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A logs replica in its own runtime and thread, like a separate process (`kill` drops it as a
/// crash would, `stop` shuts it down gracefully).
pub struct Replica {
    pub name: String,
    pub metrics: Arc<eirinix_logs::LogsMetrics>,
    cancel: tokio_util::sync::CancellationToken,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    pub fn start(config: kube::Config, ns: &str, options: &LogsOptions, name: &str) -> Replica {
        let mut options = options.clone();
        options.replicas.identity = Some(name.into());
        let service = eirinix_logs::LogsService::new(options).unwrap();
        let metrics = service.metrics();
        let cancel = tokio_util::sync::CancellationToken::new();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let ns = ns.to_owned();
        let token = cancel.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = kube::Client::try_from(config).unwrap();
                let settings = eirinix_core::Settings {
                    namespace: Some(ns.clone()),
                    webhook_namespace: ns.clone(),
                    ..eirinix_core::Settings::default()
                };
                let scope = eirinix_logs::Scope {
                    namespaces: vec![ns.clone()],
                    state_namespace: ns,
                };
                tokio::select! {
                    _ = service.run(client, scope, settings, token) => {}
                    _ = killed => {}
                }
            });
            // Whatever still runs (followers, sinks, Lease renewal) dies here, as in a crash.
            rt.shutdown_background();
        });
        Replica {
            name: name.into(),
            metrics,
            cancel,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub fn leading(&self) -> bool {
        self.metrics.leader.load(Ordering::Relaxed) == 1
    }

    pub fn forwarded(&self) -> u64 {
        self.metrics.records_forwarded.load(Ordering::Relaxed)
    }

    pub fn rebalances(&self) -> u64 {
        self.metrics.rebalances.load(Ordering::Relaxed)
    }

    pub fn members(&self) -> i64 {
        self.metrics.members.load(Ordering::Relaxed)
    }

    pub fn owned(&self) -> i64 {
        self.metrics.owned_pods.load(Ordering::Relaxed)
    }

    /// Crash: no drain, no checkpoint, no Lease release.
    pub fn kill(mut self) -> Arc<eirinix_logs::LogsMetrics> {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.metrics.clone()
    }

    /// Graceful stop: drain, final checkpoint, Lease released.
    pub async fn stop(mut self) -> Arc<eirinix_logs::LogsMetrics> {
        self.cancel.cancel();
        let t = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap();
        self.metrics.clone()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }
}
