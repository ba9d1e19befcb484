//! A keep-alive HTTP/1.1-over-TLS load generator with latency histograms.
//!
//! Closed loop by default (each connection sends its next request when the previous one is
//! answered; latency from the send). With a target rate, requests are paced on a schedule and
//! latency is measured from the **scheduled** send time, so a slow server cannot hide its
//! queueing (no coordinated omission). The price: tokio timers wake up to ~1 ms late, and that
//! lateness of the generator is in the figure too; paced runs therefore also keep a histogram
//! from the actual send ([`LoadResult::hist_from_send`]) and count sends more than 2 ms behind
//! schedule ([`LoadResult::late`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where and what to send.
#[derive(Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// PEM CA to trust.
    pub ca_pem: String,
    /// TLS server name.
    pub server_name: String,
    /// Request path.
    pub path: String,
    /// Request body.
    pub body: Bytes,
}

/// What one run measured.
pub struct LoadResult {
    /// Successful responses (HTTP 200).
    pub ok: u64,
    /// Failed requests (connection errors, non-200).
    pub errors: u64,
    /// First few error messages.
    pub error_samples: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency in microseconds: from the scheduled send in paced runs, from the send otherwise.
    pub hist: Histogram<u64>,
    /// Latency in microseconds from the actual send (the same as `hist` in closed-loop runs).
    pub hist_from_send: Histogram<u64>,
    /// Paced runs: sends that started more than 2 ms behind schedule (the server kept the
    /// generator waiting; 0 means the rate was held).
    pub late: u64,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at `q` (0..1) in milliseconds (from the schedule when paced).
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// Latency at `q` (0..1) in milliseconds from the actual send.
    pub fn ms_from_send(&self, q: f64) -> f64 {
        self.hist_from_send.value_at_quantile(q) as f64 / 1000.0
    }
}

async fn connect(
    t: &Target,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(t.addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(t.server_name.clone())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Run `connections` connections for `duration`; `rate` (total requests/s) paces them when set;
/// `reconnect_every` forces a fresh TLS handshake after that many requests.
pub async fn run(
    t: Target,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    reconnect_every: Option<u64>,
) -> anyhow::Result<LoadResult> {
    let config = eirinix_core::tls::client_config(&t.ca_pem).map_err(anyhow::Error::msg)?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (t, config) = (t.clone(), config.clone());
        let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
        tasks.push(tokio::spawn(async move {
            let new_hist =
                || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut hist, mut hist_from_send) = (new_hist(), new_hist());
            let (mut ok, mut errors, mut samples, mut late) = (0u64, 0u64, Vec::new(), 0u64);
            let mut sender = None;
            let mut sent_on_conn = 0u64;
            // Stagger paced connections across one interval.
            let mut next = start
                + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
            while Instant::now() < deadline {
                if interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                    if next >= deadline {
                        break;
                    }
                }
                // Paced: latency from the schedule (`next`), so time spent waiting for a slow
                // server counts; closed loop: from the send.
                let sent = Instant::now();
                let scheduled = if interval.is_some() { next } else { sent };
                if interval.is_some()
                    && sent.saturating_duration_since(next) > Duration::from_millis(2)
                {
                    late += 1;
                }
                if reconnect_every.is_some_and(|n| sent_on_conn >= n) {
                    sender = None;
                }
                if sender.is_none() {
                    match connect(&t, config.clone()).await {
                        Ok(s) => {
                            sender = Some(s);
                            sent_on_conn = 0;
                        }
                        Err(e) => {
                            errors += 1;
                            if samples.len() < 5 {
                                samples.push(format!("{e:#}"));
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(s) = sender.as_mut() else { continue };
                let req = http::Request::post(t.path.as_str())
                    .header("host", t.server_name.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(t.body.clone()))
                    .expect("valid request");
                let result = async {
                    s.ready().await?;
                    let resp = s.send_request(req).await?;
                    let status = resp.status();
                    let body = resp.into_body().collect().await?.to_bytes();
                    anyhow::ensure!(
                        status == 200,
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    Ok::<_, anyhow::Error>(())
                }
                .await;
                sent_on_conn += 1;
                match result {
                    Ok(()) => {
                        ok += 1;
                        let done = Instant::now();
                        let us = |from: Instant| {
                            done.saturating_duration_since(from).as_micros().max(1) as u64
                        };
                        let _ = hist.record(us(scheduled));
                        let _ = hist_from_send.record(us(sent));
                    }
                    Err(e) => {
                        errors += 1;
                        sender = None;
                        if samples.len() < 5 {
                            samples.push(format!("{e:#}"));
                        }
                    }
                }
                if let Some(i) = interval {
                    next += i;
                }
            }
            (hist, hist_from_send, ok, errors, samples, late)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut hist_from_send = hist.clone();
    let (mut ok, mut errors, mut error_samples, mut late) = (0, 0, Vec::new(), 0);
    for task in tasks {
        let (h, hs, o, e, s, l) = task.await?;
        late += l;
        hist.add(&h)?;
        hist_from_send.add(&hs)?;
        ok += o;
        errors += e;
        error_samples.extend(s);
    }
    Ok(LoadResult {
        late,
        ok,
        errors,
        error_samples,
        elapsed: start.elapsed(),
        hist,
        hist_from_send,
    })
}

/// One request on a fresh connection: the response body (for checking what a server answers).
pub async fn request_once(t: &Target) -> anyhow::Result<Bytes> {
    let config = eirinix_core::tls::client_config(&t.ca_pem).map_err(anyhow::Error::msg)?;
    let mut sender = connect(t, config).await?;
    let req = http::Request::post(t.path.as_str())
        .header("host", t.server_name.as_str())
        .header("content-type", "application/json")
        .body(Full::new(t.body.clone()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status == 200,
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}
