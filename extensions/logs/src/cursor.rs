//! Positions in a container's log: what was forwarded, how to resume without gap or duplicate,
//! and what every sink has delivered (the checkpoint).
//!
//! A position is the timestamp of the last forwarded line plus how many lines with exactly that
//! timestamp were forwarded. The apiserver takes `sinceTime` with second precision, so a resumed
//! stream starts at the whole second and [`Dedup`] drops what was already forwarded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;

/// A position in a container's log, across restarts of the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Timestamp of the last forwarded line.
    pub ts: Timestamp,
    /// Lines with exactly `ts` forwarded so far (at least 1).
    pub n: u32,
    /// Restart count of the container instance that line came from.
    pub instance: i32,
}

impl PartialOrd for Cursor {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cursor {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.ts, self.n, self.instance).cmp(&(other.ts, other.n, other.instance))
    }
}

impl Cursor {
    /// The text stored in checkpoints: `<RFC 3339 timestamp> <n> <instance>`.
    pub fn encode(&self) -> String {
        format!("{} {} {}", format_nanos(self.ts), self.n, self.instance)
    }

    /// Parse [`Cursor::encode`] output.
    pub fn decode(text: &str) -> Option<Cursor> {
        let mut parts = text.split_ascii_whitespace();
        let ts = parts.next()?.parse::<Timestamp>().ok()?;
        let n = parts.next()?.parse().ok()?;
        let instance = parts.next()?.parse().ok()?;
        // A timestamp [`Cursor::encode`] could not write back (an offset taking it out of
        // years 0000–9999 UTC) is not a checkpoint we wrote.
        if parts.next().is_some() || n == 0 || !in_rfc3339_range(ts) {
            return None;
        }
        Some(Cursor { ts, n, instance })
    }
}

/// RFC 3339 with 9 fractional digits (like the kubelet's prefix).
pub fn format_nanos(ts: Timestamp) -> String {
    let dt = jiff::tz::TimeZone::UTC.to_datetime(ts);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond()
    )
}

/// 0000-01-01T00:00:00Z, the first second a four-digit RFC 3339 UTC timestamp can name.
const FIRST_RFC3339_SECOND: i64 = -62_167_219_200;
/// 9999-12-31T23:59:59Z, the last one.
const LAST_RFC3339_SECOND: i64 = 253_402_300_799;

/// Splits the `timestamps=true` prefix off a log line: `(timestamp, rest)`, or `None` when the
/// line does not start with an RFC 3339 timestamp and a space.
pub fn split_timestamp(line: &[u8]) -> Option<(Timestamp, &[u8])> {
    let space = line.iter().take(40).position(|b| *b == b' ')?;
    let prefix = std::str::from_utf8(&line[..space]).ok()?;
    // Cheap shape check before the real parse: "YYYY-MM-DDT".
    let b = prefix.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let ts = prefix.parse::<Timestamp>().ok()?;
    // RFC 5424 and our cursors only know years 0000–9999 in UTC; "0000-01-01T00:30:00+01:00"
    // is year -1 there, so such a prefix is not a timestamp we can carry.
    if !in_rfc3339_range(ts) {
        return None;
    }
    Some((ts, &line[space + 1..]))
}

/// Whether `ts` falls in years 0000–9999 UTC, all that an RFC 3339 UTC timestamp can name.
fn in_rfc3339_range(ts: Timestamp) -> bool {
    (FIRST_RFC3339_SECOND..=LAST_RFC3339_SECOND).contains(&ts.as_second())
}

/// Decides, line by line, what is new after a resume: at the start of a response it drops lines
/// older than the last forwarded one, and the first `n` lines carrying exactly its timestamp;
/// from the first new line on, everything in that response is new (so a node clock stepping
/// backwards causes repeats on a later resume, never losses).
///
/// A response that should repeat the last forwarded line ([`Dedup::begin_resume`]: same log)
/// but passes its timestamp before all `n` lines at it were seen shows that the node no longer
/// has that part of the log (rotated away): [`Dedup::take_gap`] reports it.
#[derive(Clone, Debug, Default)]
pub struct Dedup {
    last: Option<(Timestamp, u32)>,
    skip: u32,
    passed: bool,
    expect_last: bool,
    gap: Option<(Timestamp, Timestamp)>,
}

