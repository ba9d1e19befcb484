//! The Cloud Foundry logs flow on a real node: Eirini-shaped app StatefulSets whose container
//! runs a real process as the `vcap` user (kubelet, containerd, runc), the logs extension
//! following them through the apiserver, and a real rsyslogd as the aggregator.
//!
//! Ground truth is the node itself: the kubelet's CRI log files (`<timestamp> stdout|stderr F
//! <line>`) say what each container wrote, when, and to which stream.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use eirinix_logs::{LogsOptions, SinkOptions, SyslogOptions};
use eirinix_testenv::Cluster;
use eirinix_testenv::eirini::EiriniApp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

/// Generous: CI shares 2 cores with everything the suite starts.
const T: Duration = Duration::from_secs(120);

/// The shared cluster (started on first use; fails loudly when it cannot run), an admin client
/// and a fresh namespace.
async fn cluster(prefix: &str) -> (&'static Cluster, kube::Client, String) {
    init_tracing();
    let cluster = Cluster::shared()
        .await
        .expect("the real node (run scripts/provision.sh and scripts/install-deps.sh as root)");
    let client = cluster.client().await.unwrap();
    let ns = cluster.namespace(prefix).await.unwrap();
    (cluster, client, ns)
}

/// Options with one sink (`relp` or `syslog`, named so) to rsyslog at `address`.
fn sink_options(kind: &str, address: &str) -> LogsOptions {
    let mut o = options(address, None);
    let s = SyslogOptions {
        name: Some(kind.into()),
        address: address.into(),
        ..SyslogOptions::default()
    };
    o.sinks = vec![match kind {
        "relp" => SinkOptions::Relp(s),
        _ => SinkOptions::Syslog(s),
    }];
    o
}

/// An Eirini app running `script` (sh) as `vcap`, without readiness probe, with an `emptyDir`
/// at `/data` that outlives container restarts.
async fn push_app(client: &kube::Client, ns: &str, name: &str, script: &str) -> EiriniApp {
    let mut app = EiriniApp::new(name);
    app.command = vec!["sh".into(), "-c".into(), script.into()];
    app.ready_port = None;
    let mut sts = app.statefulset();
    let spec = sts.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    spec.volumes = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "data", "emptyDir": {}})).unwrap(),
    ]);
    spec.containers[0].volume_mounts = Some(vec![
        serde_json::from_value(serde_json::json!({"name": "data", "mountPath": "/data"})).unwrap(),
    ]);
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    app
}

/// One line of a container's log as the node stored it.
#[derive(Clone, Debug)]
struct NodeLine {
    /// The container instance (restart count) that wrote it.
    instance: u32,
    ts: jiff::Timestamp,
    stream: String,
    msg: String,
}

/// The CRI log directory of `pod`'s `container` on the node.
fn log_dir(cluster: &Cluster, ns: &str, pod: &str, container: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(cluster.pod_logs_dir())
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(container))
}

/// Every line the node stored for `pod`'s `container`, instance by instance.
fn node_log(cluster: &Cluster, ns: &str, pod: &str, container: &str) -> Vec<NodeLine> {
    let Some(dir) = log_dir(cluster, ns, pod, container) else {
        return Vec::new();
    };
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name.strip_suffix(".log")?.parse().ok()?, e.path()))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for (instance, path) in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            let mut parts = line.splitn(4, ' ');
            let (Some(ts), Some(stream), Some(_tag), Some(msg)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            out.push(NodeLine {
                instance,
                ts: ts.parse().unwrap(),
                stream: stream.into(),
                msg: msg.into(),
            });
        }
    }
    out
}

fn micros(ts: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_microsecond(ts.as_microsecond()).unwrap()
}

/// How many times each message arrived.
fn counts(received: &[Received]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for r in received {
        *c.entry(r.text()).or_default() += 1;
    }
    c
}

