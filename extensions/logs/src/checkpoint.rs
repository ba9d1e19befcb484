//! Checkpoints: the position every sink has delivered, per container, kept in ConfigMaps so that
//! a new leader resumes where the old one stopped.
//!
//! Keys are `<pod uid>.<container>` for the merged log and `<pod uid>.<container>.stdout` /
//! `.stderr` for the streams read apart (a recreated pod with the same name starts afresh),
//! values [`Cursor::encode`]. Entries are spread over `shards` ConfigMaps `<prefix>-<n>`, written with
//! server-side apply (only shards that changed), by the leader only.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::cursor::Cursor;
use crate::error::LogsError;

/// Field manager of checkpoint writes.
pub const FIELD_MANAGER: &str = "eirinix-logs";

/// The checkpoint key of `container` in the pod with `uid`.
pub fn key(uid: &str, container: &str) -> String {
    format!("{uid}.{container}")
}

/// The checkpoint key of one output of `container` (`None`: the merged log, [`key`]):
/// `<pod uid>.<container>.stdout` or `.stderr`.
pub fn stream_key(uid: &str, container: &str, stream: Option<crate::record::Stream>) -> String {
    match stream {
        None => key(uid, container),
        Some(crate::record::Stream::Stdout) => format!("{uid}.{container}.stdout"),
        Some(crate::record::Stream::Stderr) => format!("{uid}.{container}.stderr"),
    }
}

/// The pod uid part of a checkpoint key.
pub fn uid_of(key: &str) -> &str {
    key.split_once('.').map_or(key, |(uid, _)| uid)
}

pub(crate) fn shard_of(key: &str, shards: u32) -> usize {
    // FNV-1a: stable across processes and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % u64::from(shards.max(1))).unwrap_or(0)
}

/// Label on every checkpoint ConfigMap.
pub(crate) const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Reads and writes checkpoint ConfigMaps.
pub struct CheckpointStore {
    api: Api<ConfigMap>,
    prefix: String,
    shards: u32,
    /// Labels written on every shard; the first is also what shards are listed by (with the
    /// managed-by label).
    labels: BTreeMap<String, String>,
    /// Extra selector terms when listing (e.g. `!label` to leave other stores' ConfigMaps out).
    selector_extra: Option<String>,
    /// With a positive value, the shard count follows the number of entries (a power of two, at
    /// most this many entries per shard on average).
    page_keys: usize,
    /// What each existing shard ConfigMap holds, as last loaded or written (any shard number,
    /// also beyond the current count: those are emptied by the next save).
    written: BTreeMap<usize, BTreeMap<String, String>>,
}

impl CheckpointStore {
    /// Checkpoints in `namespace`, in ConfigMaps `<prefix>-0` .. `<prefix>-<shards-1>`.
    pub fn new(client: kube::Client, namespace: &str, prefix: &str, shards: u32) -> Self {
        CheckpointStore {
            api: Api::namespaced(client, namespace),
            prefix: prefix.to_owned(),
            shards: shards.max(1),
            labels: BTreeMap::from([(MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned())]),
            selector_extra: None,
            page_keys: 0,
            written: BTreeMap::new(),
        }
    }

