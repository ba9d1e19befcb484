//! Sharded replicas (`replicas.mode: sharded`): every replica follows a share of the pods.
//!
//! Everything is kept in Kubernetes objects of the state namespace:
//! - **Membership**: each replica holds a *member slot*, a Lease `<leaseName>-member-<n>`
//!   labelled `eirinix.org/logs-members=<leaseName>`, held and renewed with the core
//!   [`LeaseLock`] (a lost renewal stops the replica's work before the Lease can expire). Members
//!   are found by listing those Leases; a member is live while its Lease has a holder and was
//!   seen to change within its duration (observed on this replica's monotonic clock, as core
//!   elections judge). Slots are reused: a replica takes a released slot, or the next number.
//! - **Ownership**: a pod belongs to one live slot, by rendezvous hashing of its UID over the live
//!   slots (the *view*); a member coming or going moves only the pods it gains or loses.
//! - **Hand-over**: a member that sees a new view stops following the pods it no longer owns,
//!   waits until its sinks delivered everything it read from them, writes its checkpoints and
//!   then publishes "released for this view" in its status ConfigMap
//!   `<checkpointName>-member-<n>`. A member starts following the pods it gains only once every
//!   member of the view published that: the old owner has stopped and stored its exact
//!   position, so nothing is read twice (a dead member's share resumes from its last checkpoint).
//! - **Checkpoints**: each member writes the positions of its pods into its own ConfigMaps
//!   `<checkpointName>-member-<n>-<page>` (as many pages as its share needs). Positions of pods
//!   it handed over (or found in its slot from an earlier holder) are kept there until their new
//!   owner has written them into its own pages.
//! - **From leader mode**: while the Lease of leader mode (`<leaseName>`) is held by a live
//!   leader, members follow nothing; once it is released or expired they take over from the
//!   leader's checkpoints, which the lowest member empties once every member has its share.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use eirinix_core::leader::LeaseLock;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointStore, FIELD_MANAGER, MANAGED_BY, merge_entries, uid_of};
use crate::cursor::Cursor;
use crate::ownership::{Ownership, View};
use crate::term::{Shared, Term, Watchers, end_term, existing_uids, load_checkpoints, save};

/// Label on member slot Leases: the `leaseName` of the replicas.
pub(crate) const MEMBERS_LABEL: &str = "eirinix.org/logs-members";
/// Label on member checkpoint and status ConfigMaps: the `checkpointName` of the replicas.
pub(crate) const CHECKPOINT_LABEL: &str = "eirinix.org/logs-checkpoint";
/// Label on member ConfigMaps: the slot number.
pub(crate) const SLOT_LABEL: &str = "eirinix.org/logs-slot";
/// Label on member ConfigMaps: `page` (positions) or `status`.
const KIND_LABEL: &str = "eirinix.org/logs-kind";

/// Names and labels of one set of sharded replicas.
#[derive(Clone)]
struct Names {
    lease: String,
    checkpoint: String,
}

impl Names {
    fn slot_lease(&self, slot: u32) -> String {
        format!("{}-member-{slot}", self.lease)
    }

    fn slot_of_lease(&self, name: &str) -> Option<u32> {
        let n = name.strip_prefix(&self.lease)?.strip_prefix("-member-")?;
        if n.is_empty()
            || !n.bytes().all(|b| b.is_ascii_digit())
            || (n.len() > 1 && n.starts_with('0'))
        {
            return None;
        }
        n.parse().ok()
    }

    fn status(&self, slot: u32) -> String {
        format!("{}-member-{slot}", self.checkpoint)
    }

    fn labels(&self, slot: u32, kind: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
            (CHECKPOINT_LABEL.to_owned(), self.checkpoint.clone()),
            (SLOT_LABEL.to_owned(), slot.to_string()),
            (KIND_LABEL.to_owned(), kind.to_owned()),
        ])
    }

    fn selector(&self, kind: &str) -> String {
        format!("{CHECKPOINT_LABEL}={},{KIND_LABEL}={kind}", self.checkpoint)
    }
}

