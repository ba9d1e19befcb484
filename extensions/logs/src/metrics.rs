//! Counters of the logs extension, registered with the manager's metrics as one collector.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use eirinix_core::deps::prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use eirinix_core::metrics::Encode as _;

use crate::buffer::BoundedBuffer;

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Records delivered.
    pub sent: AtomicU64,
    /// Failed sends (each followed by a reconnect with backoff).
    pub errors: AtomicU64,
    /// Recoveries: a send succeeded after failures (on a new connection).
    pub connects: AtomicU64,
}

/// Counters of the whole extension (one set per process, across leadership terms).
#[derive(Debug, Default)]
pub struct LogsMetrics {
    /// Lines (pieces) read from the API, before deduplication.
    pub lines_read: AtomicU64,
    /// Records handed to the sinks.
    pub records_forwarded: AtomicU64,
    /// Lines skipped because they were already forwarded (resume overlap).
    pub duplicates_skipped: AtomicU64,
    /// Log streams opened (first follows plus resumes).
    pub streams_opened: AtomicU64,
    /// Log requests that failed.
    pub stream_errors: AtomicU64,
    /// Container instances whose logs could not be read (restarted more than once between reads).
    pub instances_missed: AtomicU64,
    /// Resumes that found the last forwarded line gone from the node (the kubelet rotated the log
    /// past it before it was read again): the lines in between are lost.
    pub log_gaps: AtomicU64,
    /// Containers being followed now.
    pub followers: AtomicI64,
    /// Checkpoint ConfigMap writes.
    pub checkpoints_written: AtomicU64,
    /// Checkpoint writes that failed.
    pub checkpoint_errors: AtomicU64,
    /// Whether this replica is the leader (1) or not (0).
    pub leader: AtomicI64,
    /// Whether stdout and stderr are followed apart (1) or merged, stream unknown (0).
    pub split_streams: AtomicI64,
    /// Sharded mode: this replica's member slot (-1 while it holds none).
    pub member_slot: AtomicI64,
    /// Sharded mode: members in the view this replica follows for (0 before the first).
    pub members: AtomicI64,
    /// Sharded mode: pods this replica may follow in that view.
    pub owned_pods: AtomicI64,
    /// Sharded mode: views taken over (a member came or went).
    pub rebalances: AtomicU64,
    /// Sharded mode: milliseconds from seeing the last membership change to following the pods
    /// of the new view.
    pub last_rebalance_ms: AtomicI64,
    /// Sharded mode: positions of other members' containers held until they have them.
    pub foreign_positions: AtomicI64,
    sinks: Mutex<Vec<SinkEntry>>,
}

type SinkEntry = (String, Arc<SinkMetrics>, Arc<BoundedBuffer>);

impl LogsMetrics {
    /// Fresh counters.
    pub fn new() -> Arc<Self> {
        let m = Self::default();
        m.member_slot.store(-1, Ordering::Relaxed);
        Arc::new(m)
    }