impl Dedup {
    /// Start after `cursor` (or from the beginning).
    pub fn new(cursor: Option<Cursor>) -> Self {
        Dedup {
            last: cursor.map(|c| (c.ts, c.n)),
            skip: 0,
            passed: cursor.is_none(),
            expect_last: false,
            gap: None,
        }
    }

    /// A new response starts (from [`Dedup::since`]): its first lines may repeat forwarded ones.
    pub fn begin(&mut self) {
        self.skip = self.last.map_or(0, |(_, n)| n);
        self.passed = self.last.is_none();
        self.expect_last = false;
    }

    /// Like [`Dedup::begin`], for a response from the same log as the last forwarded line: it
    /// must repeat that line, or the node lost the log after it ([`Dedup::take_gap`]).
    pub fn begin_resume(&mut self) {
        self.begin();
        self.expect_last = self.last.is_some();
    }

    /// The gap found since the last call, if any: the last forwarded line's timestamp and the
    /// first one read after it (lines written in between may be lost).
    pub fn take_gap(&mut self) -> Option<(Timestamp, Timestamp)> {
        self.gap.take()
    }

    /// The `sinceTime` to ask for: the last timestamp truncated to the second (the apiserver's
    /// precision), so that nothing after it is missed.
    pub fn since(&self) -> Option<Timestamp> {
        self.last
            .and_then(|(ts, _)| Timestamp::from_second(ts.as_second()).ok())
    }

    /// The timestamp of the last forwarded line.
    pub fn last_timestamp(&self) -> Option<Timestamp> {
        self.last.map(|(ts, _)| ts)
    }

    /// Whether admitting a line at `ts` now would report a gap: it is the first new line of a
    /// resumed response and it passes the last forwarded line before that line was repeated.
    pub fn would_gap(&self, ts: Timestamp) -> bool {
        !self.passed && self.expect_last && self.skip > 0 && self.last.is_some_and(|(l, _)| ts > l)
    }

    /// Whether a line at `ts` is new; if so it counts as forwarded and its `n` (lines forwarded
    /// with exactly this timestamp in a row) is returned.
    pub fn admit(&mut self, ts: Timestamp) -> Option<u32> {
        if !self.passed {
            if let Some((last, _)) = self.last {
                if ts < last {
                    return None;
                }
                if ts == last && self.skip > 0 {
                    self.skip -= 1;
                    return None;
                }
                if self.expect_last && self.skip > 0 && ts > last {
                    self.gap = Some((last, ts));
                }
            }
            self.passed = true;
        }
        let n = match self.last {
            Some((last, n)) if last == ts => n.saturating_add(1),
            _ => 1,
        };
        self.last = Some((ts, n));
        Some(n)
    }
}