/// A Lease record as far as liveness goes, and when this replica first saw it so.
struct Seen {
    record: (String, Option<String>),
    at: Instant,
}

/// One member slot as observed now.
struct Slot {
    slot: u32,
    holder: String,
    /// Held, and seen to change within its duration.
    live: bool,
    /// How long past its duration it has been seen unchanged (held, not live).
    expired_for: Duration,
    lease: Lease,
}

/// Watches the member slot Leases (and the Lease of leader mode) by listing them.
struct Members {
    api: Api<Lease>,
    names: Names,
    seen: HashMap<String, Seen>,
}

impl Members {
    fn new(client: kube::Client, namespace: &str, names: Names) -> Self {
        Members {
            api: Api::namespaced(client, namespace),
            names,
            seen: HashMap::new(),
        }
    }

    /// Note `lease` as seen now; `(holder, live, expired for)`.
    fn judge(&mut self, lease: &Lease) -> (String, bool, Duration) {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.unwrap_or_default();
        let record = (holder.clone(), lease.metadata.resource_version.clone());
        let now = Instant::now();
        let seen = self.seen.entry(name).or_insert(Seen {
            record: record.clone(),
            at: now,
        });
        if seen.record != record {
            *seen = Seen { record, at: now };
        }
        let unchanged = now.saturating_duration_since(seen.at);
        let validity = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(1).max(1)).unwrap_or(1),
        );
        let live = !holder.is_empty() && unchanged < validity;
        let expired_for = if holder.is_empty() {
            Duration::ZERO
        } else {
            unchanged.saturating_sub(validity)
        };
        (holder, live, expired_for)
    }

    /// Every member slot Lease, judged.
    async fn observe(&mut self) -> Result<Vec<Slot>, kube::Error> {
        let lp = ListParams::default().labels(&format!("{MEMBERS_LABEL}={}", self.names.lease));
        let list = self.api.list(&lp).await?;
        let mut slots = Vec::new();
        for lease in list.items {
            let Some(slot) = lease
                .metadata
                .name
                .as_deref()
                .and_then(|n| self.names.slot_of_lease(n))
            else {
                continue;
            };
            let (holder, live, expired_for) = self.judge(&lease);
            slots.push(Slot {
                slot,
                holder,
                live,
                expired_for,
                lease,
            });
        }
        slots.sort_by_key(|s| s.slot);
        Ok(slots)
    }

    /// Whether a live leader of leader mode holds `<leaseName>` (members then follow nothing).
    async fn leader_mode_live(&mut self) -> Result<bool, kube::Error> {
        match self.api.get_opt(&self.names.lease).await? {
            Some(lease) => Ok(self.judge(&lease).1),
            None => Ok(false),
        }
    }

    /// Make the Lease of `slot` exist (labelled, no holder) so that a [`LeaseLock`] can take it.
    async fn create_slot(&self, slot: u32) -> Result<(), kube::Error> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.names.slot_lease(slot)),
                labels: Some(BTreeMap::from([(
                    MEMBERS_LABEL.to_owned(),
                    self.names.lease.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Release the Lease of a member seen dead (so that a new replica reuses its slot), unless
    /// it changed since it was listed.
    async fn release_dead(&self, slot: &Slot) -> Result<(), kube::Error> {
        let mut lease = slot.lease.clone();
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        spec.holder_identity = None;
        let name = self.names.slot_lease(slot.slot);
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What a member publishes in its status ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Status {
    identity: String,
    /// The view it released others' pods for (encoded), empty before the first.
    released: String,
    /// The view whose pods it took over (encoded), empty before the first.
    adopted: String,
}

impl Status {
    fn data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("identity".to_owned(), self.identity.clone()),
            ("released".to_owned(), self.released.clone()),
            ("adopted".to_owned(), self.adopted.clone()),
        ])
    }

    fn of(data: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| data.get(k).cloned().unwrap_or_default();
        Status {
            identity: get("identity"),
            released: get("released"),
            adopted: get("adopted"),
        }
    }
}

/// The member ConfigMaps (status and checkpoint pages) of the replicas.
struct Store {
    api: Api<ConfigMap>,
    names: Names,
}

impl Store {
    async fn write_status(&self, slot: u32, status: &Status) -> Result<(), kube::Error> {
        let name = self.names.status(slot);
        let value = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": self.names.labels(slot, "status")},
            "data": status.data(),
        });
        self.api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await?;
        Ok(())
    }

    /// Every ConfigMap of `kind`, by slot (listed in pages of `limit`), folded by `f`.
    async fn each(
        &self,
        kind: &str,
        limit: u32,
        mut f: impl FnMut(u32, BTreeMap<String, String>),
    ) -> Result<(), kube::Error> {
        let mut lp = ListParams::default()
            .labels(&self.names.selector(kind))
            .limit(limit);
        loop {
            let list = self.api.list(&lp).await?;
            for cm in list.items {
                let slot = cm
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SLOT_LABEL))
                    .and_then(|s| s.parse().ok());
                if let Some(slot) = slot {
                    f(slot, cm.data.unwrap_or_default());
                }
            }
            match list.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => return Ok(()),
            }
        }
    }

    async fn statuses(&self) -> Result<HashMap<u32, Status>, kube::Error> {
        let mut out = HashMap::new();
        self.each("status", 500, |slot, data| {
            out.insert(slot, Status::of(&data));
        })
        .await?;
        Ok(out)
    }

    /// Every member's positions, by slot.
    async fn pages(&self) -> Result<HashMap<u32, HashMap<String, Cursor>>, kube::Error> {
        let mut out: HashMap<u32, HashMap<String, Cursor>> = HashMap::new();
        self.each("page", 16, |slot, data| {
            merge_entries(out.entry(slot).or_default(), &data);
        })
        .await?;
        Ok(out)
    }
}

