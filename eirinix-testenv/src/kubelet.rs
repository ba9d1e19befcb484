//! [`FakeKubelet`]: an HTTPS server speaking the kubelet's `containerLogs` API, registered as a
//! Node, so that `pods/{pod}/log` requests through the real apiserver return scripted content.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::{
    Container as PodContainer, DaemonEndpoint, Node, NodeAddress, NodeCondition,
    NodeDaemonEndpoints, NodeStatus, Pod, PodSpec,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::process::lock;
use crate::{Error, Result};

/// Largest chunk a follow stream sends at once.
const MAX_CHUNK: usize = 64 * 1024;

/// A fake kubelet: serves scripted container logs to the apiserver's `pods/log` proxy.
///
/// [`start`](Self::start) registers a Node (InternalIP 127.0.0.1, kubelet port = this server)
/// and serves on the current tokio runtime until dropped. Pods whose logs are read must have
/// `spec.nodeName` set to [`node_name`](Self::node_name) (see [`create_pod`](Self::create_pod)).
/// The Node object is left behind on drop; use a unique node name per kubelet.
pub struct FakeKubelet {
    node_name: String,
    addr: SocketAddr,
    state: Arc<KubeletState>,
    shutdown: CancellationToken,
}

impl fmt::Debug for FakeKubelet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeKubelet")
            .field("node_name", &self.node_name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Default)]
struct KubeletState {
    containers: Mutex<HashMap<(String, String, String), Arc<ContainerState>>>,
}

impl KubeletState {
    fn container(&self, ns: &str, pod: &str, container: &str) -> Arc<ContainerState> {
        let key = (ns.to_owned(), pod.to_owned(), container.to_owned());
        lock(&self.containers)
            .entry(key)
            .or_insert_with(|| Arc::new(ContainerState::new()))
            .clone()
    }
}

struct ContainerState {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    followers: AtomicUsize,
    previous_requests: AtomicUsize,
}

struct Inner {
    current: Instance,
    previous: Option<Instance>,
    next_instance: u64,
    break_epoch: u64,
    /// `previous=true` requests still to answer with a server error.
    failing_previous: usize,
    /// The current instance exited and waits out a back-off: it is also the previous log.
    backing_off: bool,
}

struct Instance {
    id: u64,
    lines: Vec<Line>,
    finished: bool,
}

struct Line {
    ts: SystemTime,
    /// The raw bytes, always ending with `\n`.
    data: Bytes,
}

impl ContainerState {
    fn new() -> Self {
        ContainerState {
            inner: Mutex::new(Inner {
                current: Instance {
                    id: 0,
                    lines: Vec::new(),
                    finished: false,
                },
                previous: None,
                next_instance: 1,
                break_epoch: 0,
                failing_previous: 0,
                backing_off: false,
            }),
            changed: watch::channel(0).0,
            followers: AtomicUsize::new(0),
            previous_requests: AtomicUsize::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut lock(&self.inner));
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Handle on the scripted log of one container (`namespace/pod/container`) of a [`FakeKubelet`].
///
/// Cheap to clone. Containers exist implicitly: a log request for an unknown container
/// returns an empty, still-running log.
#[derive(Clone)]
pub struct ContainerLog {
    key: Arc<(String, String, String)>,
    state: Arc<ContainerState>,
}

impl fmt::Debug for ContainerLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ns, pod, container) = &*self.key;
        write!(f, "ContainerLog({ns}/{pod}/{container})")
    }
}

impl ContainerLog {
    /// Appends a line (raw bytes, need not be UTF-8) stamped with the current time.
    ///
    /// A `\n` is appended unless the bytes already end with one.
    pub fn push_line(&self, line: impl AsRef<[u8]>) {
        self.push_line_at(SystemTime::now(), line);
    }

    /// Appends a line with an explicit timestamp (e.g. a `jiff::Timestamp` or `time::OffsetDateTime`).
    pub fn push_line_at(&self, ts: impl Into<SystemTime>, line: impl AsRef<[u8]>) {
        let line = make_line(ts.into(), line.as_ref());
        self.state.update(|inner| inner.current.lines.push(line));
    }