/// `cf push` + `cf logs`: an app writes to stdout and to stderr; each line reaches the
/// aggregator once, in order per stream, with its own timestamp, its stream (and the severity
/// Cloud Foundry gives it) and the app's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_arrive_once_each_in_order_with_their_own_timestamps_and_identity() {
    let (cluster, client, ns) = cluster("logs-node-split").await;
    let rsyslog = Rsyslog::start_relp(None);
    let service = start_service(&client, &ns, sink_options("relp", &rsyslog.address()));
    let n = 300;
    let app = push_app(
        &client,
        &ns,
        "dora-split",
        &format!(
            "i=0; while [ $i -lt {n} ]; do echo \"out-$i\"; echo \"err-$i\" >&2; i=$((i+1)); done; \
             echo \"Started as $(whoami) ($(id -u))\"; exec sleep 100000"
        ),
    )
    .await;
    let pod = app.pod_name(0);
    let got = rsyslog
        .wait_for(T, "every stdout and stderr line", |r| {
            messages_with(r, "out-").len() >= n
                && messages_with(r, "err-").len() >= n
                && !messages_with(r, "Started as").is_empty()
        })
        .await;
    // Everything read was delivered (nothing else on its way), then counted.
    eventually(T, "every forwarded record delivered", || {
        service.metrics.sent("relp") == service.metrics.records_forwarded.load(Ordering::Relaxed)
    })
    .await;
    assert_sequence(&messages_with(&got, "out-"), "out-", n);
    assert_sequence(&messages_with(&got, "err-"), "err-", n);
    assert_eq!(
        service.metrics.records_forwarded.load(Ordering::Relaxed),
        2 * n as u64 + 1,
        "no line forwarded twice"
    );
    assert_eq!(service.metrics.split_streams.load(Ordering::Relaxed), 1);
    assert_eq!(
        messages_with(&got, "Started as"),
        ["Started as vcap (2000)"]
    );

    // Against what the node stored: stream, timestamp (to the microsecond), identity.
    let node = node_log(cluster, &ns, &pod, "opi");
    assert_eq!(node.len(), 2 * n + 1, "{node:?}");
    let by_msg: HashMap<String, &Received> = got.iter().map(|r| (r.text(), r)).collect();
    for line in &node {
        let r = by_msg
            .get(&line.msg)
            .unwrap_or_else(|| panic!("{line:?} not received"));
        assert_eq!(
            r.param("stream").as_deref(),
            Some(line.stream.as_str()),
            "{line:?}"
        );
        let pri = if line.stream == "stderr" { "11" } else { "14" };
        assert_eq!(r.pri, pri, "{line:?}");
        let ts: jiff::Timestamp = r.timestamp.parse().unwrap();
        assert_eq!(ts, micros(line.ts), "the line's own timestamp: {line:?}");
        assert_eq!(r.app, app.guid, "APP-NAME is the app guid");
        assert_eq!(r.host, pod, "HOSTNAME is the instance");
        assert_eq!(r.procid, "[APP/PROC/WEB/0]");
        assert_eq!(r.param("app_id").as_deref(), Some(app.guid.as_str()));
        assert_eq!(r.param("namespace").as_deref(), Some(ns.as_str()));
        assert_eq!(r.param("container").as_deref(), Some("opi"));
        assert_eq!(r.param("instance_id").as_deref(), Some("0"));
    }
    service.stop().await;
}

