//! Checkpoints: the position every sink has delivered, per container, kept in ConfigMaps so that
//! a new leader resumes where the old one stopped.
//!
//! Keys are `<pod uid>.<container>` for the merged log and `<pod uid>.<container>.stdout` /
//! `.stderr` for the streams read apart (a recreated pod with the same name starts afresh),
//! values [`Cursor::encode`]. Entries are spread over `shards` ConfigMaps `<prefix>-<n>`, written with
//! server-side apply (only shards that changed), by the leader only.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

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

/// Reads and writes checkpoint ConfigMaps.
pub struct CheckpointStore {
    api: Api<ConfigMap>,
    prefix: String,
    shards: u32,
    written: Vec<Option<BTreeMap<String, String>>>,
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
        }
    }

    fn name(&self, shard: usize) -> String {
        format!("{}-{shard}", self.prefix)
    }

    /// Every stored cursor (entries that do not decode are skipped with a warning).
    pub async fn load(&mut self) -> Result<HashMap<String, Cursor>, LogsError> {
        let mut all = HashMap::new();
        for shard in 0..self.shards as usize {
            let cm = self.api.get_opt(&self.name(shard)).await?;
            let data = cm.and_then(|c| c.data).unwrap_or_default();
            for (k, v) in &data {
                match Cursor::decode(v) {
                    Some(c) => {
                        all.insert(k.clone(), c);
                    }
                    None => {
                        tracing::warn!(key = %k, value = %v, "ignoring an invalid checkpoint entry")
                    }
                }
            }
            self.written[shard] = Some(data);
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
            let name = self.name(i);
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
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
            self.written[i] = Some(data);
            writes += 1;
        }
        Ok(writes)
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
    }
}
