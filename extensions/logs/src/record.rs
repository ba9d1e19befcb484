//! The record forwarded for each log line, and where it comes from (app identity of the pod).

use std::sync::Arc;

use bytes::Bytes;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::cursor::{Cursor, Progress};

/// Label with the app guid of Eirini pods.
pub const APP_GUID_LABEL: &str = "cloudfoundry.org/app_guid";
/// Label with the process (LRP) guid; fallback when the app guid is missing.
pub const GUID_LABEL: &str = "cloudfoundry.org/guid";
/// Label with the process type (`web`, `worker`, ...).
pub const PROCESS_TYPE_LABEL: &str = "cloudfoundry.org/process_type";
/// Label with the source type: `APP` or `STG`.
pub const SOURCE_TYPE_LABEL: &str = eirinix_core::options::SOURCE_TYPE_LABEL;

/// The identity of one followed container, shared by all its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Source id: the app guid (`cloudfoundry.org/app_guid`, else `guid`, else the pod name).
    pub source_id: String,
    /// Instance index: the numeric suffix of the pod name (APP), 0 for staging, else none.
    pub instance: Option<u32>,
    /// Process type (`web` when the label is missing).
    pub process_type: String,
    /// `APP/PROC/<PROCESS TYPE>` for app instances, `STG` for staging, else the label value.
    pub source_type: String,
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
}

impl Origin {
    /// The origin of `container` in `pod`, from the pod's labels and name.
    pub fn from_pod(pod: &Pod, container: &str) -> Self {
        let labels = pod.metadata.labels.as_ref();
        let label = |k: &str| {
            labels
                .and_then(|l| l.get(k))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let process_type = label(PROCESS_TYPE_LABEL).unwrap_or_else(|| "web".into());
        let raw_source = label(SOURCE_TYPE_LABEL).unwrap_or_else(|| "APP".into());
        let (source_type, instance) = match raw_source.as_str() {
            "APP" => (
                format!("APP/PROC/{}", process_type.to_uppercase()),
                instance_index(&name),
            ),
            "STG" => ("STG".to_owned(), Some(0)),
            other => (other.to_owned(), instance_index(&name)),
        };
        Origin {
            source_id: label(APP_GUID_LABEL)
                .or_else(|| label(GUID_LABEL))
                .unwrap_or_else(|| name.clone()),
            instance,
            process_type,
            source_type,
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod: name,
            container: container.to_owned(),
        }
    }

    /// The instance index as text (empty when unknown), as Loggregator's `instance_id`.
    pub fn instance_id(&self) -> String {
        self.instance.map(|i| i.to_string()).unwrap_or_default()
    }
}

/// The numeric suffix of a StatefulSet pod name (`app-3` -> 3).
pub fn instance_index(pod_name: &str) -> Option<u32> {
    let (_, suffix) = pod_name.rsplit_once('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// Which output stream a line was written to: known when the follower reads one stream
/// (`pods/log?stream=`); records read from the merged log carry `None` (unknown, not stdout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One log line (or one piece of an over-long line), ready for the sinks.
#[derive(Clone, Debug)]
pub struct Record {
    /// Where it comes from.
    pub origin: Arc<Origin>,
    /// The line's own timestamp, as written by the container runtime (not the read time).
    pub timestamp: Timestamp,
    /// The line without its newline and timestamp prefix; any bytes, not necessarily UTF-8.
    pub message: Bytes,
    /// Output stream, when known (read apart with `pods/log?stream=`).
    pub stream: Option<Stream>,
    /// True when the line was longer than the limit and continues in the next record.
    pub partial: bool,
    pub(crate) ack: Option<(Arc<Progress>, Cursor)>,
}

/// Fixed cost charged per buffered record, on top of its message bytes.
pub const RECORD_OVERHEAD: usize = 128;

impl Record {
    /// A record for `message` at `timestamp` (tests and custom producers).
    pub fn new(origin: Arc<Origin>, timestamp: Timestamp, message: impl Into<Bytes>) -> Self {
        Record {
            origin,
            timestamp,
            message: message.into(),
            stream: None,
            partial: false,
            ack: None,
        }
    }

    /// Bytes charged against a sink buffer for this record.
    pub fn cost(&self) -> usize {
        self.message.len() + RECORD_OVERHEAD
    }

    /// Report that sink number `sink` delivered this record (advances the checkpoint).
    pub(crate) fn delivered(&self, sink: usize) {
        if let Some((progress, cursor)) = &self.ack {
            progress.ack(sink, *cursor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        );
        p
    }

    #[test]
    fn app_and_staging_origins() {
        let p = pod(
            "dora-space-3f2a-12",
            &[
                (APP_GUID_LABEL, "6f1c"),
                (GUID_LABEL, "lrp"),
                (PROCESS_TYPE_LABEL, "worker"),
                (SOURCE_TYPE_LABEL, "APP"),
            ],
        );
        let o = Origin::from_pod(&p, "opi");
        assert_eq!(o.source_id, "6f1c");
        assert_eq!(o.instance, Some(12));
        assert_eq!(o.source_type, "APP/PROC/WORKER");
        assert_eq!(o.process_type, "worker");
        assert_eq!(
            (o.namespace.as_str(), o.pod.as_str(), o.container.as_str()),
            ("ns", "dora-space-3f2a-12", "opi")
        );

        let s = pod(
            "dora-staging-x1",
            &[(GUID_LABEL, "g"), (SOURCE_TYPE_LABEL, "STG")],
        );
        let o = Origin::from_pod(&s, "opi-task-executor");
        assert_eq!(o.source_type, "STG");
        assert_eq!(o.source_id, "g");
        assert_eq!(o.instance, Some(0));

        let bare = pod("plain", &[]);
        let o = Origin::from_pod(&bare, "c");
        assert_eq!(o.source_id, "plain");
        assert_eq!(o.source_type, "APP/PROC/WEB");
        assert_eq!(o.instance, None);
        assert_eq!(o.instance_id(), "");
    }

    #[test]
    fn instance_indexes() {
        assert_eq!(instance_index("a-b-0"), Some(0));
        assert_eq!(instance_index("a-17"), Some(17));
        assert_eq!(instance_index("a-1x"), None);
        assert_eq!(instance_index("a-"), None);
        assert_eq!(instance_index("nodash"), None);
        assert_eq!(instance_index("a-99999999999"), None);
    }
}
