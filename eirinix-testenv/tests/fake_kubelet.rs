//! Pod logs served by the fake kubelet, read through the real kube-apiserver.

use std::time::Duration;

use eirinix_testenv::{ControlPlane, FakeKubelet, unique_name};
use futures::{AsyncBufReadExt, AsyncReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};

struct Fixture {
    pods: Api<Pod>,
    kubelet: FakeKubelet,
    ns: String,
}

async fn fixture(pod: &str, containers: &[&str]) -> Fixture {
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    let ns = plane.namespace("logs").await.unwrap();
    let kubelet = FakeKubelet::start(&client, &unique_name("node"))
        .await
        .unwrap();
    kubelet
        .create_pod(&client, &ns, pod, containers)
        .await
        .unwrap();
    Fixture {
        pods: Api::namespaced(client, &ns),
        kubelet,
        ns,
    }
}

fn params(container: &str) -> LogParams {
    LogParams {
        container: Some(container.to_owned()),
        ..LogParams::default()
    }
}

async fn with_timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn logs_through_the_apiserver() {
    let f = fixture("app", &["main"]).await;
    let log = f.kubelet.container(&f.ns, "app", "main");
    log.push_line("first");
    log.push_line(b"second\n");

    let text = f.pods.logs("app", &params("main")).await.unwrap();
    assert_eq!(text, "first\nsecond\n");

    // Only container: the name may be omitted.
    let text = f.pods.logs("app", &LogParams::default()).await.unwrap();
    assert_eq!(text, "first\nsecond\n");

    // tailLines and limitBytes.
    log.push_line("third");
    let tail = LogParams {
        tail_lines: Some(2),
        ..params("main")
    };
    assert_eq!(f.pods.logs("app", &tail).await.unwrap(), "second\nthird\n");
    let limit = LogParams {
        limit_bytes: Some(8),
        ..params("main")
    };
    assert_eq!(f.pods.logs("app", &limit).await.unwrap(), "first\nse");
}

#[tokio::test]
async fn follow_stream_gets_later_lines_and_ends_when_finished() {
    let f = fixture("follow", &["main", "sidecar"]).await;
    let log = f.kubelet.container(&f.ns, "follow", "main");
    log.push_line("early");

    let follow = LogParams {
        follow: true,
        ..params("main")
    };
    let mut lines = f.pods.log_stream("follow", &follow).await.unwrap().lines();
    assert_eq!(with_timeout(lines.next()).await.unwrap().unwrap(), "early");
    assert!(log.wait_for_followers(1, Duration::from_secs(5)).await);

    for i in 0..3 {
        log.push_line(format!("late {i}"));
        assert_eq!(
            with_timeout(lines.next()).await.unwrap().unwrap(),
            format!("late {i}")
        );
    }
    log.finish();
    assert!(with_timeout(lines.next()).await.is_none());
}

#[tokio::test]
async fn timestamps_and_since_time() {
    let f = fixture("stamped", &["main"]).await;
    let log = f.kubelet.container(&f.ns, "stamped", "main");
    let t0: jiff::Timestamp = "2030-01-02T03:04:05Z".parse().unwrap();
    log.push_line_at(t0, "at t0");
    log.push_line_at(t0 + jiff::SignedDuration::from_millis(1500), "at t0+1.5s");
    log.push_line_at(t0 + jiff::SignedDuration::from_secs(3), "at t0+3s");

    let stamped = LogParams {
        timestamps: true,
        ..params("main")
    };
    let text = f.pods.logs("stamped", &stamped).await.unwrap();
    assert_eq!(
        text,
        "2030-01-02T03:04:05.000000000Z at t0\n\
         2030-01-02T03:04:06.500000000Z at t0+1.5s\n\
         2030-01-02T03:04:08.000000000Z at t0+3s\n"
    );
    // Each prefix parses as RFC 3339.
    for line in text.lines() {
        let (ts, _) = line.split_once(' ').unwrap();
        ts.parse::<jiff::Timestamp>().unwrap();
    }

    // sinceTime is inclusive and has second precision on the wire.
    let since = |t: jiff::Timestamp| LogParams {
        since_time: Some(t),
        ..params("main")
    };
    assert_eq!(
        f.pods.logs("stamped", &since(t0)).await.unwrap(),
        "at t0\nat t0+1.5s\nat t0+3s\n"
    );
    let t1 = t0 + jiff::SignedDuration::from_secs(1);
    assert_eq!(
        f.pods.logs("stamped", &since(t1)).await.unwrap(),
        "at t0+1.5s\nat t0+3s\n"
    );
    let t3 = t0 + jiff::SignedDuration::from_secs(3);
    assert_eq!(
        f.pods.logs("stamped", &since(t3)).await.unwrap(),
        "at t0+3s\n"
    );
}

