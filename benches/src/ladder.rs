//! `eirinix-bench ladder`: where the server CPU of a persi review goes, measured on the running
//! server rather than in a hot loop (a hot loop keeps the decode's code and data in cache; the
//! server runs TLS, HTTP and the kernel between two reviews).
//!
//! One pinned `eirinix-bench serve` process answers every rung. Each rung adds one step of the
//! persi route to the rung before and answers the same constant as `/fixed`, so the difference
//! between two rungs is the server CPU of that step. A rung whose step fails answers 500, and
//! any failed request fails the run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use eirinix_core::admission::ExtensionHandler;
use eirinix_core::metrics::Outcome;
use eirinix_core::server::AppState;

use crate::peers::{self, Pinning};

/// The rungs of the typed path, cheapest first: path and what it adds to the rung before.
const RUNGS: [(&str, &str); 5] = [
    (
        "/fixed",
        "TLS, HTTP, the webhook layers, the body collected; a constant answer",
    ),
    (
        "/ladder/scan",
        "the decode's first step: the scanner's pass over the body, every value checked and skipped, nothing typed",
    ),
    (
        "/ladder/decode",
        "the whole decode: the review with its typed k8s-openapi Pod (the scan included)",
    ),
    (
        "/ladder/mutate",
        "persi's mutate on the decoded Pod (the patch built, not encoded), within its timeout",
    ),
    (
        "/ladder/typed",
        "the whole route served from a typed Pod: the answer encoded, metrics, tracing span, the larger response",
    ),
];

/// Not rungs, measured in the same runs: the whole persi route as served (from persi's view of
/// the pod, no typed Pod), the lean prototype (`lean.rs`), and the fixed answer after a spin of
/// pure computation or after the memory traffic of simd-json's tape (the decode's first step
/// until BENCHMARKS §21).
const ROUTES: [(&str, &str); 5] = [
    (
        "/persi",
        "the route as served: persi's view of the pod decoded from the review, no typed Pod",
    ),
    (
        "/ladder/lean",
        "persi's whole route as lean as we can write it: simd-json's tape into a small borrowed view, persi's VCAP_SERVICES reader, the patch and the answer written as bytes",
    ),
    (
        "/ladder/spin?us=10",
        "the fixed answer after 10 µs of pure computation (no memory touched, nothing sent): what a route's own time costs the server beyond itself",
    ),
    (
        "/ladder/spin?us=30",
        "the same after 30 µs, about persi's own work on the server",
    ),
    (
        "/ladder/churn",
        "the fixed answer after writing and freeing CHURN of fresh heap, the tape's peak for this review (nothing parsed): what the decode's memory traffic costs the server",
    ),
];

/// How long `/ladder/spin?us=N` computes before answering: N µs (at most a millisecond).
fn spin_time(query: Option<&str>) -> Option<Duration> {
    let us: u64 = query?.strip_prefix("us=")?.parse().ok()?;
    (us <= 1000).then(|| Duration::from_micros(us))
}

/// The heap simd-json's tape of one review takes at its peak, with its copy of the body (counted
/// by the benchmark's allocator).
fn tape_peak_bytes() -> usize {
    let body = crate::pods::review(&crate::pods::eirini_app_pod());
    crate::alloc::enable(true);
    let before = crate::alloc::reset_peak();
    let mut copy = body.to_vec();
    black_box(simd_json::Deserializer::from_slice(&mut copy).is_ok());
    drop(copy);
    let peak = crate::alloc::peak().saturating_sub(before);
    crate::alloc::enable(false);
    peak
}

/// Write `bytes` of fresh heap and free it: the tape's memory traffic without its parse.
/// Never inlined, so that `scripts/server-profile.sh` finds it on the stack.
#[inline(never)]
fn churn(bytes: usize) -> bool {
    let buffer = black_box(vec![1u8; bytes]);
    buffer
        .iter()
        .step_by(64)
        .map(|&b| u64::from(b))
        .sum::<u64>()
        > 0
}

