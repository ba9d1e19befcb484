//! The webhook HTTPS server: one path per extension, health, readiness and metrics.
//!
//! Lean by design: a TLS accept loop with bounded connections and handshake/header timeouts,
//! axum routing, a body limit answered with 413, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::admission::ExtensionHandler;
use crate::extension::Context;
pub use crate::health::Health;
use crate::metrics::ConnectionStats;
use crate::metrics::Metrics;
use crate::names::extension_path;

/// Shared state of the HTTP handlers.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) struct AppState {
    /// One handler per extension.
    pub handlers: Vec<ExtensionHandler>,
    /// Context passed to extensions.
    pub ctx: Context,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
}

async fn review(
    state: Arc<AppState>,
    index: usize,
    query: Option<String>,
    body: Bytes,
) -> Response {
    let Some(handler) = state.handlers.get(index) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let caller_timeout = crate::admission::caller_timeout(query.as_deref());
    match handler
        .handle_body_within(&state.ctx, &state.metrics, &body, caller_timeout)
        .await
    {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::info!(error = %e, extension = handler.name(), "bad admission request");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}

/// Routes for health, readiness and metrics (also served on the optional admin port).
pub(crate) fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<AppState>>| async move {
                match s.health.readiness() {
                    Ok(()) => (StatusCode::OK, "ok".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Arc<AppState>>| async move {
                (
                    [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(state)
}

/// The full router: one POST path per extension plus the admin routes. `request_timeout`
/// bounds reading and answering a request: keep it above the largest webhook timeout.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn router(state: Arc<AppState>, body_limit: usize, request_timeout: Duration) -> Router {
    let mut webhooks = Router::new();
    for (index, handler) in state.handlers.iter().enumerate() {
        let path = extension_path(handler.name());
        let st = state.clone();
        webhooks = webhooks.route(
            &path,
            post(move |uri: axum::http::Uri, body: Bytes| {
                review(st.clone(), index, uri.query().map(str::to_owned), body)
            }),
        );
    }
    with_webhook_layers(webhooks, body_limit, request_timeout).merge(admin_router(state))
}

/// The layers every webhook route of [`router`] is served through: the body limit (413) and the
/// request timeout (408). Public so that other routes (e.g. a benchmark's transport ceiling)
/// can be measured through exactly the same stack.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) fn with_webhook_layers(
    routes: Router,
    body_limit: usize,
    request_timeout: Duration,
) -> Router {
    routes
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
}

/// Connection-level limits of a [`Server`].
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Concurrent connections at most; further accepts wait.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and for request headers.
    pub handshake_timeout: Duration,
    /// Serve HTTP/2 as well as HTTP/1.1.
    pub http2: bool,
    /// Time allowed for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Before that, how long to keep accepting and serving with every HTTP/1.1 response
    /// carrying `Connection: close` (clients re-dial and reach the remaining replicas).
    pub drain: Duration,
    /// Where accepted connections and failed handshakes are counted.
    pub stats: Arc<ConnectionStats>,
}

impl Default for ServeOptions {
    /// 1024 connections, 10 s for handshakes and headers, HTTP/1.1 only, 5 s to finish
    /// in-flight requests at shutdown, no drain period, connections counted nowhere.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            http2: false,
            shutdown_timeout: Duration::from_secs(5),
            drain: Duration::ZERO,
            stats: Arc::default(),
        }
    }
}

/// Decrements the open-connection gauge when the connection task ends, however it ends.
struct OpenGuard(Arc<ConnectionStats>);

impl OpenGuard {
    fn new(stats: Arc<ConnectionStats>) -> Self {
        stats.opened();
        OpenGuard(stats)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// The listening socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

/// A server for any router, knowing nothing of admission: [`Server::bind`], then
/// [`Server::local_addr`] (port 0 picks one), then serve over TLS or plain HTTP until the
/// shutdown token is cancelled, draining as [`ServeOptions`] says. The manager's webhook and
/// admin ports, the benchmarks and the tests all serve through it.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Bind `addr`.
    pub async fn bind(addr: SocketAddr) -> Result<Self, BindError> {
        let bound = async {
            let listener = TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            Ok((listener, local))
        };
        let (listener, addr) = bound.await.map_err(|source| BindError { addr, source })?;
        Ok(Self { listener, addr })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve `router` over TLS until `shutdown` is cancelled, then drain gracefully.
    pub async fn serve_tls(
        self,
        tls: Arc<rustls::ServerConfig>,
        router: Router,
        opts: ServeOptions,
        shutdown: CancellationToken,
    ) {
        let acceptor = TlsAcceptor::from(tls);
        serve_loop(self.listener, Some(acceptor), router, opts, shutdown).await
    }

    /// Serve `router` over plain HTTP (admin ports: probes and scrapes).
    pub async fn serve_plain(
        self,
        router: Router,
        opts: ServeOptions,
        shutdown: CancellationToken,
    ) {
        serve_loop(self.listener, None, router, opts, shutdown).await
    }
}

async fn serve_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.handshake_timeout)
        .keep_alive(true);
    if !opts.http2 {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    let draining = Arc::new(AtomicBool::new(false));
    let service = TowerToHyperService::new(close_while_draining(router, draining.clone()));
    // Cancelled when this loop is dropped (task aborted) or the drain times out:
    // connection tasks then end too, as they would if the process died.
    let kill = CancellationToken::new();
    let _kill_on_drop = kill.clone().drop_guard();
    // Shutdown: first drain (keep serving, closing each connection after its next response),
    // then stop accepting.
    let stop = async {
        shutdown.cancelled().await;
        if !opts.drain.is_zero() {
            draining.store(true, Ordering::SeqCst);
            tracing::info!(drain = ?opts.drain, "draining: connections close after their next response");
            tokio::time::sleep(opts.drain).await;
        }
    };
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut stop => break,
        };
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let service = service.clone();
        let acceptor = acceptor.clone();
        let handshake_timeout = opts.handshake_timeout;
        let kill = kill.clone();
        let open = OpenGuard::new(opts.stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let serve = async move {
                match acceptor {
                    Some(acceptor) => {
                        let tls =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    open.0.handshake_failed();
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    open.0.handshake_failed();
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                }
                drop(open);
            };
            tokio::select! {
                _ = serve => {}
                _ = kill.cancelled() => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all connections drained"),
        _ = tokio::time::sleep(opts.shutdown_timeout) => tracing::warn!("shutdown timeout: closing remaining connections"),
    }
}

/// Adds `Connection: close` to HTTP/1.1 responses while `draining` is set, so each client
/// connection ends after its next response and the client re-dials (reaching another replica).
fn close_while_draining(router: Router, draining: Arc<AtomicBool>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let draining = draining.clone();
            async move {
                let http1 = req.version() <= axum::http::Version::HTTP_11;
                let mut response = next.run(req).await;
                if http1 && draining.load(Ordering::SeqCst) {
                    response.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                response
            }
        },
    ))
}

/// Perform a real TLS handshake to `addr`, verifying the chain against `ca_pem` for `server_name`.
#[cfg_attr(feature = "internals", visibility::make(pub))]
pub(crate) async fn self_handshake(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
) -> Result<(), String> {
    handshake(addr, server_name, ca_pem, Duration::from_secs(5)).await
}

/// A TLS handshake to `addr` as `self_handshake`, given up after `timeout`: proves a server
/// there holds a certificate our CA signed for `server_name` (another replica, in URL mode).
pub(crate) async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    timeout: Duration,
) -> Result<(), String> {
    let config = crate::tls::client_config(ca_pem)?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("bad server name {server_name}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        Ok::<_, String>(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("TLS handshake with {addr} timed out"))?
}