#[tokio::test]
async fn previous_instance_after_restart() {
    let f = fixture("restarts", &["main"]).await;
    let log = f.kubelet.container(&f.ns, "restarts", "main");
    let previous = LogParams {
        previous: true,
        ..params("main")
    };
    let err = f.pods.logs("restarts", &previous).await.unwrap_err();
    assert!(
        err.to_string().contains("previous terminated container"),
        "{err}"
    );

    log.push_line("run 1");
    let follow = LogParams {
        follow: true,
        ..params("main")
    };
    let mut old = f
        .pods
        .log_stream("restarts", &follow)
        .await
        .unwrap()
        .lines();
    assert_eq!(with_timeout(old.next()).await.unwrap().unwrap(), "run 1");

    log.restart();
    log.push_line("run 2");
    // The old instance's follow stream ends; the new instance has only the new line.
    assert!(with_timeout(old.next()).await.is_none());
    assert_eq!(
        f.pods.logs("restarts", &params("main")).await.unwrap(),
        "run 2\n"
    );
    assert_eq!(f.pods.logs("restarts", &previous).await.unwrap(), "run 1\n");
}

#[tokio::test]
async fn raw_bytes_and_many_lines() {
    let f = fixture("bulk", &["main"]).await;
    let log = f.kubelet.container(&f.ns, "bulk", "main");
    log.push_line([0xff, 0xfe, b'x']);
    log.push_lines((0..10_000).map(|i| format!("line {i}")));
    log.finish();
    assert_eq!(log.line_count(), 10_001);

    let follow = LogParams {
        follow: true,
        ..params("main")
    };
    let mut body = Vec::new();
    with_timeout(
        f.pods
            .log_stream("bulk", &follow)
            .await
            .unwrap()
            .read_to_end(&mut body),
    )
    .await
    .unwrap();
    assert_eq!(&body[..4], &[0xff, 0xfe, b'x', b'\n']);
    let text = std::str::from_utf8(&body[4..]).unwrap();
    assert_eq!(text.lines().count(), 10_000);
    assert_eq!(text.lines().last(), Some("line 9999"));
}

#[tokio::test]
async fn break_streams_cuts_open_follows() {
    let f = fixture("broken", &["main"]).await;
    let log = f.kubelet.container(&f.ns, "broken", "main");
    log.push_line("before");
    let follow = LogParams {
        follow: true,
        ..params("main")
    };
    let mut lines = f.pods.log_stream("broken", &follow).await.unwrap().lines();
    assert_eq!(with_timeout(lines.next()).await.unwrap().unwrap(), "before");
    assert!(log.wait_for_followers(1, Duration::from_secs(5)).await);

    log.break_streams();
    log.push_line("after");
    // kube-apiserver ignores the copy error when its kubelet connection breaks and ends its
    // own response normally: the client sees a clean end of stream, nothing after the break.
    let next = with_timeout(lines.next()).await;
    assert!(next.is_none(), "{next:?}");
    assert!(log.wait_for_followers(0, Duration::from_secs(5)).await);

    // A new follow stream sees everything.
    let again: Vec<String> = with_timeout(async {
        let mut s = f.pods.log_stream("broken", &follow).await.unwrap().lines();
        let mut got = Vec::new();
        while got.len() < 2 {
            got.push(s.next().await.unwrap().unwrap());
        }
        got
    })
    .await;
    assert_eq!(again, ["before", "after"]);
}
