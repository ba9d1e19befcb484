//! A bounded FIFO of records for one sink, with back-pressure instead of loss.
//!
//! Producers (followers) wait in [`BoundedBuffer::wait_for_room`] once the buffer is half full,
//! until it is down to a quarter, and [`BoundedBuffer::push_when_room`] never takes a record
//! past the limits: a sink that is slow *or down* stops the reading, and the lines wait in the
//! container log on the node, where they can be read again. Nothing is ever dropped here; memory
//! stays bounded by the limits (plus one record when a single record is larger than the buffer).
//! Only a closed buffer (its sink stopped) refuses records, which are then simply not
//! acknowledged (the next leader reads them again).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::record::Record;

/// A bounded record queue with back-pressure (many producers, one consumer).
#[derive(Debug)]
pub struct BoundedBuffer {
    inner: Mutex<Inner>,
    /// The consumer is woken here.
    notify: Notify,
    max_records: usize,
    max_bytes: usize,
    pushed: AtomicU64,
    /// Producers in `wait_for_room` are woken here (once down to a quarter).
    room: Notify,
    /// Producers in `push_when_room` are woken here (after every batch taken).
    space: Notify,
    /// False once the sink stopped: nobody waits, records are refused.
    open: AtomicBool,
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
            pushed: AtomicU64::new(0),
            room: Notify::new(),
            space: Notify::new(),
            open: AtomicBool::new(true),
            waits: AtomicU64::new(0),
        }
    }

    /// Level at which producers start waiting: half of each limit.
    fn high_water(&self) -> (usize, usize) {
        ((self.max_records / 2).max(1), (self.max_bytes / 2).max(1))
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Whether a producer may read more now without waiting (below half full, or closed).
    pub fn has_room(&self) -> bool {
        if !self.is_open() {
            return true;
        }
        let (records, bytes) = self.high_water();
        let inner = self.lock();
        inner.queue.len() < records && inner.bytes < bytes
    }

    /// Wait until the buffer is below its high-water mark (half full) or closed. Producers call
    /// it before reading more; it returns at once in the common case. A sink that is slow or
    /// down keeps its producers waiting here: that is the back-pressure.
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

    /// Whether `cost` more bytes (one more record) fit under the limits. An empty buffer takes
    /// any record, so that one larger than the whole buffer still gets through alone.
    fn fits(&self, inner: &Inner, cost: usize) -> bool {
        inner.queue.is_empty()
            || (inner.queue.len() < self.max_records && inner.bytes + cost <= self.max_bytes)
    }

    /// Append `record` once it fits under the limits (never dropping anything). Returns false,
    /// without storing it, when the buffer is closed.
    pub async fn push_when_room(&self, record: Arc<Record>) -> bool {
        let cost = record.cost();
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_open() {
                return false;
            }
            {
                let mut inner = self.lock();
                if self.fits(&inner, cost) {
                    Self::append(&mut inner, record, cost);
                    break;
                }
            }
            notified.await;
        }
        self.pushed.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        true
    }

    /// Append `record` at once, even past the limits (callers bound memory themselves, e.g. with
    /// [`BoundedBuffer::wait_for_room`]). Returns false, without storing it, when closed.
    pub fn push(&self, record: Arc<Record>) -> bool {
        if !self.is_open() {
            return false;
        }
        let cost = record.cost();
        Self::append(&mut self.lock(), record, cost);
        self.pushed.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        true
    }

    fn append(inner: &mut Inner, record: Arc<Record>, cost: usize) {
        inner.bytes += cost;
        inner.high_water_bytes = inner.high_water_bytes.max(inner.bytes);
        inner.queue.push_back(record);
    }

    /// Close the buffer (its sink stopped): waiting producers are released, later records are
    /// refused.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
        self.room.notify_waiters();
        self.space.notify_waiters();
    }

    /// Times a producer waited for room (the sink was slower than the logs were read, or down).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take up to `max` records from the front.
    pub fn pop_batch(&self, max: usize) -> Vec<Arc<Record>> {
        let mut inner = self.lock();
        let n = inner.queue.len().min(max);
        let batch: Vec<Arc<Record>> = inner.queue.drain(..n).collect();
        let freed: usize = batch.iter().map(|r| r.cost()).sum();
        inner.bytes = inner.bytes.saturating_sub(freed);
        // Wake producers waiting for room once down to a quarter (half the high-water mark),
        // not on every batch: they then push in bulk.
        let (records, bytes) = self.high_water();
        let low = inner.queue.len() <= records / 2 && inner.bytes <= bytes / 2;
        drop(inner);
        if n > 0 {
            self.space.notify_waiters();
            if low {
                self.room.notify_waiters();
            }
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

    /// Records pushed since creation.
    pub fn pushed(&self) -> u64 {
        self.pushed.load(Ordering::Relaxed)
    }

    /// Drop everything held (a replica that lost leadership must not send it; the next leader
    /// reads it again, since none of it was acknowledged).
    pub fn clear(&self) {
        {
            let mut inner = self.lock();
            inner.queue.clear();
            inner.bytes = 0;
        }
        self.room.notify_waiters();
        self.space.notify_waiters();
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

    #[tokio::test]
    async fn a_full_buffer_makes_producers_wait_and_drops_nothing() {
        let b = Arc::new(BoundedBuffer::new(3, 1 << 20));
        for i in 0..3 {
            assert!(b.push_when_room(rec(&i.to_string())).await);
        }
        // Full: the fourth producer waits instead of pushing out the oldest record.
        let producer = tokio::spawn({
            let b = b.clone();
            async move { b.push_when_room(rec("3")).await }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!producer.is_finished(), "waits while full");
        assert_eq!(b.len(), 3);
        let got: Vec<_> = b.pop_batch(1).iter().map(|r| r.message.clone()).collect();
        assert_eq!(got, ["0"]);
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), producer)
                .await
                .expect("woken when a batch is taken")
                .unwrap()
        );
        let got: Vec<_> = b.pop_batch(10).iter().map(|r| r.message.clone()).collect();
        assert_eq!(got, ["1", "2", "3"], "every record, in order");
        assert_eq!(b.pushed(), 4);
        assert_eq!(b.bytes(), 0);
    }

    #[tokio::test]
    async fn byte_limit_holds() {
        let cost = rec("xxxxxxxxxx").cost();
        let b = Arc::new(BoundedBuffer::new(1000, cost * 4));
        for _ in 0..4 {
            b.push_when_room(rec("xxxxxxxxxx")).await;
        }
        assert_eq!(b.bytes(), cost * 4);
        let producer = tokio::spawn({
            let b = b.clone();
            async move { b.push_when_room(rec("xxxxxxxxxx")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!producer.is_finished(), "bytes at the limit: waits");
        b.pop_batch(1);
        producer.await.unwrap();
        assert!(b.high_water_bytes() <= cost * 4);
        // A record larger than the whole buffer still gets through alone.
        let b = BoundedBuffer::new(10, 10);
        assert!(b.push_when_room(rec("0123456789abcdef")).await);
        assert_eq!(b.len(), 1);
        b.clear();
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn producers_wait_for_room_until_a_quarter_and_closing_releases_them() {
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

        // The sink stopped: nobody waits any more, and records are refused (not acknowledged,
        // so they are read again by the next leader).
        for i in 0..8 {
            b.push(rec(&i.to_string()));
        }
        let waiters = (
            tokio::spawn({
                let b = b.clone();
                async move { b.wait_for_room().await }
            }),
            tokio::spawn({
                let b = b.clone();
                async move { b.push_when_room(rec("late")).await }
            }),
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        b.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiters.0)
            .await
            .expect("released when closed")
            .unwrap();
        assert!(
            !tokio::time::timeout(std::time::Duration::from_secs(5), waiters.1)
                .await
                .expect("released when closed")
                .unwrap()
        );
        assert!(b.has_room());
        assert!(!b.push(rec("after")));
        assert_eq!(b.len(), 10);
    }
}