/// An app that prints a few lines and exits with an error within milliseconds, restarted by
/// the kubelet with back-off (CrashLoopBackOff): every line of every run arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_app_that_exits_at_once_has_every_run_read_once() {
    let (cluster, client, ns) = cluster("logs-node-crash").await;
    let rsyslog = Rsyslog::start_relp(None);
    let service = start_service(&client, &ns, sink_options("relp", &rsyslog.address()));
    let app = push_app(
        &client,
        &ns,
        "crashy",
        "n=$(cat /data/runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/runs; \
         echo \"run-$n-out-1\"; echo \"run-$n-err-1\" >&2; echo \"run-$n-out-2\"; \
         echo \"run-$n-err-2\" >&2; exit 3",
    )
    .await;
    let pod = app.pod_name(0);
    let runs = 3;
    // Run 1 at once; the kubelet restarts a container the first time at once (run 2, within a
    // second: it may serve run 2's log as the current one before the pod status counts the
    // restart) and then after its 10 s back-off (run 3).
    let got = rsyslog
        .wait_for_with(
            T,
            "three runs",
            |r| {
                !messages_with(r, &format!("run-{runs}-err-2")).is_empty()
                    && !messages_with(r, &format!("run-{runs}-out-2")).is_empty()
            },
            || service.counters(),
        )
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = pods.get_status(&pod).await.unwrap().status.unwrap();
    let cs = &status.container_statuses.unwrap()[0];
    assert!(cs.restart_count >= 2, "{cs:?}");
    eventually(T, "every forwarded record delivered", || {
        service.metrics.sent("relp") == service.metrics.records_forwarded.load(Ordering::Relaxed)
    })
    .await;
    let metrics = service.metrics.clone();
    service.stop().await;
    drop(got);
    let got = rsyslog.received();

    let seen = counts(&got);
    for run in 1..=runs {
        for line in ["out-1", "err-1", "out-2", "err-2"] {
            let msg = format!("run-{run}-{line}");
            assert_eq!(seen.get(&msg), Some(&1), "{msg}: {seen:?}");
        }
        let out = messages_with(&got, &format!("run-{run}-out-"));
        assert_eq!(
            out,
            [format!("run-{run}-out-1"), format!("run-{run}-out-2")]
        );
        let err = messages_with(&got, &format!("run-{run}-err-"));
        assert_eq!(
            err,
            [format!("run-{run}-err-1"), format!("run-{run}-err-2")]
        );
    }
    // Each run printed and exited within 100 ms: the lines carry the node's own timestamps
    // (the kubelet keeps the files of the last two instances only, so they are the witness).
    let node = node_log(cluster, &ns, &pod, "opi");
    for run in 1..=runs {
        let stamps: Vec<jiff::Timestamp> = got
            .iter()
            .filter(|r| r.text().starts_with(&format!("run-{run}-")))
            .map(|r| r.timestamp.parse().unwrap())
            .collect();
        let first = stamps.iter().min().unwrap();
        let last = stamps.iter().max().unwrap();
        assert!(
            last.duration_since(*first) < jiff::SignedDuration::from_millis(100),
            "run {run} lasted {:?}",
            last.duration_since(*first)
        );
        let on_node: Vec<&NodeLine> = node
            .iter()
            .filter(|l| l.msg.starts_with(&format!("run-{run}-")))
            .collect();
        assert!(
            on_node.iter().all(|l| l.instance == on_node[0].instance),
            "one container instance per run: {on_node:?}"
        );
        for line in on_node {
            let r = got.iter().find(|r| r.text() == line.msg).unwrap();
            assert_eq!(
                r.timestamp.parse::<jiff::Timestamp>().unwrap(),
                micros(line.ts)
            );
            assert_eq!(r.param("stream").as_deref(), Some(line.stream.as_str()));
        }
    }
    assert_eq!(metrics.instances_missed.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.log_gaps.load(Ordering::Relaxed), 0);
}

/// An app logging about 1,000 lines a second.
const TICKER: &str = "i=0; while :; do echo \"tick-$i\"; i=$((i+1)); \
                      if [ $((i % 10)) = 0 ]; then sleep 0.01; fi; done";

/// The index of a `tick-N` message.
fn tick(msg: &str) -> Option<u64> {
    msg.strip_prefix("tick-")?.parse().ok()
}

/// Lines the node has stored for the ticker so far.
fn ticks_on_node(cluster: &Cluster, ns: &str, pod: &str) -> u64 {
    node_log(cluster, ns, pod, "opi").len() as u64
}