    /// Register the counters and buffer of sink `name`.
    pub fn register_sink(&self, name: &str, metrics: Arc<SinkMetrics>, buffer: Arc<BoundedBuffer>) {
        self.sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name.to_owned(), metrics, buffer));
    }

    fn sink<T>(&self, name: &str, f: impl Fn(&SinkMetrics, &BoundedBuffer) -> T) -> Option<T> {
        self.sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, m, b)| f(m, b))
    }

    /// Records delivered by sink `name`.
    pub fn sent(&self, name: &str) -> u64 {
        self.sink(name, |m, _| m.sent.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Failed sends of sink `name`.
    pub fn errors(&self, name: &str) -> u64 {
        self.sink(name, |m, _| m.errors.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Times followers waited for sink `name` (it was slower than the logs, or down).
    pub fn waits(&self, name: &str) -> u64 {
        self.sink(name, |_, b| b.waits()).unwrap_or(0)
    }

    /// Names of the registered sinks.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect()
    }
}

impl Collector for LogsMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.counter(
            "eirinix_logs_lines_read_total",
            "Log lines read from the Kubernetes API.",
            l(&self.lines_read),
        )?;
        e.counter(
            "eirinix_logs_records_forwarded_total",
            "Records handed to the sinks.",
            l(&self.records_forwarded),
        )?;
        e.counter(
            "eirinix_logs_duplicates_skipped_total",
            "Lines skipped as already forwarded after a resume.",
            l(&self.duplicates_skipped),
        )?;
        e.counter(
            "eirinix_logs_streams_opened_total",
            "Log streams opened.",
            l(&self.streams_opened),
        )?;
        e.counter(
            "eirinix_logs_stream_errors_total",
            "Log requests that failed.",
            l(&self.stream_errors),
        )?;
        e.counter(
            "eirinix_logs_instances_missed_total",
            "Container instances whose logs could not be read.",
            l(&self.instances_missed),
        )?;
        e.counter("eirinix_logs_log_gaps_total",
            "Resumes that found the node no longer had the log after the last forwarded line (lines lost).",
            l(&self.log_gaps),
        )?;
        e.counter(
            "eirinix_logs_checkpoints_written_total",
            "Checkpoint writes.",
            l(&self.checkpoints_written),
        )?;
        e.counter(
            "eirinix_logs_checkpoint_errors_total",
            "Failed checkpoint writes.",
            l(&self.checkpoint_errors),
        )?;
        e.gauge(
            "eirinix_logs_followers",
            "Containers followed now.",
            self.followers.load(Ordering::Relaxed),
        )?;
        e.gauge(
            "eirinix_logs_leader",
            "1 while this replica leads.",
            self.leader.load(Ordering::Relaxed),
        )?;
        e.gauge(
            "eirinix_logs_split_streams",
            "1 while stdout and stderr are followed apart, 0 when merged (stream unknown).",
            self.split_streams.load(Ordering::Relaxed),
        )?;
        e.gauge(
            "eirinix_logs_member_slot",
            "Sharded replicas: this replica's member slot (-1: none).",
            self.member_slot.load(Ordering::Relaxed),
        )?;
        e.gauge(
            "eirinix_logs_members",
            "Sharded replicas: members of the view followed for.",
            self.members.load(Ordering::Relaxed),
        )?;
        e.gauge(
            "eirinix_logs_owned_pods",
            "Sharded replicas: pods this replica owns in that view.",
            self.owned_pods.load(Ordering::Relaxed),
        )?;
        e.counter(
            "eirinix_logs_rebalances_total",
            "Sharded replicas: views taken over (members came or went).",
            l(&self.rebalances),
        )?;
        e.gauge(
            "eirinix_logs_last_rebalance_milliseconds",
            "Sharded replicas: time from a membership change to following the new share.",
            self.last_rebalance_ms.load(Ordering::Relaxed),
        )?;
        e.gauge(
            "eirinix_logs_foreign_positions",
            "Sharded replicas: positions kept for other members until they hold them.",
            self.foreign_positions.load(Ordering::Relaxed),
        )?;
        let sinks: Vec<SinkEntry> = self
            .sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let per_sink = |f: fn(&SinkMetrics, &BoundedBuffer) -> u64| {
            sinks
                .iter()
                .map(move |(name, m, b)| (name.as_str(), f(m, b)))
        };
        e.counter_family(
            "eirinix_logs_sink_sent_total",
            "Records delivered by the sink.",
            "sink",
            per_sink(|m, _| m.sent.load(Ordering::Relaxed)),
        )?;
        e.counter_family(
            "eirinix_logs_sink_errors_total",
            "Failed sends.",
            "sink",
            per_sink(|m, _| m.errors.load(Ordering::Relaxed)),
        )?;
        e.counter_family(
            "eirinix_logs_sink_recoveries_total",
            "Sends that succeeded after failures.",
            "sink",
            per_sink(|m, _| m.connects.load(Ordering::Relaxed)),
        )?;
        e.gauge_family(
            "eirinix_logs_sink_buffered_records",
            "Records waiting in the sink buffer.",
            "sink",
            per_sink(|_, b| b.len() as u64).map(as_gauge),
        )?;
        e.gauge_family(
            "eirinix_logs_sink_buffered_bytes",
            "Bytes waiting in the sink buffer.",
            "sink",
            per_sink(|_, b| b.bytes() as u64).map(as_gauge),
        )?;
        e.counter_family("eirinix_logs_sink_flow_control_waits_total",
            "Times reading paused because the sink was slower than the logs or down (buffer half full).",
            "sink",
            per_sink(|_, b| b.waits()),
        )
    }
}

/// A byte or record count as a gauge value.
fn as_gauge((name, v): (&str, u64)) -> (&str, i64) {
    (name, i64::try_from(v).unwrap_or(i64::MAX))
}
