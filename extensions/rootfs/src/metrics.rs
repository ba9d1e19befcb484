//! Prometheus metrics of the rootfs extension, exposed as a [`Collector`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use eirinix_core::deps::prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use eirinix_core::metrics::Encode as _;

use crate::plan::Plan;

/// Why a roll counts as failed in `eirinix_rootfs_roll_failures_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The rollout did not finish within the roll timeout.
    Timeout,
    /// The patch was rejected or could not be sent.
    Patch,
}

impl FailureReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Patch => "patch",
        }
    }
}

#[derive(Debug, Default)]
struct Gauges {
    desired: Option<String>,
    versions: BTreeMap<String, usize>,
    in_flight: usize,
    waiting: usize,
    opted_out: usize,
    gate_open: Option<bool>,
}

/// Rootfs metrics: desired version, apps per version, rolls in progress, failures (a
/// [`Collector`]: render them with [`eirinix_core::metrics::render`]).
#[derive(Debug, Default)]
pub struct RootfsMetrics {
    gauges: Mutex<Gauges>,
    started: AtomicU64,
    completed: AtomicU64,
    conflicts: AtomicU64,
    timeouts: AtomicU64,
    patch_failures: AtomicU64,
    config_errors: AtomicU64,
    webhook_mutations: AtomicU64,
}

impl RootfsMetrics {
    fn gauges(&self) -> std::sync::MutexGuard<'_, Gauges> {
        // A panic while holding this lock cannot leave the gauges inconsistent: keep going.
        self.gauges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record the desired version (`None`: nothing desired).
    pub fn set_desired(&self, version: Option<&str>) {
        self.gauges().desired = version.map(str::to_owned);
    }

    /// Record the counts of a fresh plan.
    pub fn observe_plan(&self, plan: &Plan) {
        let mut g = self.gauges();
        g.versions = plan.versions();
        g.in_flight = plan.in_flight();
        g.waiting = plan.pending();
        g.opted_out = plan.opted_out();
    }

    /// Record the gate state.
    pub fn set_gate(&self, open: bool) {
        self.gauges().gate_open = Some(open);
    }

    /// Count a roll started.
    pub fn roll_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a roll completed (all replicas updated and ready).
    pub fn roll_completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a patch refused because the StatefulSet changed since it was read.
    pub fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a failed roll.
    pub fn failure(&self, reason: FailureReason) {
        match reason {
            FailureReason::Timeout => &self.timeouts,
            FailureReason::Patch => &self.patch_failures,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Count an unusable ConfigMap value.
    pub fn config_error(&self) {
        self.config_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Count an app pod mutated by the webhook.
    pub fn webhook_mutation(&self) {
        self.webhook_mutations.fetch_add(1, Ordering::Relaxed);
    }

    /// Rolls started so far.
    pub fn rolls_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Failed rolls so far, by reason.
    pub fn failures(&self, reason: FailureReason) -> u64 {
        match reason {
            FailureReason::Timeout => &self.timeouts,
            FailureReason::Patch => &self.patch_failures,
        }
        .load(Ordering::Relaxed)
    }
}

/// Exposes the gauges and counters (Prometheus names `eirinix_rootfs_*`) to a metrics registry.
impl Collector for RootfsMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let g = self.gauges();
        e.gauge_family(
            "eirinix_rootfs_desired_version_info",
            "The desired rootfs version.",
            "version",
            g.desired.as_deref().map(|v| (v, 1)),
        )?;
        e.gauge_family(
            "eirinix_rootfs_apps",
            "App StatefulSets by rootfs version of their pod template.",
            "version",
            g.versions.iter().map(|(v, n)| (v.as_str(), count(*n))),
        )?;
        let gate = match g.gate_open {
            Some(true) => 1,
            Some(false) => 0,
            None => -1,
        };
        for (name, help, value) in [
            (
                "eirinix_rootfs_rolls_in_progress",
                "StatefulSets rolling now.",
                count(g.in_flight),
            ),
            (
                "eirinix_rootfs_rolls_pending",
                "StatefulSets waiting to roll.",
                count(g.waiting),
            ),
            (
                "eirinix_rootfs_opted_out",
                "StatefulSets carrying the opt-out annotation.",
                count(g.opted_out),
            ),
            (
                "eirinix_rootfs_gate_open",
                "Whether the image source is ready (1), not (0), or not checked yet (-1).",
                gate,
            ),
        ] {
            e.gauge(name, help, value)?;
        }
        drop(g);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        e.counter(
            "eirinix_rootfs_rolls_started_total",
            "Rolls started.",
            l(&self.started),
        )?;
        e.counter(
            "eirinix_rootfs_rolls_completed_total",
            "Rolls finished with all replicas updated and ready.",
            l(&self.completed),
        )?;
        e.counter(
            "eirinix_rootfs_patch_conflicts_total",
            "Patches refused because the StatefulSet changed meanwhile (retried).",
            l(&self.conflicts),
        )?;
        e.counter_family(
            "eirinix_rootfs_roll_failures_total",
            "Failed rolls by reason.",
            "reason",
            [
                (FailureReason::Timeout.as_str(), l(&self.timeouts)),
                (FailureReason::Patch.as_str(), l(&self.patch_failures)),
            ],
        )?;
        e.counter(
            "eirinix_rootfs_config_errors_total",
            "Unusable values in the rootfs ConfigMap.",
            l(&self.config_errors),
        )?;
        e.counter(
            "eirinix_rootfs_webhook_mutations_total",
            "App pods given the desired rootfs by the webhook.",
            l(&self.webhook_mutations),
        )
    }
}

/// A count as a gauge value.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{desired, limits, sts};
    use std::collections::HashMap;

    #[test]
    fn renders_gauges_and_counters() {
        let m = RootfsMetrics::default();
        m.set_desired(Some("2.0"));
        let sets = [sts("a", "1.0"), sts("b", "2.0"), sts("c", "1.0")];
        let now = "2026-11-01T12:00:00Z".parse().unwrap();
        m.observe_plan(&crate::plan::plan(
            &sets,
            &desired("2.0"),
            &limits(1),
            now,
            &HashMap::new(),
        ));
        m.roll_started();
        m.failure(FailureReason::Timeout);
        m.set_gate(false);
        let text = eirinix_core::metrics::render(m);
        for line in [
            "eirinix_rootfs_desired_version_info{version=\"2.0\"} 1",
            "eirinix_rootfs_apps{version=\"1.0\"} 2",
            "eirinix_rootfs_apps{version=\"2.0\"} 1",
            "eirinix_rootfs_rolls_pending 2",
            "eirinix_rootfs_rolls_in_progress 0",
            "eirinix_rootfs_rolls_started_total 1",
            "eirinix_rootfs_roll_failures_total{reason=\"timeout\"} 1",
            "eirinix_rootfs_roll_failures_total{reason=\"patch\"} 0",
            "eirinix_rootfs_gate_open 0",
            "# TYPE eirinix_rootfs_roll_failures counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(
            text.matches("# TYPE eirinix_rootfs_roll_failures ").count(),
            1,
            "one family for both reasons:\n{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
