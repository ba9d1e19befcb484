//! Memory per followed container: the service runs on its own runtime whose threads' heap use is
//! counted by a tagging allocator; the slope between 20 and 120 followed containers is the cost
//! of one follower (task, line buffer, HTTP/1.1 + TLS connection to the apiserver).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::*;
use eirinix_logs::{LogsService, Scope};
use eirinix_testenv::{ControlPlane, FakeKubelet, unique_name};
use tokio_util::sync::CancellationToken;

struct Tagging;

static SERVICE_HEAP: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static TAGGED: Cell<bool> = const { Cell::new(false) };
}

fn tagged() -> bool {
    TAGGED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Tagging {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if tagged() {
            SERVICE_HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if tagged() {
            SERVICE_HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if tagged() {
            SERVICE_HEAP.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tagging = Tagging;

const T: Duration = Duration::from_secs(60);

async fn settle() -> isize {
    // Let connections finish their handshakes and buffers shrink back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    SERVICE_HEAP.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_followed_container_is_small() {
    init_tracing();
    let plane = ControlPlane::shared()
        .await
        .expect("control plane (run scripts/provision.sh)");
    let client = plane.client().await.unwrap();
    let ns = plane.namespace("logs-memory").await.unwrap();
    let kubelet = FakeKubelet::start(&client, &unique_name("node"))
        .await
        .unwrap();
    let rsyslog = Rsyslog::start(None);

    // The service in its own runtime, every allocation of its threads counted.
    let options = options(&rsyslog.address(), None);
    let service = LogsService::new(options).unwrap();
    let metrics = service.metrics();
    let cancel = CancellationToken::new();
    let config = plane.config().await.unwrap();
    let thread = {
        let (ns, cancel) = (ns.clone(), cancel.clone());
        std::thread::spawn(move || {
            TAGGED.with(|t| t.set(true));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .on_thread_start(|| TAGGED.with(|t| t.set(true)))
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
                let scope = Scope {
                    namespaces: vec![ns.clone()],
                    state_namespace: ns,
                };
                service.run(client, scope, settings, cancel).await;
            });
        })
    };

    let mut logs = Vec::new();
    let mut measure = Vec::new();
    for target in [20usize, 120] {
        while logs.len() < target {
            let name = format!("mem-{}", logs.len());
            let log = running_app(&client, &ns, &kubelet, &name).await;
            for i in 0..20 {
                log.push_line(format!(
                    "{name}/{i} some typical log line of moderate length"
                ));
            }
            logs.push(log);
        }
        for log in &logs {
            assert!(log.wait_for_followers(1, T).await, "followed");
        }
        let want = target * 20;
        rsyslog.wait_for(T, "all lines", |r| r.len() >= want).await;
        assert_eq!(metrics.followers.load(Ordering::Relaxed) as usize, target);
        measure.push((target, settle().await));
    }
    let ((n1, m1), (n2, m2)) = (measure[0], measure[1]);
    let per = (m2 - m1) / (n2 - n1) as isize;
    eprintln!(
        "service heap: {} KiB with {n1} followers, {} KiB with {n2}: {:.1} KiB per followed container",
        m1 / 1024,
        m2 / 1024,
        per as f64 / 1024.0
    );
    assert!(per < 64 * 1024, "per follower {per} bytes");
    cancel.cancel();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
}
