//! A bounded FIFO of records for one sink: the oldest records are dropped (and counted) when it
//! is full, so an aggregator outage never grows memory without bound.
//!
//! Flow control: while the sink delivers, producers that read faster than it sends (a backlog
//! being caught up) wait in [`BoundedBuffer::wait_for_room`] once the buffer is half full, until
//! it is down to a quarter; the lines stay unread in the container log instead of being dropped.
//! While the sink fails, nobody waits and the oldest records are dropped instead, so a sink that
//! is down never stops the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Producers waiting for room are woken here.
    room: Notify,
    /// Whether producers wait for room (the sink is delivering).
    flow_control: AtomicBool,
    /// Times a producer had to wait for room.
    waits: AtomicU64,
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
            room: Notify::new(),
            flow_control: AtomicBool::new(true),
            waits: AtomicU64::new(0),
        }
    }

    /// Level at which producers start waiting: half of each limit.
    fn high_water(&self) -> (usize, usize) {
        ((self.max_records / 2).max(1), (self.max_bytes / 2).max(1))
    }

    /// Whether a producer may push now without waiting.
    pub fn has_room(&self) -> bool {
        if !self.flow_control.load(Ordering::Acquire) {
            return true;
        }
        let (records, bytes) = self.high_water();
        let inner = self.lock();
        inner.queue.len() < records && inner.bytes < bytes
    }

    /// Wait until the buffer is below its high-water mark (half full), or flow control is off.
    /// Producers call it before reading more; it returns at once in the common case.
    pub async fn wait_for_room(&self) {
        if self.has_room() {
            return;
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    /// Turn flow control on (the sink delivers: producers wait for room) or off (the sink fails:
    /// nobody waits, the oldest records are dropped when the buffer is full).
    pub fn set_flow_control(&self, on: bool) {
        if self.flow_control.swap(on, Ordering::AcqRel) && !on {
            self.room.notify_waiters();
        }
    }

    /// Times a producer waited for room (the sink was slower than the logs were read).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
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
        // Wake waiting producers once down to a quarter (half the high-water mark), not on every
        // batch: they then push in bulk.
        let (records, bytes) = self.high_water();
        let low = inner.queue.len() <= records / 2 && inner.bytes <= bytes / 2;
        drop(inner);
        if low && n > 0 {
            self.room.notify_waiters();
        }
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
        {
            let mut inner = self.lock();
            inner.queue.clear();
            inner.bytes = 0;
        }
        self.room.notify_waiters();
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

    #[tokio::test]
    async fn producers_wait_for_room_while_the_sink_delivers() {
        let b = Arc::new(BoundedBuffer::new(8, 1 << 20));
        for i in 0..4 {
            b.push(rec(&i.to_string()));
        }
        assert!(!b.has_room(), "half full: producers wait");
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait_for_room().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        b.pop_batch(1);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "woken at a quarter, not at every batch"
        );
        b.pop_batch(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken at a quarter full")
            .unwrap();
        assert_eq!(b.waits(), 1);

        // A failing sink: nobody waits, the oldest records are dropped instead.
        for i in 0..10 {
            b.push(rec(&i.to_string()));
        }
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait_for_room().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        b.set_flow_control(false);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("released when flow control goes off")
            .unwrap();
        assert!(b.has_room());
        assert_eq!(b.len(), 8);
        assert_eq!(b.dropped(), 4);
        b.set_flow_control(true);
        assert!(!b.has_room());
        b.clear();
        assert!(b.has_room());
    }
}
