//! A bounded FIFO of records for one sink: the oldest records are dropped (and counted) when it
//! is full, so an aggregator outage never grows memory without bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::record::Record;

/// A bounded, drop-oldest record queue (many producers, one consumer).
#[derive(Debug)]
pub struct BoundedBuffer {
    inner: Mutex<Inner>,
    notify: Notify,
    max_records: usize,
    max_bytes: usize,
    dropped: AtomicU64,
    pushed: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Arc<Record>>,
    bytes: usize,
    high_water_bytes: usize,
}

impl BoundedBuffer {
    /// A buffer holding at most `max_records` records and `max_bytes` bytes (see [`Record::cost`]).
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        BoundedBuffer {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            dropped: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Append a record, dropping the oldest ones while the limits are exceeded; returns how many
    /// were dropped.
    pub fn push(&self, record: Arc<Record>) -> u64 {
        let cost = record.cost();
        let mut dropped = 0;
        {
            let mut inner = self.lock();
            while !inner.queue.is_empty()
                && (inner.queue.len() >= self.max_records || inner.bytes + cost > self.max_bytes)
            {
                if let Some(old) = inner.queue.pop_front() {
                    inner.bytes = inner.bytes.saturating_sub(old.cost());
                    dropped += 1;
                }
            }
            inner.bytes += cost;
            inner.high_water_bytes = inner.high_water_bytes.max(inner.bytes);
            inner.queue.push_back(record);
        }
        self.pushed.fetch_add(1, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        self.notify.notify_one();
        dropped
    }

    /// Take up to `max` records from the front.
    pub fn pop_batch(&self, max: usize) -> Vec<Arc<Record>> {
        let mut inner = self.lock();
        let n = inner.queue.len().min(max);
        let batch: Vec<Arc<Record>> = inner.queue.drain(..n).collect();
        let freed: usize = batch.iter().map(|r| r.cost()).sum();
        inner.bytes = inner.bytes.saturating_sub(freed);
        batch
    }

    /// Wait until a record may be available (spurious wake-ups are possible).
    pub async fn wait(&self) {
        if !self.is_empty() {
            return;
        }
        self.notify.notified().await;
    }

    /// Wake the consumer (shutdown).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Bytes held (as charged by [`Record::cost`]).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The most bytes ever held at once.
    pub fn high_water_bytes(&self) -> usize {
        self.lock().high_water_bytes
    }

    /// Records dropped because the buffer was full, since creation.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records pushed since creation.
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    /// Drop everything held (a replica that lost leadership must not send it).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.queue.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;

    fn rec(msg: &str) -> Arc<Record> {
        let origin = Arc::new(Origin {
            source_id: "a".into(),
            instance: Some(0),
            process_type: "web".into(),
            source_type: "APP/PROC/WEB".into(),
            namespace: "n".into(),
            pod: "p".into(),
            container: "c".into(),
        });
        Arc::new(Record::new(
            origin,
            jiff::Timestamp::UNIX_EPOCH,
            msg.to_owned(),
        ))
    }

    #[test]
    fn oldest_are_dropped_and_counted() {
        let b = BoundedBuffer::new(3, 1 << 20);
        for i in 0..5 {
            b.push(rec(&i.to_string()));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped(), 2);
        let got: Vec<_> = b.pop_batch(10).iter().map(|r| r.message.clone()).collect();
        assert_eq!(got, ["2", "3", "4"]);
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn byte_limit_holds() {
        let cost = rec("xxxxxxxxxx").cost();
        let b = BoundedBuffer::new(1000, cost * 4);
        for _ in 0..100 {
            b.push(rec("xxxxxxxxxx"));
            assert!(b.bytes() <= cost * 4);
        }
        assert_eq!(b.len(), 4);
        assert_eq!(b.dropped(), 96);
        assert!(b.high_water_bytes() <= cost * 4);
        // A record larger than the whole buffer still gets through alone.
        let b = BoundedBuffer::new(10, 10);
        b.push(rec("0123456789abcdef"));
        b.push(rec("0123456789abcdef"));
        assert_eq!(b.len(), 1);
        b.clear();
        assert!(b.is_empty());
    }
}