/// How often members look at the membership: 8 times per lease duration, 0.1 to 1 s.
fn tick(lease: Duration) -> Duration {
    (lease / 8).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Run as a member of the sharded replicas until `cancel` fires.
pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let r = &shared.options.replicas;
    let identity = r
        .identity
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(LeaseLock::default_identity);
    let names = Names {
        lease: r.lease_name.clone(),
        checkpoint: r.checkpoint_name.clone(),
    };
    let lease = Duration::from_secs(r.lease_duration_secs);
    let ns = shared.scope.state_namespace.clone();
    let mut members = Members::new(shared.client.clone(), &ns, names.clone());
    loop {
        let Some((slot, lock)) = acquire_slot(&mut members, &shared, &identity, &cancel).await
        else {
            return;
        };
        tracing::info!(slot, %identity, "joined the logs replicas");
        shared
            .metrics
            .member_slot
            .store(i64::from(slot), Ordering::Relaxed);
        let (tx, mut rx) = watch::channel(false);
        let held = cancel.child_token();
        let work = {
            let (shared, names, identity, outer) = (
                shared.clone(),
                names.clone(),
                identity.clone(),
                cancel.clone(),
            );
            move |token: CancellationToken| {
                member_term(
                    shared.clone(),
                    names.clone(),
                    identity.clone(),
                    slot,
                    token,
                    outer.clone(),
                )
            }
        };
        let hold = lock.run_while_leader(held.clone(), Some(tx), work);
        tokio::pin!(hold);
        // A slot lost and taken by another replica is given up: find another.
        let mut lost_since: Option<Instant> = Some(Instant::now());
        loop {
            tokio::select! {
                _ = &mut hold => break,
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(lease / 2) => {}
            }
            if *rx.borrow() {
                lost_since = None;
            } else if lost_since.get_or_insert_with(Instant::now).elapsed() > lease * 2 {
                tracing::warn!(
                    slot,
                    "member slot held by another replica; looking for another"
                );
                held.cancel();
            }
        }
        shared.metrics.member_slot.store(-1, Ordering::Relaxed);
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// Take a member slot: one this identity held before, a released one, or a new number.
async fn acquire_slot(
    members: &mut Members,
    shared: &Shared,
    identity: &str,
    cancel: &CancellationToken,
) -> Option<(u32, LeaseLock)> {
    let r = &shared.options.replicas;
    let lease = Duration::from_secs(r.lease_duration_secs);
    loop {
        match members.observe().await {
            Ok(slots) => {
                let used: HashSet<u32> = slots.iter().map(|s| s.slot).collect();
                let mut candidates: Vec<u32> = slots
                    .iter()
                    .filter(|s| s.holder == identity)
                    .chain(slots.iter().filter(|s| s.holder.is_empty()))
                    .map(|s| s.slot)
                    .collect();
                candidates.extend((0..).find(|n| !used.contains(n)));
                for slot in candidates {
                    if !used.contains(&slot)
                        && let Err(e) = members.create_slot(slot).await
                    {
                        tracing::warn!(slot, error = %e, "creating a member slot Lease failed");
                        continue;
                    }
                    let lock = LeaseLock::new(
                        shared.client.clone(),
                        &shared.scope.state_namespace,
                        &members.names.slot_lease(slot),
                        identity,
                    )
                    .lease_duration(lease);
                    match lock.try_acquire_or_renew().await {
                        Ok(true) => return Some((slot, lock)),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(slot, error = %e, "taking a member slot failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing the member slot Leases failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(tick(lease)) => {}
            _ = cancel.cancelled() => return None,
        }
    }
}

/// One term of a member holding `slot`: follow its share of the pods, hand pods over when the
/// view changes, checkpoint.
async fn member_term(
    shared: Arc<Shared>,
    names: Names,
    identity: String,
    slot: u32,
    token: CancellationToken,
    shutdown: CancellationToken,
) {
    let metrics = shared.metrics.clone();
    let r = &shared.options.replicas;
    let lease = Duration::from_secs(r.lease_duration_secs);
    let ns = shared.scope.state_namespace.clone();
    let mut pages = CheckpointStore::new(shared.client.clone(), &ns, &names.status(slot), 1)
        .with_labels(names.labels(slot, "page"))
        .with_page_keys(r.checkpoint_page_keys);
    metrics.leader.store(1, Ordering::Relaxed);
    // What this slot holds from before (a restart, an earlier holder): kept until the pods'
    // owners have it.
    let Some(held) = load_checkpoints(&mut pages, &token).await else {
        metrics.leader.store(0, Ordering::Relaxed);
        return;
    };
    let term = Term::new(
        shared.clone(),
        HashMap::new(),
        Ownership::Member {
            slot,
            released: None,
            adopted: None,
        },
        token.child_token(),
    );
    term.set_foreign(held);
    let store = Store {
        api: Api::namespaced(shared.client.clone(), &ns),
        names: names.clone(),
    };
    let mut status = Status {
        identity,
        ..Status::default()
    };
    if let Err(e) = store.write_status(slot, &status).await {
        tracing::debug!(error = %e, "writing the member status failed");
    }
    let watchers = Watchers::start(&shared, &term, &token);
    let mut members = Members::new(shared.client.clone(), &ns, names.clone());
    let interval = Duration::from_millis(r.checkpoint_interval_ms);
    let mut next_checkpoint = Instant::now() + interval;
    let mut released: Option<View> = None;
    let mut adopted: Option<View> = None;
    let mut changed_at = Instant::now();
    let mut next_settle = Instant::now();
    let mut leader_checkpoints_emptied = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick(lease)) => {}
            _ = token.cancelled() => break,
        }
        if Instant::now() >= next_checkpoint {
            save(&mut pages, &term, &metrics).await;
            next_checkpoint = Instant::now() + interval;
        }
        let slots = match members.observe().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "listing members failed");
                continue;
            }
        };
        let target = match members.leader_mode_live().await {
            Ok(true) => None,
            Ok(false) => {
                let mut live: Vec<u32> = slots.iter().filter(|s| s.live).map(|s| s.slot).collect();
                live.push(slot);
                Some(View::new(live))
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the leader-mode Lease failed");
                continue;
            }
        };

        // A new view: stop following what is no longer ours, store where it stopped, say so.
        if target != released {
            if adopted == released {
                changed_at = Instant::now();
            }
            let handing = term.set_ownership(
                Ownership::Member {
                    slot,
                    released: target.clone(),
                    adopted: adopted.clone(),
                },
                false,
            );
            if !term.hand_over(handing, &token).await {
                break;
            }
            if !save(&mut pages, &term, &metrics).await {
                continue;
            }
            status.released = target.as_ref().map(View::encode).unwrap_or_default();
            if let Err(e) = store.write_status(slot, &status).await {
                tracing::warn!(error = %e, "publishing the member status failed");
                continue;
            }
            tracing::info!(
                slot,
                view = %status.released,
                "released the pods of other members; waiting for every member to do the same"
            );
            released = target;
            metrics.foreign_positions.store(
                i64::try_from(term.foreign_len()).unwrap_or(i64::MAX),
                Ordering::Relaxed,
            );
        }

        // Every member of the view released for it: take over this member's share.
        if let Some(view) = released.clone()
            && adopted.as_ref() != Some(&view)
        {
            match take_over(&shared, &store, &term, slot, &view).await {
                Ok(true) => {
                    adopted = Some(view.clone());
                    term.set_ownership(
                        Ownership::Member {
                            slot,
                            released: released.clone(),
                            adopted: adopted.clone(),
                        },
                        true,
                    );
                    save(&mut pages, &term, &metrics).await;
                    status.adopted = view.encode();
                    if let Err(e) = store.write_status(slot, &status).await {
                        tracing::debug!(error = %e, "publishing the member status failed");
                    }
                    let took = changed_at.elapsed();
                    metrics.rebalances.fetch_add(1, Ordering::Relaxed);
                    metrics.last_rebalance_ms.store(
                        i64::try_from(took.as_millis()).unwrap_or(i64::MAX),
                        Ordering::Relaxed,
                    );
                    metrics
                        .members
                        .store(view.slots().len() as i64, Ordering::Relaxed);
                    metrics
                        .owned_pods
                        .store(term.followed_pods() as i64, Ordering::Relaxed);
                    tracing::info!(
                        slot,
                        view = %status.adopted,
                        after_ms = took.as_millis() as u64,
                        "following this member's share"
                    );
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "taking over failed; retrying"),
            }
        }

        let settled = adopted.is_some() && adopted == released;
        if settled && Instant::now() >= next_settle {
            next_settle = Instant::now() + lease / 4;
            metrics
                .owned_pods
                .store(term.followed_pods() as i64, Ordering::Relaxed);
            if let Some(view) = &adopted {
                if term.foreign_len() > 0
                    && let Err(e) = settle_foreign(&store, &term, slot, view).await
                {
                    tracing::debug!(error = %e, "checking handed-over positions failed");
                }
                metrics.foreign_positions.store(
                    i64::try_from(term.foreign_len()).unwrap_or(i64::MAX),
                    Ordering::Relaxed,
                );
                // The lowest member tidies up: slots of dead members (out of the view it took
                // over) are released, so that members that start now do not count them live
                // for a lease duration, and can reuse them; leader mode's checkpoints are
                // emptied once every member has its share.
                if view.slots().first() == Some(&slot) {
                    for s in slots.iter().filter(|s| {
                        s.expired_for > Duration::ZERO && !view.slots().contains(&s.slot)
                    }) {
                        if let Err(e) = members.release_dead(s).await {
                            tracing::debug!(error = %e, "releasing a dead member's slot failed");
                        }
                    }
                    if !leader_checkpoints_emptied {
                        leader_checkpoints_emptied =
                            empty_leader_checkpoints(&shared, &store, view).await;
                    }
                }
            }
        }
    }
    end_term(&shared, &term, watchers, &mut pages, &shutdown).await;
    metrics.leader.store(0, Ordering::Relaxed);
    metrics.members.store(0, Ordering::Relaxed);
    metrics.owned_pods.store(0, Ordering::Relaxed);
}