    /// Appends several lines stamped with the current time, waking followers once.
    pub fn push_lines<I, L>(&self, lines: I)
    where
        I: IntoIterator<Item = L>,
        L: AsRef<[u8]>,
    {
        let now = SystemTime::now();
        let lines: Vec<Line> = lines
            .into_iter()
            .map(|l| make_line(now, l.as_ref()))
            .collect();
        self.state.update(|inner| inner.current.lines.extend(lines));
    }

    /// Marks the current container instance as terminated: follow streams end after the last line.
    pub fn finish(&self) {
        self.state.update(|inner| inner.current.finished = true);
    }

    /// The current instance exits and the kubelet waits before starting the next one (a crash
    /// loop's back-off): like the real kubelet (its `lastState`), it then serves this instance
    /// as both the current and the `previous=true` log, until [`restart`](Self::restart).
    pub fn back_off(&self) {
        self.state.update(|inner| {
            inner.current.finished = true;
            inner.backing_off = true;
        });
    }

    /// Fault injection: abruptly cuts every open follow stream of this container (the
    /// connection to the apiserver is aborted; the apiserver then ends its response).
    pub fn break_streams(&self) {
        self.state
            .update(|inner| inner.break_epoch = inner.break_epoch.wrapping_add(1));
    }

    /// Fault injection: the next `n` `previous=true` requests for this container fail with a
    /// server error (500), as a kubelet or a connection failing mid-request would.
    pub fn fail_previous(&self, n: usize) {
        self.state.update(|inner| inner.failing_previous = n);
    }

    /// `previous=true` requests answered so far (failed ones included).
    pub fn previous_requests(&self) -> usize {
        self.state.previous_requests.load(Ordering::SeqCst)
    }

    /// Starts a new container instance: the current lines become the `previous=true` log, new
    /// lines start from empty, and open follow streams of the old instance end.
    pub fn restart(&self) {
        self.state.update(|inner| {
            let id = inner.next_instance;
            inner.next_instance += 1;
            let mut old = std::mem::replace(
                &mut inner.current,
                Instance {
                    id,
                    lines: Vec::new(),
                    finished: false,
                },
            );
            old.finished = true;
            inner.previous = Some(old);
            inner.backing_off = false;
        });
    }

    /// Number of lines of the current instance.
    pub fn line_count(&self) -> usize {
        lock(&self.state.inner).current.lines.len()
    }

    /// Number of follow streams currently open on this container.
    pub fn followers(&self) -> usize {
        self.state.followers.load(Ordering::SeqCst)
    }

    /// Waits until exactly `n` follow streams are open (e.g. 1 after opening one, 0 after a
    /// break); `false` on timeout.
    pub async fn wait_for_followers(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.followers() != n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

fn make_line(ts: SystemTime, raw: &[u8]) -> Line {
    let mut data = BytesMut::with_capacity(raw.len() + 1);
    data.extend_from_slice(raw);
    if !raw.ends_with(b"\n") {
        data.extend_from_slice(b"\n");
    }
    Line {
        ts,
        data: data.freeze(),
    }
}

impl FakeKubelet {
    /// Starts the server on 127.0.0.1 (random port, self-signed cert) on the current tokio
    /// runtime, and creates (or updates) the Node `node_name` pointing the apiserver at it.
    pub async fn start(client: &kube::Client, node_name: &str) -> Result<FakeKubelet> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = crate::certs::self_signed_localhost(node_name)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            )?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Error::io("binding the fake kubelet", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the fake kubelet address", e))?;

        let state = Arc::new(KubeletState::default());
        let router = Router::new()
            .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(state.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, acceptor, router, shutdown.clone()));

        let kubelet = FakeKubelet {
            node_name: node_name.to_owned(),
            addr,
            state,
            shutdown,
        };
        kubelet.register_node(client).await?;
        tracing::debug!(node = node_name, %addr, "fake kubelet started");
        Ok(kubelet)
    }

