//! Checkpoints: the position every sink has delivered, per container, kept in ConfigMaps so that
//! a new leader resumes where the old one stopped.
//!
//! Keys are `<pod uid>.<container>` for the merged log and `<pod uid>.<container>.stdout` /
//! `.stderr` for the streams read apart (a recreated pod with the same name starts afresh),
//! values [`Cursor::encode`]. Entries are spread over `shards` ConfigMaps `<prefix>-<n>`, written with
//! server-side apply (only shards that changed), by the leader only.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};

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

fn shard_of(key: &str, shards: u32) -> usize {
    // FNV-1a: stable across processes and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % u64::from(shards.max(1))).unwrap_or(0)
}

/// Label on every checkpoint ConfigMap.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Reads and writes checkpoint ConfigMaps.
pub struct CheckpointStore {
    api: Api<ConfigMap>,
    prefix: String,
    shards: u32,
    written: Vec<Option<BTreeMap<String, String>>>,
    /// Shards beyond the current count that held entries when loaded (a lowered shard count):
    /// emptied once the current layout is written.
    beyond: Vec<usize>,
}

impl CheckpointStore {
    /// Checkpoints in `namespace`, in ConfigMaps `<prefix>-0` .. `<prefix>-<shards-1>`.
    pub fn new(client: kube::Client, namespace: &str, prefix: &str, shards: u32) -> Self {
        let shards = shards.max(1);
        CheckpointStore {
            api: Api::namespaced(client, namespace),
            prefix: prefix.to_owned(),
            shards,
            written: vec![None; shards as usize],
            beyond: Vec::new(),
        }
    }

    fn name(&self, shard: usize) -> String {
        format!("{}-{shard}", self.prefix)
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
        let lp = ListParams::default().labels(&format!("{MANAGED_BY}={FIELD_MANAGER}"));
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
        self.written = vec![Some(BTreeMap::new()); self.shards as usize];
        self.beyond.clear();
        for (shard, data) in self.stored_shards().await? {
            for (k, v) in &data {
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
            match self.written.get_mut(shard) {
                Some(slot) => *slot = Some(data),
                None if !data.is_empty() => self.beyond.push(shard),
                None => {}
            }
        }
        if !self.beyond.is_empty() {
            self.beyond.sort_unstable();
            tracing::info!(
                shards = self.shards,
                beyond = ?self.beyond,
                "checkpoints found in shards beyond checkpointShards (lowered): their entries \
                 are moved into the current shards"
            );
        }
        Ok(all)
    }

    /// Write `cursors` (the complete set): shards whose content changed since the last write.
    pub async fn save(&mut self, cursors: &HashMap<String, Cursor>) -> Result<usize, LogsError> {
        let mut shards: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); self.shards as usize];
        for (k, c) in cursors {
            shards[shard_of(k, self.shards)].insert(k.clone(), c.encode());
        }
        let mut writes = 0;
        for (i, data) in shards.into_iter().enumerate() {
            if self.written[i].as_ref() == Some(&data) {
                continue;
            }
            self.apply(i, data).await?;
            writes += 1;
        }
        // The current layout holds everything now: empty the shards beyond it (emptied, not
        // deleted: the extension may create, patch and list ConfigMaps, not delete them).
        while let Some(&shard) = self.beyond.first() {
            self.apply(shard, BTreeMap::new()).await?;
            self.beyond.remove(0);
            writes += 1;
        }
        Ok(writes)
    }

    /// Write shard `i` with `data` (server-side apply).
    async fn apply(&mut self, i: usize, data: BTreeMap<String, String>) -> Result<(), LogsError> {
        let name = self.name(i);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.to_owned(),
                    FIELD_MANAGER.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data.clone()),
            ..ConfigMap::default()
        };
        let mut value = serde_json::to_value(&cm).map_err(|e| LogsError::Checkpoint {
            key: name.clone(),
            message: e.to_string(),
        })?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("apiVersion".into(), "v1".into());
            obj.insert("kind".into(), "ConfigMap".into());
        }
        self.api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await?;
        if let Some(slot) = self.written.get_mut(i) {
            *slot = Some(data);
        }
        Ok(())
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