/// If every member of `view` released for it: load the positions of this member's share
/// (every member's pages and leader mode's checkpoints) and return true.
async fn take_over(
    shared: &Shared,
    store: &Store,
    term: &Term,
    slot: u32,
    view: &View,
) -> Result<bool, crate::LogsError> {
    let statuses = store.statuses().await?;
    let encoded = view.encode();
    let ready = view
        .slots()
        .iter()
        .all(|s| statuses.get(s).is_some_and(|st| st.released == encoded));
    if !ready {
        return Ok(false);
    }
    let mut positions: HashMap<String, Cursor> = HashMap::new();
    for (_, entries) in store.pages().await? {
        for (k, c) in entries {
            let e = positions.entry(k).or_insert(c);
            *e = (*e).max(c);
        }
    }
    let o = &shared.options.replicas;
    let mut leader = leader_store(shared, o);
    for (k, c) in leader.load().await? {
        let e = positions.entry(k).or_insert(c);
        *e = (*e).max(c);
    }
    positions.retain(|k, _| view.owner(uid_of(k)) == Some(slot));
    if let Some(uids) = existing_uids(shared).await {
        positions.retain(|k, _| uids.contains(uid_of(k)));
        term.retain_foreign(|k| uids.contains(uid_of(k)));
    }
    term.adopt(positions);
    Ok(true)
}