    async fn register_node(&self, client: &kube::Client) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff_now());
        let status = NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "127.0.0.1".into(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: self.node_name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.addr.port()),
                }),
            }),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("FakeKubeletReady".into()),
                message: Some("eirinix-testenv fake kubelet".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }]),
            ..NodeStatus::default()
        };
        let node = Node {
            metadata: ObjectMeta {
                name: Some(self.node_name.clone()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".to_owned(), self.node_name.clone()),
                    ("eirinix.io/fake-kubelet".to_owned(), "true".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(status.clone()),
        };
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
        // Create may drop the status, and an existing node has a stale port: set it explicitly.
        let patch = serde_json::json!({ "status": status });
        nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// The name of the Node this kubelet serves.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The kubelet's HTTPS address (127.0.0.1 and its port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The scripted log of container `container` of pod `namespace/pod` (created on first use).
    pub fn container(&self, namespace: &str, pod: &str, container: &str) -> ContainerLog {
        ContainerLog {
            key: Arc::new((namespace.to_owned(), pod.to_owned(), container.to_owned())),
            state: self.state.container(namespace, pod, container),
        }
    }

    /// Binds `pod` to this kubelet's node (sets `spec.nodeName`), so its logs are served here.
    pub fn assign(&self, pod: &mut Pod) {
        pod.spec.get_or_insert_with(PodSpec::default).node_name = Some(self.node_name.clone());
    }

    /// Creates a minimal pod bound to this node, with one container per name in `containers`.
    ///
    /// No scheduler or kubelet runs, so the pod stays `Pending`; its logs come from this fake.
    /// Delete it with a grace period of 0 (nothing would confirm a graceful deletion).
    pub async fn create_pod(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
        containers: &[&str],
    ) -> Result<Pod> {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|c| PodContainer {
                        name: (*c).to_owned(),
                        image: Some("registry.invalid/eirinix-testenv/fake:latest".to_owned()),
                        ..PodContainer::default()
                    })
                    .collect(),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        self.assign(&mut pod);
        Ok(Api::<Pod>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await?)
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Accept loop: TLS handshake and HTTP/1.1 or HTTP/2 per connection, until `shutdown`.
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "fake kubelet: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = tokio::select! {
                _ = shutdown.cancelled() => return,
                tls = acceptor.accept(tcp) => match tls {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "fake kubelet: TLS handshake failed");
                        return;
                    }
                },
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn =
                builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
            tokio::select! {
                _ = shutdown.cancelled() => {}
                res = conn => if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "fake kubelet: connection ended with an error");
                },
            }
        });
    }
}

/// Query parameters of `GET /containerLogs/...`, as the apiserver forwards them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    timestamps: Option<String>,
    tail_lines: Option<String>,
    limit_bytes: Option<String>,
    since_time: Option<String>,
    since_seconds: Option<String>,
}

#[derive(Debug, Clone)]
struct LogOptions {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<u64>,
    since: Option<SystemTime>,
}

fn parse_bool(name: &str, v: &Option<String>) -> std::result::Result<bool, String> {
    match v.as_deref() {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(format!("invalid boolean for {name}: {other:?}")),
    }
}

fn parse_int(name: &str, v: &Option<String>) -> std::result::Result<Option<i64>, String> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| format!("invalid integer for {name}: {s:?}"))
        })
        .transpose()
}