    /// Also write `labels` on every shard and list shards by them (sharded replicas: one store
    /// per member slot).
    pub(crate) fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels.extend(labels);
        self
    }

    /// Add `term` to the label selector shards are listed with.
    pub(crate) fn with_selector(mut self, term: &str) -> Self {
        self.selector_extra = Some(term.to_owned());
        self
    }

    /// Let the shard count grow and shrink with the entries: about `keys` entries per shard.
    pub(crate) fn with_page_keys(mut self, keys: usize) -> Self {
        self.page_keys = keys;
        self
    }

    fn name(&self, shard: usize) -> String {
        format!("{}-{shard}", self.prefix)
    }

    fn selector(&self) -> String {
        let mut terms: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        terms.extend(self.selector_extra.clone());
        terms.join(",")
    }

    /// The shard number of ConfigMap `name`, if it is one of this prefix.
    fn shard_of_name(&self, name: &str) -> Option<usize> {
        let n = name.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        if n.is_empty()
            || !n.bytes().all(|b| b.is_ascii_digit())
            || (n.len() > 1 && n.starts_with('0'))
        {
            return None;
        }
        n.parse().ok()
    }

    /// The shard ConfigMaps of this prefix that exist, with their data. Listed by label (any
    /// shard count); without the `list` permission, the current shards and the ones right
    /// after them are read one by one until one is missing.
    async fn stored_shards(&self) -> Result<Vec<(usize, BTreeMap<String, String>)>, LogsError> {
        let lp = ListParams::default().labels(&self.selector());
        match self.api.list(&lp).await {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .filter_map(|cm| {
                    let shard = self.shard_of_name(cm.metadata.name.as_deref()?)?;
                    Some((shard, cm.data.unwrap_or_default()))
                })
                .collect()),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                tracing::warn!(
                    "listing checkpoint ConfigMaps is forbidden; reading them one by one \
                     (grant `list` on configmaps so that shards beyond a gap are found too)"
                );
                let mut found = Vec::new();
                let mut shard = 0;
                loop {
                    match self.api.get_opt(&self.name(shard)).await? {
                        Some(cm) => found.push((shard, cm.data.unwrap_or_default())),
                        None if shard >= self.shards as usize => break,
                        None => {}
                    }
                    shard += 1;
                }
                Ok(found)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored cursor, from every shard ConfigMap of the prefix whatever shard count wrote
    /// it; a key found in several shards keeps its latest position (a re-sharding interrupted
    /// by a crash). Entries that do not decode are skipped with a warning.
    pub async fn load(&mut self) -> Result<HashMap<String, Cursor>, LogsError> {
        let mut all: HashMap<String, Cursor> = HashMap::new();
        self.written.clear();
        for (shard, data) in self.stored_shards().await? {
            merge_entries(&mut all, &data);
            self.written.insert(shard, data);
        }
        let beyond: Vec<usize> = self
            .written
            .iter()
            .filter(|(s, d)| **s >= self.shards as usize && !d.is_empty())
            .map(|(s, _)| *s)
            .collect();
        if !beyond.is_empty() && self.page_keys == 0 {
            tracing::info!(
                shards = self.shards,
                ?beyond,
                "checkpoints found in shards beyond checkpointShards (lowered): their entries \
                 are moved into the current shards"
            );
        }
        if self.page_keys > 0 {
            self.fit(all.len());
        }
        Ok(all)
    }

    /// Choose the shard count for `keys` entries (with `page_keys`): the smallest power of two
    /// with at most `page_keys` entries per shard, lowered only below a quarter of that (no
    /// re-layout back and forth around a boundary).
    fn fit(&mut self, keys: usize) {
        let want = keys
            .div_ceil(self.page_keys.max(1))
            .max(1)
            .next_power_of_two();
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        if want > self.shards || want.saturating_mul(4) <= self.shards {
            self.shards = want;
        }
    }

    /// Write `cursors` (the complete set): shards whose content changed since the last write,
    /// and empty the shards beyond the current count that still hold entries.
    pub async fn save(&mut self, cursors: &HashMap<String, Cursor>) -> Result<usize, LogsError> {
        if self.page_keys > 0 {
            self.fit(cursors.len());
        }
        let mut shards: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); self.shards as usize];
        for (k, c) in cursors {
            shards[shard_of(k, self.shards)].insert(k.clone(), c.encode());
        }
        let mut writes = 0;
        for (i, data) in shards.into_iter().enumerate() {
            match self.written.get(&i) {
                Some(old) if *old == data => continue,
                // Never created and nothing to hold: leave it uncreated.
                None if data.is_empty() => continue,
                _ => {}
            }
            self.apply(i, data).await?;
            writes += 1;
        }
        // The current layout holds everything now: empty the shards beyond it (emptied, not
        // deleted: the extension may create, patch and list ConfigMaps, not delete them).
        let beyond: Vec<usize> = self
            .written
            .iter()
            .filter(|(s, d)| **s >= self.shards as usize && !d.is_empty())
            .map(|(s, _)| *s)
            .collect();
        for shard in beyond {
            self.apply(shard, BTreeMap::new()).await?;
            writes += 1;
        }
        Ok(writes)
    }

    /// Write shard `i` with `data` (server-side apply).
    async fn apply(&mut self, i: usize, data: BTreeMap<String, String>) -> Result<(), LogsError> {
        let name = self.name(i);
        let value = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": self.labels},
            "data": data,
        });
        self.api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await?;
        self.written.insert(i, data);
        Ok(())
    }
}

/// Add the decodable entries of `data` to `all`, keeping the later position of a key found twice.
pub(crate) fn merge_entries(all: &mut HashMap<String, Cursor>, data: &BTreeMap<String, String>) {
    for (k, v) in data {
        match Cursor::decode(v) {
            Some(c) => {
                let e = all.entry(k.clone()).or_insert(c);
                *e = (*e).max(c);
            }
            None => {
                tracing::warn!(key = %k, value = %v, "ignoring an invalid checkpoint entry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_shards() {
        let k = key("0b7c-11", "opi");
        assert_eq!(k, "0b7c-11.opi");
        assert_eq!(uid_of(&k), "0b7c-11");
        assert_eq!(shard_of(&k, 1), 0);
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|i| shard_of(&key(&i.to_string(), "c"), 4))
            .collect();
        assert_eq!(spread.len(), 4);
        assert_eq!(shard_of(&k, 4), shard_of(&k, 4));
        assert_eq!(
            stream_key("u", "opi", Some(crate::record::Stream::Stderr)),
            "u.opi.stderr"
        );
        assert_eq!(uid_of("u.opi.stdout"), "u");
    }

    #[tokio::test]
    async fn shard_names_of_the_prefix_only() {
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let store = CheckpointStore::new(client, "ns", "eirinix-logs-checkpoint", 4);
        assert_eq!(store.shard_of_name("eirinix-logs-checkpoint-0"), Some(0));
        assert_eq!(store.shard_of_name("eirinix-logs-checkpoint-12"), Some(12));
        for other in [
            "eirinix-logs-checkpoint",
            "eirinix-logs-checkpoint-",
            "eirinix-logs-checkpoint-01",
            "eirinix-logs-checkpoint-x",
            "eirinix-logs-checkpoint-1-2",
            "other-0",
        ] {
            assert_eq!(store.shard_of_name(other), None, "{other}");
        }
    }
}
