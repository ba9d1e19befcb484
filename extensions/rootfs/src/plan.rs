//! The planner: pure functions from StatefulSets and a desired version to a plan.
//!
//! Nothing here talks to the cluster, so every safety rule (opt-out, at most N in flight,
//! timeouts) is unit-tested in isolation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;

use crate::options::{
    Desired, ROLL_STARTED_ANNOTATION, ROLL_VERSION_ANNOTATION, ROOTFS_LABEL, RootfsOptions,
};

/// Namespace and name of a StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// The key of `sts`.
    pub fn of(sts: &StatefulSet) -> Self {
        Self {
            namespace: sts.metadata.namespace.clone().unwrap_or_default(),
            name: sts.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One container image to rewrite in a pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageChange {
    /// Whether the container is an init container.
    pub init: bool,
    /// Index in its container list.
    pub index: usize,
    /// Container name (checked by the patch, so a reordered list is never mis-patched).
    pub container: String,
    /// The image now (checked by the patch: a concurrent image change wins).
    pub from: String,
    /// The image after the roll.
    pub to: String,
}

/// What rolling one StatefulSet changes in its pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The template's rootfs label now.
    pub from_version: Option<String>,
    /// The version rolled to.
    pub to_version: String,
    /// Images rewritten.
    pub images: Vec<ImageChange>,
}

/// What the plan does with one StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Template at the desired version; nothing to do.
    UpToDate,
    /// Carries the opt-out annotation.
    OptedOut,
    /// Rolled by us and not finished yet: occupies a slot.
    Rolling {
        /// Version it is rolling to.
        version: String,
        /// When the roll started (`None` when only known from a recent patch).
        started: Option<Timestamp>,
    },
    /// Rolled by us, not finished within the roll timeout: slot freed, recorded as a failure.
    TimedOut {
        /// Version it was rolled to.
        version: String,
        /// When the roll started.
        started: Option<Timestamp>,
    },
    /// Patch now.
    Roll(Change),
    /// Needs a roll, waits for a free slot.
    Wait(Change),
    /// Needs a roll, but patching it failed; retried when it changes or the hold expires.
    Failed {
        /// Why.
        error: String,
    },
}

/// Why the executor holds a StatefulSet back from planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Patched moments ago with an unknown outcome: counted as rolling.
    Unsettled,
    /// The last patch failed with this error.
    Failed(String),
    /// The last patch met a concurrent change: wait (no slot) until the new state is seen.
    Retry,
}

impl Action {
    fn tag(&self) -> &'static str {
        match self {
            Action::UpToDate => "OK",
            Action::OptedOut => "SKIP",
            Action::Rolling { .. } => "ROLLING",
            Action::TimedOut { .. } => "TIMEOUT",
            Action::Roll(_) => "ROLL",
            Action::Wait(_) => "WAIT",
            Action::Failed { .. } => "FAILED",
        }
    }
}

/// The plan for one StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Which StatefulSet.
    pub key: Key,
    /// Its rootfs version now (pod template label).
    pub current_version: Option<String>,
    /// What to do.
    pub action: Action,
}

/// Limits the planner applies.
#[derive(Clone, Debug)]
pub struct Limits {
    /// StatefulSets rolling at once, at most.
    pub max_in_flight: usize,
    /// Rolls older than this no longer occupy a slot.
    pub roll_timeout: Duration,
    /// Opt-out annotation.
    pub opt_out_annotation: String,
}

impl From<&RootfsOptions> for Limits {
    fn from(o: &RootfsOptions) -> Self {
        Self {
            max_in_flight: o.max_in_flight.max(1),
            roll_timeout: o.roll_timeout,
            opt_out_annotation: o.opt_out_annotation.clone(),
        }
    }
}

/// A plan: every app StatefulSet with its action, sorted by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The target.
    pub desired: Desired,
    /// The slot limit the plan respects.
    pub max_in_flight: usize,
    /// One entry per StatefulSet.
    pub entries: Vec<Entry>,
}

