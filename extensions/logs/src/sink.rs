//! Sinks: where records go. A [`Sink`] delivers batches; a worker feeds it from its
//! [`BoundedBuffer`], batching, retrying with exponential backoff, and acknowledging delivered
//! records (which advances the checkpoint). A batch is retried until it is delivered: nothing is
//! dropped, and while a sink fails its buffer fills and the followers wait (back-pressure).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buffer::BoundedBuffer;
pub use crate::destination::Sink;
use crate::error::LogsError;
use crate::loggregator::LoggregatorSink;
use crate::metrics::{LogsMetrics, SinkMetrics};
use crate::options::{LogsOptions, SinkOptions};
use crate::record::Record;
use crate::relp::RelpSink;
use crate::syslog::SyslogSink;

/// Build the sink described by `options`.
pub fn build_sink(options: &SinkOptions) -> Result<Box<dyn Sink>, LogsError> {
    Ok(match options {
        SinkOptions::Syslog(s) => Box::new(SyslogSink::new(s)?),
        SinkOptions::Relp(s) => Box::new(RelpSink::new(s)?),
        SinkOptions::Loggregator(l) => Box::new(LoggregatorSink::new(l)?),
    })
}

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The next delay (between half and all of the nominal one).
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = nominal / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A running sink: its buffer, counters and worker task.
pub struct SinkHandle {
    /// Name, for logs and metrics.
    pub name: String,
    /// The records waiting for this sink.
    pub buffer: Arc<BoundedBuffer>,
    /// Its counters.
    pub metrics: Arc<SinkMetrics>,
    epoch: Arc<AtomicU64>,
    drain: CancellationToken,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SinkHandle {
    /// Queue a record for this sink at once (no waiting: see [`BoundedBuffer::push`]); false
    /// when the sink stopped.
    pub fn push(&self, record: Arc<Record>) -> bool {
        self.buffer.push(record)
    }

    /// Drop everything waiting, including a batch being retried (a replica that lost leadership).
    pub fn discard(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.buffer.clear();
    }

    /// Send what is buffered, then stop; give up after `timeout`.
    pub async fn drain(mut self, timeout: Duration) {
        self.drain.cancel();
        self.buffer.wake();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(timeout, &mut task).await.is_err()
        {
            if !self.buffer.is_empty() {
                tracing::warn!(
                    sink = %self.name,
                    left = self.buffer.len(),
                    "sink did not drain in time; records left in its buffer are lost"
                );
            }
            self.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }

    /// Stop at once.
    pub async fn stop(mut self) {
        self.stop.cancel();
        self.buffer.wake();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        // Nobody sends any more: producers must not wait for room.
        self.buffer.close();
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Start a worker for `sink` (the `index`-th sink: acknowledgements are per sink).
pub fn spawn_sink(
    name: String,
    index: usize,
    sink: Box<dyn Sink>,
    options: &LogsOptions,
    metrics: &LogsMetrics,
) -> SinkHandle {
    let buffer = Arc::new(BoundedBuffer::new(
        options.buffer_lines,
        options.buffer_bytes,
    ));
    let sink_metrics = Arc::new(SinkMetrics::default());
    metrics.register_sink(&name, sink_metrics.clone(), buffer.clone());
    let epoch = Arc::new(AtomicU64::new(0));
    let drain = CancellationToken::new();
    let stop = CancellationToken::new();
    let worker = SinkWorker {
        name: name.clone(),
        index,
        sink,
        buffer: buffer.clone(),
        metrics: sink_metrics.clone(),
        batch_size: options.batch_size.max(1),
        backoff: Backoff::new(options.reconnect_initial(), options.reconnect_max()),
        epoch: epoch.clone(),
        report_interval: Duration::from_secs(options.drop_report_interval_secs.max(1)),
    };
    let task = tokio::spawn(worker.run(drain.clone(), stop.clone()));
    SinkHandle {
        name,
        buffer,
        metrics: sink_metrics,
        epoch,
        drain,
        stop,
        task: Some(task),
    }
}

struct SinkWorker {
    name: String,
    index: usize,
    sink: Box<dyn Sink>,
    buffer: Arc<BoundedBuffer>,
    metrics: Arc<SinkMetrics>,
    batch_size: usize,
    backoff: Backoff,
    epoch: Arc<AtomicU64>,
    /// Errors of a failing sink are logged at most this often.
    report_interval: Duration,
}

impl SinkWorker {
    /// `pending[..n]` was delivered: acknowledge it (unless discarded meanwhile) and count it.
    fn delivered(&self, pending: &mut Vec<Arc<Record>>, n: usize, epoch: u64) {
        let n = n.min(pending.len());
        if n == 0 {
            return;
        }
        if epoch == self.epoch.load(Ordering::SeqCst) {
            for r in &pending[..n] {
                r.delivered(self.index);
            }
        }
        self.metrics.sent.fetch_add(n as u64, Ordering::Relaxed);
        pending.drain(..n);
    }

    async fn run(mut self, drain: CancellationToken, stop: CancellationToken) {
        let mut pending: Vec<Arc<Record>> = Vec::new();
        let mut pending_epoch = 0;
        let mut failing_since: Option<Instant> = None;
        let mut last_error_log: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                break;
            }
            if !pending.is_empty() && pending_epoch != self.epoch.load(Ordering::SeqCst) {
                pending.clear();
            }
            if pending.is_empty() {
                pending_epoch = self.epoch.load(Ordering::SeqCst);
                pending = self.buffer.pop_batch(self.batch_size);
                if pending.is_empty() {
                    if drain.is_cancelled() {
                        break;
                    }
                    tokio::select! {
                        _ = self.buffer.wait() => {}
                        _ = drain.cancelled() => {}
                        _ = stop.cancelled() => break,
                    }
                    continue;
                }
            }
            let result = tokio::select! {
                r = self.sink.send(&pending) => r,
                _ = stop.cancelled() => break,
            };
            match result {
                Ok(()) => {
                    let n = pending.len();
                    self.delivered(&mut pending, n, pending_epoch);
                    self.backoff.reset();
                    if let Some(since) = failing_since.take() {
                        self.metrics.connects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            sink = %self.name,
                            down_for = ?since.elapsed(),
                            "sink recovered"
                        );
                    }
                }
                Err(e) => {
                    // What the receiver confirmed before the failure is delivered; the rest of
                    // the batch is sent again. Meanwhile the buffer fills and the followers wait:
                    // the lines stay in the container logs on the node, nothing is dropped.
                    let confirmed = self.sink.confirmed_before_failure();
                    self.delivered(&mut pending, confirmed, pending_epoch);
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    failing_since.get_or_insert_with(Instant::now);
                    if last_error_log.is_none_or(|t| t.elapsed() >= self.report_interval) {
                        last_error_log = Some(Instant::now());
                        tracing::warn!(
                            sink = %self.name,
                            error = %e,
                            buffered = self.buffer.len() + pending.len(),
                            down_for = ?failing_since.map(|t| t.elapsed()),
                            "sink send failed; retrying with backoff (reading waits for it: \
                             the lines stay in the container logs on the node)"
                        );
                    }
                    self.sink.reset().await;
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
        }
        self.buffer.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        assert!(d[2] >= Duration::from_millis(175) && d[2] <= Duration::from_millis(350));
        assert!(d[3] <= Duration::from_millis(350));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