/// What each sink has delivered of one container; the checkpoint is the least of them.
#[derive(Debug)]
pub struct Progress {
    acked: Mutex<Vec<Option<Cursor>>>,
    /// Per sink: records handed to its buffer, and records it delivered (hand-over waits until
    /// they are equal: everything read was delivered).
    pushed: Vec<AtomicU64>,
    delivered: Vec<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Progress {
    /// Progress of a container resumed at `start`, for `sinks` sinks.
    pub fn new(sinks: usize, start: Option<Cursor>) -> Arc<Self> {
        Arc::new(Progress {
            acked: Mutex::new(vec![start; sinks]),
            pushed: (0..sinks).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..sinks).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Sink `sink` delivered the line at `cursor` (sinks deliver a container's lines in order,
    /// so the latest acknowledgement is the sink's position).
    pub fn ack(&self, sink: usize, cursor: Cursor) {
        if let Some(slot) = lock(&self.acked).get_mut(sink) {
            *slot = Some(cursor);
        }
        if let Some(n) = self.delivered.get(sink) {
            n.fetch_add(1, Ordering::Release);
        }
    }

    /// A record of this output was handed to sink `sink`'s buffer.
    pub(crate) fn pushed(&self, sink: usize) {
        if let Some(n) = self.pushed.get(sink) {
            n.fetch_add(1, Ordering::Release);
        }
    }

    /// Whether every sink delivered every record handed to it (meaningful once the follower
    /// stopped: then the checkpoint is where a new follower continues without a repeat).
    pub(crate) fn drained(&self) -> bool {
        self.pushed
            .iter()
            .zip(&self.delivered)
            .all(|(p, d)| d.load(Ordering::Acquire) >= p.load(Ordering::Acquire))
    }

    /// The position every sink has delivered up to (`None`: not all have delivered anything).
    pub fn checkpoint(&self) -> Option<Cursor> {
        let acked = lock(&self.acked);
        let mut min: Option<Cursor> = None;
        for c in acked.iter() {
            let c = (*c)?;
            min = Some(min.map_or(c, |m| m.min(c)));
        }
        min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn timestamps_are_split_and_formatted() {
        let (t, rest) = split_timestamp(b"2024-05-06T07:08:09.123456789Z hello world").unwrap();
        assert_eq!(format_nanos(t), "2024-05-06T07:08:09.123456789Z");
        assert_eq!(rest, b"hello world");
        let (_, rest) = split_timestamp(b"2024-05-06T07:08:09.000000000Z ").unwrap();
        assert_eq!(rest, b"");
        assert!(split_timestamp(b"no timestamp here").is_none());
        assert!(split_timestamp(b"2024-05-06T07:08:09.1Zx y").is_none());
        assert!(split_timestamp(b"").is_none());
        assert!(split_timestamp(b"\xff\xfe 1").is_none());
        // Outside years 0000-9999 in UTC: not a timestamp RFC 5424 or a cursor can carry.
        assert!(split_timestamp(b"0000-01-01T00:30:00+01:00 early").is_none());
        assert!(split_timestamp(b"9999-12-31T23:30:00-01:00 late").is_none());
        let (t, _) = split_timestamp(b"0000-01-01T00:00:00Z first").unwrap();
        assert_eq!(format_nanos(t), "0000-01-01T00:00:00.000000000Z");
        let (t, _) = split_timestamp(b"9999-12-30T12:00:00.999999999Z last").unwrap();
        assert_eq!(
            Cursor::decode(
                &Cursor {
                    ts: t,
                    n: 1,
                    instance: 0
                }
                .encode()
            )
            .map(|c| c.ts),
            Some(t)
        );
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            ts: ts("2024-05-06T07:08:09.000000100Z"),
            n: 3,
            instance: 2,
        };
        assert_eq!(c.encode(), "2024-05-06T07:08:09.000000100Z 3 2");
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("x 1 0"), None);
        assert_eq!(Cursor::decode("2024-05-06T07:08:09Z 0 0"), None);
        assert_eq!(Cursor::decode("2024-05-06T07:08:09Z 1 0 extra"), None);
        // Found by the logs_format fuzzer: an offset taking the time out of years 0000–9999
        // UTC decoded into a cursor that encoded to text no longer decoding.
        assert_eq!(Cursor::decode("0000-01-01T00:00:00+01:00 80 0"), None);
        assert_eq!(Cursor::decode("9999-12-31T23:00:00-01:00 1 0"), None);
        let edge = Cursor::decode("0000-01-01T01:00:00+01:00 1 0").unwrap();
        assert_eq!(Cursor::decode(&edge.encode()), Some(edge));
    }

    #[test]
    fn resume_drops_the_overlap_and_keeps_identical_timestamps() {
        let a = ts("2024-01-01T00:00:01.5Z");
        let b = ts("2024-01-01T00:00:01.7Z");
        let c = ts("2024-01-01T00:00:02.1Z");
        let mut d = Dedup::new(None);
        d.begin();
        assert_eq!(d.since(), None);
        // First response: a, b, b (two lines with the same timestamp).
        assert_eq!(d.admit(a), Some(1));
        assert_eq!(d.admit(b), Some(1));
        assert_eq!(d.admit(b), Some(2));
        // Broken; resumed from the whole second: a, b, b are replayed, then b (third), c.
        d.begin();
        assert_eq!(d.since(), Some(ts("2024-01-01T00:00:01Z")));
        assert_eq!(d.admit(a), None);
        assert_eq!(d.admit(b), None);
        assert_eq!(d.admit(b), None);
        assert_eq!(d.admit(b), Some(3));
        assert_eq!(d.admit(c), Some(1));
        // Within a response, past the resume point, every line is new, even one stamped
        // earlier (a clock stepping back): it is forwarded, not lost.
        assert_eq!(d.admit(a), Some(1));
        assert_eq!(d.admit(a), Some(2));

        // From a checkpoint: same rules.
        let mut d = Dedup::new(Some(Cursor {
            ts: b,
            n: 2,
            instance: 0,
        }));
        d.begin();
        assert_eq!(d.admit(a), None);
        assert_eq!(d.admit(b), None);
        assert_eq!(d.admit(b), None);
        assert_eq!(d.admit(b), Some(3));
    }

    #[test]
    fn a_resume_that_does_not_repeat_the_last_line_is_a_gap() {
        let a = ts("2024-01-01T00:00:01.5Z");
        let b = ts("2024-01-01T00:00:01.7Z");
        let c = ts("2024-01-01T00:00:09Z");
        let at_b = Some(Cursor {
            ts: b,
            n: 2,
            instance: 0,
        });
        // The log still has the line: no gap.
        let mut d = Dedup::new(at_b);
        d.begin_resume();
        assert_eq!(d.admit(a), None);
        assert_eq!(d.admit(b), None);
        assert_eq!(d.admit(b), None);
        assert!(!d.would_gap(c));
        assert_eq!(d.admit(c), Some(1));
        assert_eq!(d.take_gap(), None);
        // Rotated: the first line read is past the last forwarded one.
        let mut d = Dedup::new(at_b);
        d.begin_resume();
        assert!(!d.would_gap(b), "the last line itself");
        assert!(d.would_gap(c), "known before the line is admitted");
        assert_eq!(d.admit(c), Some(1));
        assert_eq!(d.take_gap(), Some((b, c)));
        assert_eq!(d.take_gap(), None, "reported once");
        // Only part of the lines at that timestamp are left.
        let mut d = Dedup::new(at_b);
        d.begin_resume();
        assert_eq!(d.admit(b), None);
        assert!(d.would_gap(c));
        assert_eq!(d.admit(c), Some(1));
        assert_eq!(d.take_gap(), Some((b, c)));
        // Another log (a new container instance) is not expected to repeat it.
        let mut d = Dedup::new(at_b);
        d.begin();
        assert!(!d.would_gap(c));
        assert_eq!(d.admit(c), Some(1));
        assert_eq!(d.take_gap(), None);
        // From the start there is nothing to repeat.
        let mut d = Dedup::new(None);
        d.begin_resume();
        assert_eq!(d.admit(a), Some(1));
        assert_eq!(d.take_gap(), None);
    }

    #[test]
    fn checkpoint_is_the_least_delivered() {
        let t1 = ts("2024-01-01T00:00:01Z");
        let t2 = ts("2024-01-01T00:00:02Z");
        let c = |t, n| Cursor {
            ts: t,
            n,
            instance: 0,
        };
        let p = Progress::new(2, None);
        assert_eq!(p.checkpoint(), None);
        p.ack(0, c(t1, 1));
        assert_eq!(p.checkpoint(), None);
        p.ack(1, c(t2, 1));
        assert_eq!(p.checkpoint(), Some(c(t1, 1)));
        p.ack(0, c(t2, 2));
        assert_eq!(p.checkpoint(), Some(c(t2, 1)));
        // Unknown sinks are ignored.
        p.ack(7, c(t2, 9));
        assert_eq!(p.checkpoint(), Some(c(t2, 1)));

        // Drained once each sink delivered what was handed to it.
        let p = Progress::new(2, None);
        assert!(p.drained());
        p.pushed(0);
        p.pushed(1);
        assert!(!p.drained());
        p.ack(0, c(t1, 1));
        assert!(!p.drained());
        p.ack(1, c(t1, 1));
        assert!(p.drained());
    }
}