/// rsyslogd (RELP) killed with SIGKILL while an app logs, and kept down while the app writes ten
/// times what the buffer holds: reading waits (back-pressure, the lines stay on the node), and
/// after the restart every line arrives; the only repeats are the unacknowledged window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relp_receiver_killed_and_down_longer_than_the_buffer_loses_nothing() {
    let (cluster, client, ns) = cluster("logs-node-relp").await;
    let mut rsyslog = Rsyslog::start_relp(None);
    let mut opts = sink_options("relp", &rsyslog.address());
    opts.buffer_lines = 200;
    let service = start_service(&client, &ns, opts);
    let app = push_app(&client, &ns, "ticker", TICKER).await;
    let pod = app.pod_name(0);
    rsyslog
        .wait_for(T, "lines flowing", |r| r.len() >= 500)
        .await;
    rsyslog.kill();
    let stored_at_kill = rsyslog.received().len() as u64;
    let on_node = ticks_on_node(cluster, &ns, &pod);
    let target = on_node + 2_000;
    eventually(
        T,
        "the app writes ten buffers' worth while rsyslog is down",
        || ticks_on_node(cluster, &ns, &pod) >= target,
    )
    .await;
    let m = &service.metrics;
    let read = m.lines_read.load(Ordering::Relaxed);
    assert!(
        read < target - 1_000,
        "reading waits for the receiver: {read} lines read, {target} on the node"
    );
    assert!(m.waits("relp") > 0 && m.errors("relp") > 0);
    rsyslog.restart();
    let got = rsyslog
        .wait_for(T, "every line written while rsyslog was down", |r| {
            r.iter()
                .filter_map(|m| tick(&m.text()))
                .any(|i| i >= target)
        })
        .await;
    let seen = counts(&got);
    let missing: Vec<u64> = (0..target)
        .filter(|i| !seen.contains_key(&format!("tick-{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} lines: {missing:?}",
        missing.len()
    );
    let repeated: Vec<u64> = (0..target)
        .filter(|i| seen[&format!("tick-{i}")] > 1)
        .collect();
    assert!(
        repeated.len() <= eirinix_logs::relp::WINDOW
            && repeated.iter().all(|i| seen[&format!("tick-{i}")] == 2),
        "repeats beyond the unacknowledged window: {repeated:?}"
    );
    assert_eq!(m.log_gaps.load(Ordering::Relaxed), 0);
    eprintln!(
        "RELP receiver killed after {stored_at_kill} lines and kept down while the app wrote \
         {} more: 0 lost, {} repeated, reading paused at {read} lines read",
        target - on_node,
        repeated.len()
    );
    service.stop().await;
}

/// Plain syslog (no acknowledgement): rsyslogd killed with SIGKILL while an app logs loses
/// exactly what it had been sent but had not stored: one run of lines, all before the point
/// where the sink noticed the crash; every line from there on arrives after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_receiver_killed_loses_at_most_what_it_had_not_stored() {
    let (_cluster, client, ns) = cluster("logs-node-tcp").await;
    let mut rsyslog = Rsyslog::start(None);
    let service = start_service(&client, &ns, sink_options("syslog", &rsyslog.address()));
    push_app(&client, &ns, "ticker", TICKER).await;
    rsyslog
        .wait_for(T, "lines flowing", |r| r.len() >= 500)
        .await;
    rsyslog.kill();
    let stored_at_kill = rsyslog.received().len() as u64;
    let m = &service.metrics;
    eventually(T, "the sink sees the crash", || m.errors("syslog") >= 1).await;
    // Until the restart nothing is delivered: what counts as delivered stays where it was.
    let delivered_at_crash = m.sent("syslog");
    rsyslog.restart();
    let until = delivered_at_crash + 1_000;
    let got = rsyslog
        .wait_for(T, "lines after the restart", |r| {
            r.iter().filter_map(|m| tick(&m.text())).any(|i| i >= until)
        })
        .await;
    let seen = counts(&got);
    let missing: Vec<u64> = (0..until)
        .filter(|i| !seen.contains_key(&format!("tick-{i}")))
        .collect();
    if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
        assert_eq!(
            (last - first + 1) as usize,
            missing.len(),
            "one run: {missing:?}"
        );
        assert!(
            *first >= stored_at_kill,
            "stored lines are kept: {missing:?}"
        );
        assert!(
            *last < delivered_at_crash,
            "only lines sent before the crash was noticed are lost: {missing:?}"
        );
    }
    let repeated = (0..until)
        .filter(|i| seen.get(&format!("tick-{i}")).copied().unwrap_or(0) > 1)
        .count();
    assert!(repeated <= 256, "{repeated} repeated");
    eprintln!(
        "syslog receiver killed after {stored_at_kill} stored lines: {} lost, {repeated} repeated \
         ({delivered_at_crash} counted delivered when the crash was noticed)",
        missing.len()
    );
    service.stop().await;
}

