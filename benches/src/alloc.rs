//! A counting global allocator: live and peak heap bytes, for memory-per-operation numbers.

use std::alloc::{GlobalAlloc, Layout};

/// The allocator the eirinix binary uses, so benchmarks measure the same thing.
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

/// Wraps the allocator and counts bytes (only while enabled: counting contends).
pub struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Start or stop counting (throughput runs keep it off).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the inner allocator.
        let p = unsafe { INNER.alloc(layout) };
        if !p.is_null() && ENABLED.load(Ordering::Relaxed) {
            grow(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the inner allocator.
        let p = unsafe { INNER.alloc_zeroed(layout) };
        if !p.is_null() && ENABLED.load(Ordering::Relaxed) {
            grow(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the inner allocator.
        unsafe { INNER.dealloc(ptr, layout) };
        if ENABLED.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }

    /// Forwarded to mimalloc's own `realloc` (which may grow in place, as in the `eirinix`
    /// binary), counted as the change in size. Without this override `GlobalAlloc`'s default
    /// ran instead: alloc + copy + dealloc, i.e. not the allocator path the binary runs. When
    /// mimalloc has to move the block, old and new exist together for the copy; that transient
    /// is not in the peak.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the inner allocator.
        let p = unsafe { INNER.realloc(ptr, layout, new_size) };
        if !p.is_null() && ENABLED.load(Ordering::Relaxed) {
            grow(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Count `delta` bytes more (or fewer) live, updating the peak.
fn grow(delta: isize) {
    let live = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(live.max(0) as usize, Ordering::Relaxed);
}

/// Heap bytes in use now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed).max(0) as usize
}

/// Reset the peak to the current live bytes; returns the live bytes.
pub fn reset_peak() -> usize {
    let live = live();
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// Peak heap bytes since the last reset.
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// The process's resident set size and its high-water mark, in KiB (from /proc/self/status).
pub fn rss_kib() -> (u64, u64) {
    rss_kib_of("self")
}

/// `(VmRSS, VmHWM)` in KiB of process `pid` (a number, or "self").
pub fn rss_kib_of(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU seconds of process `pid` (a number, or "self").
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