/// Compute for `time` without touching memory: a stand-in for a route's own work that leaves
/// the caches as they were. Never inlined, so that `scripts/server-profile.sh` finds it.
#[inline(never)]
fn spin(time: Duration) -> u64 {
    let start = std::time::Instant::now();
    let mut turns = 0u64;
    // At least one turn, even if the thread was preempted before the first look at the clock.
    loop {
        turns = black_box(turns.wrapping_add(1));
        if start.elapsed() >= time {
            return turns;
        }
    }
}

/// The constant answer, or 500 when the rung's step failed (so the load run counts an error).
fn answer(step_ok: bool) -> Response {
    if step_ok {
        ([("content-type", "application/json")], crate::FIXED).into_response()
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// The ladder's routes (all but `/fixed` and `/persi`), behind the same layers as every
/// webhook route; `state` holds the context and metrics of `/persi`.
pub(crate) fn routes(state: Arc<AppState>, body_limit: usize, timeout: Duration) -> axum::Router {
    // persi served from a typed Pod, as extensions without a view are.
    let typed = Arc::new(ExtensionHandler::new(
        Arc::new(eirinix_persi::Persi::default()),
        eirinix_core::FailurePolicy::Fail,
        Duration::from_secs(10),
        0,
    ));
    let (typed_mutate, state_mutate) = (typed.clone(), state.clone());
    let churn_bytes = tape_peak_bytes();
    let router = axum::Router::new()
        .route(
            "/ladder/scan",
            post(|uri: http::Uri, body: Bytes| async move {
                black_box(uri.query().map(str::to_owned));
                answer(black_box(eirinix_core::admission::scan_only(&body)))
            }),
        )
        .route(
            "/ladder/decode",
            post(|uri: http::Uri, body: Bytes| async move {
                black_box(uri.query().map(str::to_owned));
                let decoded = eirinix_core::admission::decode(&body);
                answer(black_box(decoded).is_ok_and(|d| d.pod.is_ok()))
            }),
        )
        .route(
            "/ladder/lean",
            post(|uri: http::Uri, body: Bytes| async move {
                black_box(uri.query().map(str::to_owned));
                match crate::lean::answer(&body) {
                    Ok(answer) => ([("content-type", "application/json")], answer).into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }),
        )
        .route(
            "/ladder/spin",
            post(|uri: http::Uri, body: Bytes| async move {
                black_box(&body);
                match spin_time(uri.query()) {
                    Some(time) => answer(black_box(spin(time)) > 0),
                    None => StatusCode::BAD_REQUEST.into_response(),
                }
            }),
        )
        .route(
            "/ladder/churn",
            post(move |uri: http::Uri, body: Bytes| async move {
                black_box(uri.query().map(str::to_owned));
                black_box(&body);
                answer(churn(churn_bytes))
            }),
        )
        .route(
            "/ladder/mutate",
            post(move |uri: http::Uri, body: Bytes| async move {
                black_box(uri.query().map(str::to_owned));
                let Ok(decoded) = eirinix_core::admission::decode(&body) else {
                    return answer(false);
                };
                let (verdict, outcome) = typed_mutate.answer(&state_mutate.ctx, &decoded).await;
                black_box(verdict);
                answer(outcome == Outcome::Patched)
            }),
        )
        .route(
            "/ladder/typed",
            post(move |uri: http::Uri, body: Bytes| async move {
                black_box(uri.query().map(str::to_owned));
                match typed.handle_body(&state.ctx, &state.metrics, &body).await {
                    Ok(answer) => ([("content-type", "application/json")], answer).into_response(),
                    Err(_) => StatusCode::BAD_REQUEST.into_response(),
                }
            }),
        );
    eirinix_core::server::with_webhook_layers(router, body_limit, timeout)
}

/// `eirinix-bench ladder`.
pub async fn run(args: Pinning) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let dir = tempfile::tempdir()?;
    let server =
        peers::start_rust("eirinix (persi)", "serve", args.server_core, dir.path()).await?;
    println!(
        "server pinned to core {}, load generator (`eirinix-bench load`, {} connections, {} s) to core {}; {} runs, rungs measured in turn within each run\n",
        args.server_core, args.connections, args.seconds, args.load_core, args.runs
    );
    // The typed route and the lean one must give the served route's patch, or their figures
    // mean nothing.
    let served = crate::loadgen::request_once(&server.target("/persi")?).await?;
    for path in ["/ladder/typed", "/ladder/lean"] {
        let other = crate::loadgen::request_once(&server.target(path)?).await?;
        crate::lean::check_same_patch(&other, &served).with_context(|| path.to_owned())?;
    }
    let all = || RUNGS.iter().chain(&ROUTES);
    let mut cpu: Vec<Vec<f64>> = all().map(|_| Vec::new()).collect();
    for run in 0..args.runs {
        for (i, (path, _)) in all().enumerate() {
            let s = peers::measure(&server, path, &args, dir.path()).await?;
            anyhow::ensure!(
                s.errors == 0,
                "{path}: {} requests failed (its step failed, or the route is missing)",
                s.errors
            );
            eprintln!(
                "run {}: {path}: {:.0} reviews/s, {:.1} µs server CPU per review, server core {:.0} % busy, load generator {:.0} %",
                run + 1,
                s.rate,
                s.cpu_us,
                s.busy * 100.0,
                s.load_busy * 100.0
            );
            cpu[i].push(s.cpu_us);
        }
    }
    server.stop().await;
    let fixed = peers::median(&cpu[0]);
    let churn_kib = tape_peak_bytes() as f64 / 1024.0;
    println!(
        "| rung | adds to the rung before | server CPU µs per review | the step (difference of medians) | times the fixed answer |"
    );
    println!("|---|---|---|---|---|");
    let mut before = None;
    for ((path, adds), xs) in RUNGS.iter().zip(&cpu) {
        let m = peers::median(xs);
        let step = before.map_or("-".to_owned(), |b: f64| format!("{:+.1} µs", m - b));
        println!(
            "| `{path}` | {adds} | {} | {step} | {:.2}x |",
            peers::spread(xs, 1),
            m / fixed
        );
        before = Some(m);
    }
    println!(
        "\nNot rungs (`/persi` and `/ladder/lean` give `/ladder/typed`'s patch, checked before the runs; `/ladder/spin` and `/ladder/churn` answer as `/fixed`):\n"
    );
    println!(
        "| route | what it is | server CPU µs per review | over `/fixed` | times the fixed answer |"
    );
    println!("|---|---|---|---|---|");
    for ((path, what), xs) in ROUTES.iter().zip(&cpu[RUNGS.len()..]) {
        let m = peers::median(xs);
        let what = what.replace("CHURN", &format!("{:.1} KiB", churn_kib));
        println!(
            "| `{path}` | {what} | {} | {:+.1} µs | {:.2}x |",
            peers::spread(xs, 1),
            m - fixed,
            m / fixed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_takes_its_time_from_the_query() {
        assert_eq!(spin_time(Some("us=30")), Some(Duration::from_micros(30)));
        for bad in [
            None,
            Some(""),
            Some("us="),
            Some("us=x"),
            Some("ms=3"),
            Some("us=1001"),
        ] {
            assert_eq!(spin_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_spin_computes_for_at_least_its_time() {
        let time = Duration::from_millis(2);
        let start = std::time::Instant::now();
        assert!(spin(time) > 0, "the spin never turned");
        assert!(start.elapsed() >= time, "the spin stopped early");
    }

    #[test]
    fn the_churn_is_sized_by_the_tapes_heap_and_reads_back_what_it_wrote() {
        let bytes = tape_peak_bytes();
        // simd-json copies the 6.7 KB body and builds its index, tape and strings beside it.
        assert!(
            bytes > 6_000,
            "the tape's peak was counted as {bytes} bytes"
        );
        assert!(churn(bytes), "the churn read back no byte it wrote");
    }
}