impl LogOptions {
    fn parse(q: &LogQuery) -> std::result::Result<Self, String> {
        let since = match (
            q.since_time.as_deref(),
            parse_int("sinceSeconds", &q.since_seconds)?,
        ) {
            (Some(t), _) if !t.is_empty() => Some(SystemTime::from(
                OffsetDateTime::parse(t, &Rfc3339)
                    .map_err(|e| format!("invalid sinceTime {t:?}: {e}"))?,
            )),
            (_, Some(secs)) => {
                Some(SystemTime::now() - Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
            }
            _ => None,
        };
        Ok(LogOptions {
            follow: parse_bool("follow", &q.follow)?,
            previous: parse_bool("previous", &q.previous)?,
            timestamps: parse_bool("timestamps", &q.timestamps)?,
            // Negative means "all lines", as in the kubelet.
            tail_lines: parse_int("tailLines", &q.tail_lines)?
                .and_then(|n| usize::try_from(n).ok()),
            limit_bytes: parse_int("limitBytes", &q.limit_bytes)?
                .and_then(|n| u64::try_from(n).ok())
                .filter(|n| *n > 0),
            since,
        })
    }

    /// Appends `line` to `out` if it passes the `since` filter.
    fn render(&self, line: &Line, out: &mut BytesMut) {
        if self.since.is_some_and(|since| line.ts < since) {
            return;
        }
        if self.timestamps {
            out.extend_from_slice(format_ts(line.ts).as_bytes());
            out.extend_from_slice(b" ");
        }
        out.extend_from_slice(&line.data);
    }
}

/// The kubelet's timestamp prefix format (Go's `RFC3339NanoFixed`, in UTC).
fn format_ts(ts: SystemTime) -> String {
    let t = OffsetDateTime::from(ts);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

fn tail_start(len: usize, tail: Option<usize>) -> usize {
    tail.map_or(0, |n| len.saturating_sub(n))
}

/// Truncates `chunk` to the remaining byte budget; `true` if the budget is now exhausted.
fn apply_limit(chunk: &mut BytesMut, remaining: &mut Option<u64>) -> bool {
    let Some(rem) = remaining.as_mut() else {
        return false;
    };
    let len = chunk.len() as u64;
    if len >= *rem {
        chunk.truncate(usize::try_from(*rem).unwrap_or(usize::MAX));
        *rem = 0;
        true
    } else {
        *rem -= len;
        false
    }
}

async fn container_logs(
    State(state): State<Arc<KubeletState>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    let opts = match LogOptions::parse(&query) {
        Ok(opts) => opts,
        Err(msg) => return (StatusCode::BAD_REQUEST, msg).into_response(),
    };
    let c = state.container(&ns, &pod, &container);

    if opts.previous || !opts.follow {
        let mut out = BytesMut::new();
        {
            let mut inner = lock(&c.inner);
            if opts.previous {
                c.previous_requests.fetch_add(1, Ordering::SeqCst);
                if inner.failing_previous > 0 {
                    inner.failing_previous -= 1;
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "fake kubelet: injected failure",
                    )
                        .into_response();
                }
            }
            let inner = &*inner;
            let instance = if opts.previous && !inner.backing_off {
                match inner.previous.as_ref() {
                    Some(prev) => prev,
                    None => {
                        return (
                            StatusCode::BAD_REQUEST,
                            format!(
                                "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                            ),
                        )
                            .into_response();
                    }
                }
            } else {
                &inner.current
            };
            let start = tail_start(instance.lines.len(), opts.tail_lines);
            for line in &instance.lines[start..] {
                opts.render(line, &mut out);
            }
        }
        let mut remaining = opts.limit_bytes;
        apply_limit(&mut out, &mut remaining);
        return plain(Body::from(out.freeze()));
    }

    let follow = {
        let inner = lock(&c.inner);
        Follow {
            rx: c.changed.subscribe(),
            instance: inner.current.id,
            next: tail_start(inner.current.lines.len(), opts.tail_lines),
            epoch: inner.break_epoch,
            remaining: opts.limit_bytes,
            opts,
            done: false,
            _guard: FollowerGuard::new(c.clone()),
            container: c.clone(),
        }
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        f.next_chunk().await.map(|item| (item, f))
    });
    plain(Body::from_stream(stream))
}

fn plain(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Counts open follow streams of a container.
struct FollowerGuard(Arc<ContainerState>);

impl FollowerGuard {
    fn new(c: Arc<ContainerState>) -> Self {
        c.followers.fetch_add(1, Ordering::SeqCst);
        FollowerGuard(c)
    }
}

impl Drop for FollowerGuard {
    fn drop(&mut self) {
        self.0.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// State of one `follow=true` response.
struct Follow {
    container: Arc<ContainerState>,
    rx: watch::Receiver<u64>,
    instance: u64,
    next: usize,
    epoch: u64,
    opts: LogOptions,
    remaining: Option<u64>,
    done: bool,
    _guard: FollowerGuard,
}

enum Step {
    Data(BytesMut, bool),
    Break,
    End,
    Wait,
}

impl Follow {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.done {
                return None;
            }
            self.rx.borrow_and_update();
            let step = self.step();
            match step {
                Step::Data(mut chunk, ended) => {
                    if apply_limit(&mut chunk, &mut self.remaining) || ended {
                        self.done = true;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    return Some(Ok(chunk.freeze()));
                }
                Step::Break => {
                    self.done = true;
                    return Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "fake kubelet: stream broken by the test",
                    )));
                }
                Step::End => return None,
                Step::Wait => {
                    if self.rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    fn step(&mut self) -> Step {
        let inner = lock(&self.container.inner);
        if inner.break_epoch != self.epoch {
            return Step::Break;
        }
        let instance = if inner.current.id == self.instance {
            &inner.current
        } else {
            match inner.previous.as_ref() {
                Some(prev) if prev.id == self.instance => prev,
                // Restarted more than once since: our instance's log is gone.
                _ => return Step::End,
            }
        };
        let mut chunk = BytesMut::new();
        while self.next < instance.lines.len() && chunk.len() < MAX_CHUNK {
            self.opts.render(&instance.lines[self.next], &mut chunk);
            self.next += 1;
        }
        let ended = instance.finished && self.next >= instance.lines.len();
        if !chunk.is_empty() {
            Step::Data(chunk, ended)
        } else if ended {
            Step::End
        } else {
            Step::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> LogOptions {
        let q: LogQuery = serde_json::from_value(serde_json::Value::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect(),
        ))
        .unwrap();
        LogOptions::parse(&q).unwrap()
    }

    #[test]
    fn timestamps_use_the_kubelet_fixed_nano_format() {
        let ts = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5_000);
        assert_eq!(format_ts(ts), "2023-11-14T22:13:20.000005000Z");
    }

    #[test]
    fn query_parameters() {
        let o = query(&[
            ("follow", "true"),
            ("timestamps", "1"),
            ("tailLines", "-1"),
            ("limitBytes", "10"),
            ("sinceTime", "2024-01-01T00:00:00Z"),
        ]);
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, None);
        assert_eq!(o.limit_bytes, Some(10));
        assert_eq!(
            o.since,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200))
        );
        let q: LogQuery = serde_json::from_value(serde_json::json!({"tailLines": "x"})).unwrap();
        assert!(LogOptions::parse(&q).is_err());
    }

    #[test]
    fn since_is_inclusive_and_limit_truncates() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let o = LogOptions {
            since: Some(since),
            ..query(&[])
        };
        let mut out = BytesMut::new();
        o.render(
            &make_line(since - Duration::from_nanos(1), b"old"),
            &mut out,
        );
        o.render(&make_line(since, b"new"), &mut out);
        assert_eq!(&out[..], b"new\n");

        let mut remaining = Some(2);
        assert!(apply_limit(&mut out, &mut remaining));
        assert_eq!(&out[..], b"ne");
        assert_eq!(tail_start(10, Some(3)), 7);
        assert_eq!(tail_start(2, Some(3)), 0);
    }

    #[test]
    fn unique_names_are_dns_labels() {
        let a = crate::unique_name("My_Test!");
        let b = crate::unique_name("My_Test!");
        assert_ne!(a, b);
        assert!(a.starts_with("my-test-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(crate::unique_name(&"x".repeat(100)).len() <= 57);
        assert!(crate::unique_name("--").starts_with("test-"));
    }
}
