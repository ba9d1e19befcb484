//! Rate limiting of password attempts per source address (each attempt may cost the apiserver a
//! TokenReview): token buckets per IPv4 address or IPv6 /64.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use crate::limits::Limits;

/// Token buckets of password attempts per source (IPv4 address, IPv6 /64).
#[derive(Debug)]
pub(super) struct SourceRate {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Sources tracked at most; full buckets are forgotten first.
const MAX_SOURCES: usize = 100_000;

impl SourceRate {
    /// Buckets of `limits.per_source_burst` attempts, refilled at `limits.per_source_per_minute`.
    pub(super) fn new(limits: &Limits) -> Self {
        Self {
            burst: f64::from(limits.per_source_burst.max(1)),
            per_second: f64::from(limits.per_source_per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn key(peer: SocketAddr) -> IpAddr {
        match peer.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut octets = v6.octets();
                    octets[8..].fill(0);
                    IpAddr::V6(octets.into())
                }
            },
            v4 => v4,
        }
    }

    /// Take one attempt for `peer`; `false` when its bucket is empty.
    pub(super) fn try_take(&self, peer: SocketAddr) -> bool {
        self.try_take_at(peer, Instant::now())
    }

    fn try_take_at(&self, peer: SocketAddr, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let level = |(tokens, at): (f64, Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_second)
                .min(self.burst)
        };
        if buckets.len() >= MAX_SOURCES {
            buckets.retain(|_, b| level(*b) < self.burst);
        }
        let key = Self::key(peer);
        let tokens = match buckets.get(&key) {
            Some(b) => level(*b),
            None if buckets.len() >= MAX_SOURCES => return false,
            None => self.burst,
        };
        if tokens < 1.0 {
            buckets.insert(key, (tokens, now));
            return false;
        }
        buckets.insert(key, (tokens - 1.0, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let rate = SourceRate::new(&Limits {
            per_source_burst: 3,
            per_source_per_minute: 60,
            ..Limits::default()
        });
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let now = Instant::now();
        assert!((0..3).all(|_| rate.try_take_at(a, now)));
        assert!(!rate.try_take_at(a, now), "burst spent");
        assert!(
            rate.try_take_at(b, now),
            "another source has its own bucket"
        );
        // One attempt per second comes back.
        let later = now + Duration::from_millis(1100);
        assert!(rate.try_take_at(a, later));
        assert!(!rate.try_take_at(a, later));
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let one: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let two: SocketAddr = "[2001:db8::ffff:2]:1".parse().unwrap();
        assert_eq!(SourceRate::key(one), SourceRate::key(two));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert_eq!(
            SourceRate::key(mapped),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