/// An upgrade: a leader that followed the merged log (`splitStreams: false`, as before streams
/// were told apart) stops; the next one follows stdout and stderr apart and resumes both from
/// the merged checkpoint: nothing lost, nothing repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_checkpoint_resumes_both_streams_without_repeats() {
    let (cluster, client, ns) = cluster("logs-node-upgrade").await;
    let rsyslog = Rsyslog::start_relp(None);
    let mut merged = sink_options("relp", &rsyslog.address());
    merged.split_streams = false;
    let service = start_service(&client, &ns, merged);
    let app = push_app(
        &client,
        &ns,
        "upgraded",
        "for i in $(seq 0 99); do echo \"a-out-$i\"; echo \"a-err-$i\" >&2; done; \
         while [ ! -f /data/go ]; do sleep 0.1; done; \
         for i in $(seq 0 99); do echo \"b-out-$i\"; echo \"b-err-$i\" >&2; done; exec sleep 100000",
    )
    .await;
    let pod = app.pod_name(0);
    rsyslog
        .wait_for(T, "the first lines, merged", |r| {
            messages_with(r, "a-out-").len() >= 100 && messages_with(r, "a-err-").len() >= 100
        })
        .await;
    assert_eq!(service.metrics.split_streams.load(Ordering::Relaxed), 0);
    service.stop().await;

    let service = start_service(&client, &ns, sink_options("relp", &rsyslog.address()));
    let go = cluster
        .exec(&ns, &pod, "opi", ["touch", "/data/go"])
        .await
        .unwrap();
    assert!(go.success(), "{go:?}");
    let got = rsyslog
        .wait_for(T, "the later lines, apart", |r| {
            messages_with(r, "b-out-").len() >= 100 && messages_with(r, "b-err-").len() >= 100
        })
        .await;
    eventually(T, "every forwarded record delivered", || {
        service.metrics.sent("relp") == service.metrics.records_forwarded.load(Ordering::Relaxed)
    })
    .await;
    for prefix in ["a-out-", "a-err-", "b-out-", "b-err-"] {
        assert_sequence(&messages_with(&got, prefix), prefix, 100);
    }
    for r in &got {
        let want = match &r.text()[..2] {
            "a-" => "unknown",
            _ if r.text().contains("-out-") => "stdout",
            _ => "stderr",
        };
        assert_eq!(r.param("stream").as_deref(), Some(want), "{}", r.text());
    }
    assert_eq!(service.metrics.split_streams.load(Ordering::Relaxed), 1);
    assert_eq!(service.metrics.log_gaps.load(Ordering::Relaxed), 0);
    assert_eq!(
        service.metrics.records_forwarded.load(Ordering::Relaxed),
        200,
        "the second leader forwarded the new lines only"
    );
    service.stop().await;
}

/// Lines the node no longer has cannot be forwarded, and are not silently skipped: a leader
/// stopped after forwarding the first line; meanwhile the app wrote more than the kubelet's
/// `containerLogMaxSize` (10 MiB) and the kubelet rotated the log away. The next leader forwards
/// what the node still has and counts the gap (`eirinix_logs_log_gaps_total`, and a warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_the_node_rotated_away_while_no_leader_ran_is_counted_as_a_gap() {
    let (cluster, client, ns) = cluster("logs-node-rotate").await;
    let rsyslog = Rsyslog::start_relp(None);
    let opts = sink_options("relp", &rsyslog.address());
    let service = start_service(&client, &ns, opts.clone());
    let app = push_app(
        &client,
        &ns,
        "rotated",
        "echo first; while [ ! -f /data/go ]; do sleep 0.1; done; \
         i=0; while [ $i -lt 8000 ]; do printf \"big-%06d-%02000d\\n\" $i 0; i=$((i+1)); done; \
         while [ ! -f /data/again ]; do sleep 0.1; done; \
         for i in $(seq 1 10); do echo \"after-$i\"; done; exec sleep 100000",
    )
    .await;
    let pod = app.pod_name(0);
    rsyslog
        .wait_for(T, "the first line", |r| {
            !messages_with(r, "first").is_empty()
        })
        .await;
    eventually(T, "its checkpoint", || {
        service.metrics.sent("relp") == 1
            && service.metrics.checkpoints_written.load(Ordering::Relaxed) > 0
    })
    .await;
    service.stop().await;

    // No leader: the app writes 16 MB, and the kubelet rotates the log (every 10 s it checks).
    let exec = |file: &'static str| {
        let (ns, pod) = (ns.clone(), pod.clone());
        async move {
            let out = cluster
                .exec(&ns, &pod, "opi", ["touch", file])
                .await
                .unwrap();
            assert!(out.success(), "{out:?}");
        }
    };
    exec("/data/go").await;
    let dir = log_dir(cluster, &ns, &pod, "opi").unwrap();
    let rotated = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("0.log."))
    };
    eventually(T, "the kubelet rotated the log", rotated).await;
    exec("/data/again").await;
    eventually(T, "the last lines on the node", || {
        node_log(cluster, &ns, &pod, "opi")
            .iter()
            .any(|l| l.msg == "after-10")
    })
    .await;
    // What the node still has (the current file; rotated files are not served by pods/log).
    let current: Vec<String> = node_log(cluster, &ns, &pod, "opi")
        .into_iter()
        .map(|l| l.msg)
        .collect();
    assert!(!current.iter().any(|m| m == "first"), "rotated away");

    let service = start_service(&client, &ns, opts);
    let got = rsyslog
        .wait_for(T, "the lines after the rotation", |r| {
            messages_with(r, "after-").len() >= 10
        })
        .await;
    eventually(T, "every forwarded record delivered", || {
        service.metrics.sent("relp") == service.metrics.records_forwarded.load(Ordering::Relaxed)
    })
    .await;
    assert_eq!(
        service.metrics.log_gaps.load(Ordering::Relaxed),
        1,
        "the gap is counted"
    );
    assert!(
        eirinix_core::metrics::render(service.metrics.clone())
            .contains("eirinix_logs_log_gaps_total 1")
    );
    let after_first: Vec<String> = got.iter().skip(1).map(Received::text).collect();
    assert_eq!(
        after_first, current,
        "exactly what the node still had, once, in order"
    );
    eprintln!(
        "rotated away: {} of 8000 big lines; forwarded what the node kept: {} lines",
        8000 - current.iter().filter(|m| m.starts_with("big-")).count(),
        current.len()
    );
    service.stop().await;
}