/// The checkpoint store of leader mode.
fn leader_store(shared: &Shared, o: &crate::options::ReplicaOptions) -> CheckpointStore {
    CheckpointStore::new(
        shared.client.clone(),
        &shared.scope.state_namespace,
        &o.checkpoint_name,
        o.checkpoint_shards,
    )
    .with_selector(&format!("!{SLOT_LABEL}"))
}

/// Drop the positions kept for other members that their owner (in `view`) now holds itself:
/// it took over in this view, and its pages have the position or a later one.
async fn settle_foreign(
    store: &Store,
    term: &Term,
    slot: u32,
    view: &View,
) -> Result<(), kube::Error> {
    let statuses = store.statuses().await?;
    let pages = store.pages().await?;
    let encoded = view.encode();
    term.retain_foreign_cursors(|k, c| {
        let Some(owner) = view.owner(uid_of(k)).filter(|o| *o != slot) else {
            return true;
        };
        let holds = statuses.get(&owner).is_some_and(|s| s.adopted == encoded)
            && pages
                .get(&owner)
                .and_then(|p| p.get(k))
                .is_some_and(|theirs| *theirs >= *c);
        !holds
    });
    Ok(())
}

/// Empty leader mode's checkpoints once every member of `view` took over in it (they all hold
/// their share in their own pages); true when done or nothing was there.
async fn empty_leader_checkpoints(shared: &Shared, store: &Store, view: &View) -> bool {
    let encoded = view.encode();
    match store.statuses().await {
        Ok(st)
            if view
                .slots()
                .iter()
                .all(|s| st.get(s).is_some_and(|x| x.adopted == encoded)) => {}
        _ => return false,
    }
    let mut leader = leader_store(shared, &shared.options.replicas);
    match leader.load().await {
        Ok(found) if found.is_empty() => true,
        Ok(_) => match leader.save(&HashMap::new()).await {
            Ok(_) => {
                tracing::info!("emptied the checkpoints of leader mode (every member took over)");
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "emptying leader mode's checkpoints failed");
                false
            }
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_lease_names() {
        let n = Names {
            lease: "eirinix-logs".into(),
            checkpoint: "eirinix-logs-checkpoint".into(),
        };
        assert_eq!(n.slot_lease(3), "eirinix-logs-member-3");
        assert_eq!(n.slot_of_lease("eirinix-logs-member-3"), Some(3));
        assert_eq!(n.slot_of_lease("eirinix-logs-member-03"), None);
        assert_eq!(n.slot_of_lease("eirinix-logs"), None);
        assert_eq!(n.slot_of_lease("eirinix-logs-member-"), None);
        assert_eq!(n.status(2), "eirinix-logs-checkpoint-member-2");
    }
}