impl Plan {
    /// Entries whose action matches `f`.
    fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
        self.entries.iter().filter(|e| f(&e.action)).count()
    }

    /// Entries to patch now.
    pub fn to_roll(&self) -> impl Iterator<Item = (&Key, &Change)> {
        self.entries.iter().filter_map(|e| match &e.action {
            Action::Roll(c) => Some((&e.key, c)),
            _ => None,
        })
    }

    /// StatefulSets rolling (slots taken).
    pub fn in_flight(&self) -> usize {
        self.count(|a| matches!(a, Action::Rolling { .. }))
    }

    /// StatefulSets that need a roll (now or later).
    pub fn pending(&self) -> usize {
        self.count(|a| matches!(a, Action::Roll(_) | Action::Wait(_)))
    }

    /// StatefulSets whose roll timed out.
    pub fn timed_out(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.action, Action::TimedOut { .. }))
    }

    /// StatefulSets whose last patch failed.
    pub fn failed(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.action, Action::Failed { .. }))
    }

    /// Opted-out StatefulSets.
    pub fn opted_out(&self) -> usize {
        self.count(|a| matches!(a, Action::OptedOut))
    }

    /// Nothing left to roll and nothing rolling (timed-out and opted-out ones aside).
    pub fn is_settled(&self) -> bool {
        self.pending() == 0 && self.in_flight() == 0
    }

    /// Apps per rootfs version of their pod template (`""` for none).
    pub fn versions(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            *out.entry(e.current_version.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
        out
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rootfs plan: version {}", self.desired.version)?;
        if let Some(p) = &self.desired.pattern {
            write!(f, " (images matching {p})")?;
        }
        writeln!(
            f,
            "; {} apps, {} rolling (max {}), {} to roll now, {} waiting, {} opted out, {} timed out",
            self.entries.len(),
            self.in_flight(),
            self.max_in_flight,
            self.to_roll().count(),
            self.count(|a| matches!(a, Action::Wait(_))),
            self.opted_out(),
            self.timed_out().count()
        )?;
        for e in &self.entries {
            let current = e.current_version.as_deref().unwrap_or("-");
            write!(
                f,
                "  {:<8} {:<40} {current}",
                e.action.tag(),
                e.key.to_string()
            )?;
            match &e.action {
                Action::Roll(c) | Action::Wait(c) => {
                    write!(f, " -> {}", c.to_version)?;
                    for i in &c.images {
                        write!(f, "; {}: {} -> {}", i.container, i.from, i.to)?;
                    }
                }
                Action::Rolling { version, started } | Action::TimedOut { version, started } => {
                    write!(f, " -> {version}")?;
                    if let Some(s) = started {
                        write!(f, " since {s}")?;
                    }
                }
                Action::Failed { error } => write!(f, " ({error})")?,
                Action::UpToDate | Action::OptedOut => {}
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The rootfs label of `sts`'s pod template.
pub fn template_version(sts: &StatefulSet) -> Option<&str> {
    eirinix_core::compat::statefulset_spec(sts)?
        .template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(ROOTFS_LABEL)
        .map(String::as_str)
}

/// Whether the StatefulSet controller reports the current template fully rolled out and ready.
pub fn rollout_complete(sts: &StatefulSet) -> bool {
    let Some(status) = &sts.status else {
        return false;
    };
    match (sts.metadata.generation, status.observed_generation) {
        (Some(g), Some(o)) if o < g => return false,
        (Some(_), None) => return false,
        _ => {}
    }
    let replicas = eirinix_core::compat::statefulset_spec(sts)
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    if replicas == 0 {
        return true;
    }
    status.updated_replicas.unwrap_or(0) >= replicas
        && status.ready_replicas.unwrap_or(0) >= replicas
        && (status.update_revision.is_none() || status.current_revision == status.update_revision)
}

/// What rolling `sts` to `desired` would change; `None` when it is already there.
pub fn change_for(sts: &StatefulSet, desired: &Desired) -> Option<Change> {
    let from_version = template_version(sts).map(str::to_owned);
    let mut images = Vec::new();
    if let (Some(pattern), Some(spec)) = (
        &desired.pattern,
        eirinix_core::compat::statefulset_spec(sts).and_then(|s| s.template.spec.as_ref()),
    ) {
        let lists: [(bool, &[Container]); 2] = [
            (true, spec.init_containers.as_deref().unwrap_or_default()),
            (false, spec.containers.as_slice()),
        ];
        for (init, list) in lists {
            for (index, c) in list.iter().enumerate() {
                let Some(from) = c.image.as_deref() else {
                    continue;
                };
                if let Some(to) = pattern.rewrite(from, &desired.version) {
                    images.push(ImageChange {
                        init,
                        index,
                        container: c.name.clone(),
                        from: from.to_owned(),
                        to,
                    });
                }
            }
        }
    }
    if from_version.as_deref() == Some(desired.version.as_str()) && images.is_empty() {
        return None;
    }
    Some(Change {
        from_version,
        to_version: desired.version.clone(),
        images,
    })
}

fn annotation<'a>(sts: &'a StatefulSet, key: &str) -> Option<&'a str> {
    sts.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Plan the next step for `sets`.
///
/// `holds` are StatefulSets the executor holds back: patched with an unknown outcome (rolling)
/// or whose patch failed. `now` decides timeouts. The result is deterministic: sorted by namespace and name,
/// and the first candidates in that order get the free slots.
pub fn plan<'a>(
    sets: impl IntoIterator<Item = &'a StatefulSet>,
    desired: &Desired,
    limits: &Limits,
    now: Timestamp,
    holds: &HashMap<Key, Hold>,
) -> Plan {
    let mut entries: Vec<Entry> = Vec::new();
    for sts in sets {
        if sts.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let key = Key::of(sts);
        let current_version = template_version(sts).map(str::to_owned);
        let change = change_for(sts, desired);
        let started_raw = annotation(sts, ROLL_STARTED_ANNOTATION);
        let started = started_raw.and_then(|s| s.parse::<Timestamp>().ok());
        let rolled_version = annotation(sts, ROLL_VERSION_ANNOTATION)
            .unwrap_or(desired.version.as_str())
            .to_owned();
        let ours_unfinished = started_raw.is_some() && !rollout_complete(sts);
        let expired = started.is_none_or(|s| {
            now.duration_since(s)
                .try_into()
                .is_ok_and(|d: Duration| d > limits.roll_timeout)
        });
        let hold = holds.get(&key);
        let action = if hold == Some(&Hold::Unsettled) {
            Action::Rolling {
                version: desired.version.clone(),
                started: None,
            }
        } else if ours_unfinished && !expired {
            // Rolling, even when opted out since or aimed at an older version: it takes a slot
            // until the StatefulSet controller is done.
            Action::Rolling {
                version: rolled_version,
                started,
            }
        } else {
            let opted_out = limits_opted_out(limits, sts);
            match change {
                _ if opted_out => Action::OptedOut,
                None if ours_unfinished => Action::TimedOut {
                    version: rolled_version,
                    started,
                },
                None => Action::UpToDate,
                Some(_) if matches!(hold, Some(Hold::Failed(_))) => Action::Failed {
                    error: match hold {
                        Some(Hold::Failed(e)) => e.clone(),
                        _ => String::new(),
                    },
                },
                Some(c) => Action::Wait(c),
            }
        };
        entries.push(Entry {
            key,
            current_version,
            action,
        });
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let rolling = entries
        .iter()
        .filter(|e| matches!(e.action, Action::Rolling { .. }))
        .count();
    let mut free = limits.max_in_flight.saturating_sub(rolling);
    for e in &mut entries {
        if free == 0 {
            break;
        }
        if holds.get(&e.key) == Some(&Hold::Retry) {
            continue;
        }
        if let Action::Wait(c) = &e.action {
            e.action = Action::Roll(c.clone());
            free -= 1;
        }
    }
    Plan {
        desired: desired.clone(),
        max_in_flight: limits.max_in_flight,
        entries,
    }
}

fn limits_opted_out(limits: &Limits, sts: &StatefulSet) -> bool {
    sts.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&limits.opt_out_annotation))
        .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::ImagePattern;
    use serde_json::json;

    /// An Eirini-shaped app StatefulSet at `version` with a rootfs image tagged `version`.
    pub(crate) fn sts(name: &str, version: &str) -> StatefulSet {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": "apps", "generation": 1,
                "labels": {"cloudfoundry.org/source_type": "APP"},
                "annotations": {"cloudfoundry.org/process_guid": name}},
            "spec": {
                "replicas": 2,
                "serviceName": name,
                "selector": {"matchLabels": {"cloudfoundry.org/guid": name}},
                "template": {
                    "metadata": {"labels": {"cloudfoundry.org/guid": name, "cloudfoundry.org/source_type": "APP", ROOTFS_LABEL: version}},
                    "spec": {
                        "initContainers": [{"name": "downloader", "image": "reg/downloader:7"}],
                        "containers": [
                            {"name": "opi", "image": format!("reg/cf/cflinuxfs4:{version}")},
                            {"name": "sidecar", "image": "reg/sidecar:1"}
                        ]
                    }
                }
            },
            "status": {"replicas": 2, "observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 2,
                       "currentRevision": "r1", "updateRevision": "r1"}
        }))
        .unwrap()
    }

    pub(crate) fn desired(v: &str) -> Desired {
        Desired {
            version: v.into(),
            pattern: Some(ImagePattern::new("reg/cf/cflinuxfs*").unwrap()),
        }
    }

    pub(crate) fn limits(n: usize) -> Limits {
        Limits {
            max_in_flight: n,
            roll_timeout: Duration::from_secs(600),
            opt_out_annotation: crate::options::DEFAULT_OPT_OUT_ANNOTATION.into(),
        }
    }

    fn now() -> Timestamp {
        "2026-11-01T12:00:00Z".parse().unwrap()
    }

    /// `s` as rolled by us at `started` (generation bumped, status not caught up).
    fn rolling(mut s: StatefulSet, version: &str, started: &str) -> StatefulSet {
        let ann = s.metadata.annotations.get_or_insert_default();
        ann.insert(ROLL_STARTED_ANNOTATION.into(), started.into());
        ann.insert(ROLL_VERSION_ANNOTATION.into(), version.into());
        s.metadata.generation = Some(2);
        s.spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(ROOTFS_LABEL.into(), version.into());
        s.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some(format!("reg/cf/cflinuxfs4:{version}"));
        s
    }

    fn actions(p: &Plan) -> Vec<(&str, &'static str)> {
        p.entries
            .iter()
            .map(|e| (e.key.name.as_str(), e.action.tag()))
            .collect()
    }

    #[test]
    fn old_versions_roll_at_most_n_at_once_in_name_order() {
        let sets: Vec<_> = ["c", "a", "d", "b"].iter().map(|n| sts(n, "1.0")).collect();
        let p = plan(&sets, &desired("2.0"), &limits(2), now(), &HashMap::new());
        assert_eq!(
            actions(&p),
            [("a", "ROLL"), ("b", "ROLL"), ("c", "WAIT"), ("d", "WAIT")]
        );
        let (_, c) = p.to_roll().next().unwrap();
        assert_eq!(c.from_version.as_deref(), Some("1.0"));
        assert_eq!(
            c.images,
            [ImageChange {
                init: false,
                index: 0,
                container: "opi".into(),
                from: "reg/cf/cflinuxfs4:1.0".into(),
                to: "reg/cf/cflinuxfs4:2.0".into(),
            }],
            "only the image matching the pattern changes"
        );
        assert_eq!(p.versions(), BTreeMap::from([("1.0".into(), 4)]));
        assert!(!p.is_settled());
    }

    #[test]
    fn rolling_sets_take_slots_until_their_rollout_completes() {
        let mut sets = vec![
            rolling(sts("a", "1.0"), "2.0", "2026-11-01T11:59:00Z"),
            sts("b", "1.0"),
            sts("c", "1.0"),
        ];
        let p = plan(&sets, &desired("2.0"), &limits(2), now(), &HashMap::new());
        assert_eq!(
            actions(&p),
            [("a", "ROLLING"), ("b", "ROLL"), ("c", "WAIT")]
        );
        assert_eq!(p.in_flight(), 1);
        // The controller catches up: a is done, and its slot goes to the next.
        let st = sets[0].status.as_mut().unwrap();
        st.observed_generation = Some(2);
        let p = plan(&sets, &desired("2.0"), &limits(2), now(), &HashMap::new());
        assert_eq!(actions(&p), [("a", "OK"), ("b", "ROLL"), ("c", "ROLL")]);
        // Not ready yet: still rolling.
        sets[0].status.as_mut().unwrap().ready_replicas = Some(1);
        let p = plan(&sets, &desired("2.0"), &limits(2), now(), &HashMap::new());
        assert_eq!(p.entries[0].action.tag(), "ROLLING");
        sets[0].status.as_mut().unwrap().ready_replicas = Some(2);
        sets[0].status.as_mut().unwrap().update_revision = Some("r2".into());
        let p = plan(&sets, &desired("2.0"), &limits(2), now(), &HashMap::new());
        assert_eq!(
            p.entries[0].action.tag(),
            "ROLLING",
            "revisions differ: pods not all replaced"
        );
    }

    #[test]
    fn timed_out_rolls_free_their_slot() {
        let sets = vec![
            rolling(sts("a", "1.0"), "2.0", "2026-11-01T11:00:00Z"),
            sts("b", "1.0"),
        ];
        let p = plan(&sets, &desired("2.0"), &limits(1), now(), &HashMap::new());
        assert_eq!(actions(&p), [("a", "TIMEOUT"), ("b", "ROLL")]);
        assert_eq!(p.timed_out().count(), 1);
        // A timed-out roll to an older version is a candidate for the new one.
        let p = plan(&sets, &desired("3.0"), &limits(1), now(), &HashMap::new());
        assert_eq!(actions(&p), [("a", "ROLL"), ("b", "WAIT")]);
        // An unparsable start time counts as expired, never as a slot held forever.
        let sets = vec![rolling(sts("a", "1.0"), "2.0", "yesterday")];
        let p = plan(&sets, &desired("2.0"), &limits(1), now(), &HashMap::new());
        assert_eq!(actions(&p), [("a", "TIMEOUT")]);
    }

    #[test]
    fn opt_out_and_up_to_date_are_skipped() {
        let mut out = sts("a", "1.0");
        out.metadata.annotations.get_or_insert_default().insert(
            crate::options::DEFAULT_OPT_OUT_ANNOTATION.into(),
            "true".into(),
        );
        let sets = vec![out, sts("b", "2.0"), sts("c", "1.0")];
        let p = plan(&sets, &desired("2.0"), &limits(5), now(), &HashMap::new());
        assert_eq!(actions(&p), [("a", "SKIP"), ("b", "OK"), ("c", "ROLL")]);
        assert_eq!(p.opted_out(), 1);
    }

    #[test]
    fn label_only_when_no_pattern_and_image_only_drift_is_detected() {
        let d = Desired {
            version: "2.0".into(),
            pattern: None,
        };
        let p = plan(&[sts("a", "1.0")], &d, &limits(1), now(), &HashMap::new());
        let (_, c) = p.to_roll().next().unwrap();
        assert!(c.images.is_empty());
        // Label right, image wrong (someone edited the image): still rolled.
        let mut s = sts("a", "2.0");
        s.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("reg/cf/cflinuxfs4:1.0".into());
        let p = plan(&[s], &desired("2.0"), &limits(1), now(), &HashMap::new());
        let (_, c) = p.to_roll().next().unwrap();
        assert_eq!(c.from_version.as_deref(), Some("2.0"));
        assert_eq!(c.images.len(), 1);
    }

    #[test]
    fn held_sets_are_rolling_or_failed() {
        let sets = vec![sts("a", "1.0"), sts("b", "1.0")];
        let key = |n: &str| Key {
            namespace: "apps".into(),
            name: n.into(),
        };
        let holds = HashMap::from([(key("a"), Hold::Unsettled)]);
        let p = plan(&sets, &desired("2.0"), &limits(1), now(), &holds);
        assert_eq!(actions(&p), [("a", "ROLLING"), ("b", "WAIT")]);
        // A failed patch gives its slot to the next one and shows in the plan.
        let holds = HashMap::from([(key("a"), Hold::Failed("forbidden".into()))]);
        let p = plan(&sets, &desired("2.0"), &limits(1), now(), &holds);
        assert_eq!(actions(&p), [("a", "FAILED"), ("b", "ROLL")]);
        assert_eq!(p.failed().count(), 1);
        assert!(p.to_string().contains("(forbidden)"));
        // A conflicted one waits for its new state without taking a slot.
        let holds = HashMap::from([(key("a"), Hold::Retry)]);
        let p = plan(&sets, &desired("2.0"), &limits(1), now(), &holds);
        assert_eq!(actions(&p), [("a", "WAIT"), ("b", "ROLL")]);
    }

    #[test]
    fn rollout_completion_rules() {
        let mut s = sts("a", "1.0");
        assert!(rollout_complete(&s));
        s.spec.as_mut().unwrap().replicas = Some(0);
        s.status.as_mut().unwrap().updated_replicas = Some(0);
        assert!(rollout_complete(&s));
        s.metadata.generation = Some(2);
        assert!(!rollout_complete(&s));
        s.status = None;
        assert!(!rollout_complete(&s));
    }

    #[test]
    fn display_lists_every_entry() {
        let sets = vec![sts("a", "1.0"), sts("b", "2.0")];
        let text = plan(&sets, &desired("2.0"), &limits(1), now(), &HashMap::new()).to_string();
        assert!(text.starts_with("rootfs plan: version 2.0 (images matching reg/cf/cflinuxfs*)"));
        assert!(text.contains("ROLL     apps/a"), "{text}");
        assert!(text.contains("opi: reg/cf/cflinuxfs4:1.0 -> reg/cf/cflinuxfs4:2.0"));
        assert!(text.contains("OK       apps/b"), "{text}");
    }

    #[test]
    fn planning_ten_thousand_sets_is_fast() {
        let sets: Vec<_> = (0..10_000)
            .map(|i| {
                sts(
                    &format!("app-{i:05}"),
                    if i % 3 == 0 { "2.0" } else { "1.0" },
                )
            })
            .collect();
        let started = std::time::Instant::now();
        let p = plan(&sets, &desired("2.0"), &limits(10), now(), &HashMap::new());
        let took = started.elapsed();
        eprintln!("planned 10000 StatefulSets in {took:?}");
        assert_eq!(p.to_roll().count(), 10);
        assert_eq!(p.pending(), 6_666);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