/// The fenced block of the README that starts with the line `first`.
fn readme_block(first: &str) -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find(&format!("```\n{first}\n"))
        .or_else(|| readme.find(&format!("```yaml\n{first}\n")))
        .unwrap_or_else(|| panic!("README block {first:?}"));
    let body = &readme[readme[start..].find('\n').unwrap() + start + 1..];
    body[..body.find("\n```").unwrap()].to_owned()
}

/// The README's flow with the README's own configuration blocks (the aggregator bound to
/// loopback here, its files in a temp dir): two instances of an app writing to stdout and
/// stderr; each app's file reads like `cf logs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_flow_gives_cf_logs_lines_per_app() {
    let (cluster, client, ns) = cluster("logs-node-readme").await;
    let port = free_port();
    let rsyslog_conf = readme_block("# /etc/rsyslog.d/cf-apps.conf");
    assert!(rsyslog_conf.contains(r#"port="2514""#), "{rsyslog_conf}");
    let rsyslog = Rsyslog::start_custom(port, |dir| {
        rsyslog_conf
            .replace(
                r#"port="2514""#,
                &format!(r#"port="{port}" address="127.0.0.1""#),
            )
            .replace("/var/log/cf", &dir.display().to_string())
    });
    let yaml = readme_block("# logs.yaml")
        .replace("logs.example.com:2514", &format!("127.0.0.1:{port}"))
        .replace("[eirini]", &format!("[{ns}]"));
    let options = LogsOptions::from_yaml(&yaml).unwrap();
    assert!(matches!(options.sinks[..], [SinkOptions::Relp(_)]));
    let service = start_service(&client, &ns, options);

    let mut app = EiriniApp::new("dora");
    app.replicas = 2;
    app.command = vec![
        "sh".into(),
        "-c".into(),
        "echo \"Starting $HOSTNAME on port $PORT\"; echo 'warning: cache cold' >&2; \
         mkdir -p /tmp/www; echo ok > /tmp/www/index.html; exec httpd -f -p \"$PORT\" -h /tmp/www"
            .into(),
    ];
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &app.statefulset())
        .await
        .unwrap();
    let file = rsyslog.dir.path().join(format!("{}.log", app.guid));
    let lines = |want: usize| {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= want).then_some(lines)
    };
    eventually(T, "both instances' lines in the app's file", || {
        lines(4).is_some()
    })
    .await;
    let lines = lines(4).unwrap();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for index in 0..2u32 {
        let pod = app.pod_name(index);
        let node = node_log(cluster, &ns, &pod, "opi");
        for (stream, text) in [
            ("OUT", format!("Starting {pod} on port 8080")),
            ("ERR", "warning: cache cold".to_owned()),
        ] {
            let tail = format!(" [APP/PROC/WEB/{index}] {stream} {text}");
            let line = lines
                .iter()
                .find(|l| l.ends_with(&tail))
                .unwrap_or_else(|| panic!("{tail:?} in {lines:?}"));
            let ts: jiff::Timestamp = line[..line.len() - tail.len()].parse().unwrap();
            let written = node.iter().find(|l| l.msg == text).unwrap();
            assert_eq!(ts, micros(written.ts), "the line's own timestamp: {line}");
        }
    }
    service.stop().await;
}
