//! Configuration of the logs extension: what to follow, where to send it, and how replicas share
//! the work. Plain data with defaults, deserializable from YAML or JSON (CLI flags, Helm values).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LogsError;

/// The default label selector: Eirini app instances and staging pods.
pub const DEFAULT_SELECTOR: &str = "cloudfoundry.org/source_type in (APP,STG)";

/// Everything the logs extension needs; `LogsOptions::default()` plus at least one sink works.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LogsOptions {
    /// Namespaces whose pods are followed; empty means the manager's namespace (or all namespaces).
    pub namespaces: Vec<String>,
    /// Label selector of the followed pods (default: `cloudfoundry.org/source_type in (APP,STG)`).
    pub label_selector: String,
    /// Where lines go; every line is sent to every sink.
    pub sinks: Vec<SinkOptions>,
    /// Per-sink buffer: most lines held while the aggregator is slow or down (reading waits beyond
    /// half of it: the lines stay in the container logs on the node).
    pub buffer_lines: usize,
    /// Per-sink buffer: most bytes (message bytes plus a fixed overhead per line) held.
    pub buffer_bytes: usize,
    /// Most lines sent in one write (syslog) or one envelope batch (Loggregator).
    pub batch_size: usize,
    /// Longer lines are split into pieces of at most this many bytes, marked as partial.
    pub max_line_bytes: usize,
    /// Follow stdout and stderr apart (`pods/log?stream=`, apiserver and kubelets with the
    /// `PodLogsQuerySplitStreams` feature); an apiserver that refuses it gets the merged log.
    /// Turn off for kubelets older than the apiserver that ignore the parameter.
    pub split_streams: bool,
    /// First reconnect delay of a sink, in milliseconds (doubles up to `reconnectMaxMs`).
    pub reconnect_initial_ms: u64,
    /// Longest reconnect delay of a sink, in milliseconds.
    pub reconnect_max_ms: u64,
    /// How long a deleted pod's open streams may still deliver lines, in milliseconds.
    pub pod_deleted_grace_ms: u64,
    /// On shutdown, how long sinks may take to send what they hold, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Interval of the "sink send failed" warning while a sink fails, in seconds (the name is
    /// kept from when a failing sink dropped lines; it no longer does).
    pub drop_report_interval_secs: u64,
    /// Replica coordination and checkpoints.
    pub replicas: ReplicaOptions,
}

impl Default for LogsOptions {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            label_selector: DEFAULT_SELECTOR.into(),
            sinks: Vec::new(),
            buffer_lines: 100_000,
            buffer_bytes: 32 * 1024 * 1024,
            batch_size: 256,
            max_line_bytes: 16 * 1024,
            split_streams: true,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 10_000,
            pod_deleted_grace_ms: 2_000,
            drain_timeout_ms: 10_000,
            drop_report_interval_secs: 30,
            replicas: ReplicaOptions::default(),
        }
    }
}

impl LogsOptions {
    /// Parse options from YAML (or JSON, which YAML includes).
    pub fn from_yaml(text: &str) -> Result<Self, LogsError> {
        yaml_serde::from_str(text).map_err(|e| LogsError::Config(e.to_string()))
    }

    /// Check values that would make the extension useless or unbounded.
    pub fn validate(&self) -> Result<(), LogsError> {
        let bad = |m: &str| Err(LogsError::Config(m.to_owned()));
        if self.sinks.is_empty() {
            return bad("at least one sink is needed");
        }
        if self.buffer_lines == 0 || self.buffer_bytes == 0 {
            return bad("bufferLines and bufferBytes must be positive");
        }
        if self.batch_size == 0 {
            return bad("batchSize must be positive");
        }
        if self.max_line_bytes < 64 {
            return bad("maxLineBytes must be at least 64");
        }
        if self.reconnect_initial_ms == 0 || self.reconnect_max_ms < self.reconnect_initial_ms {
            return bad("reconnectInitialMs must be positive and at most reconnectMaxMs");
        }
        if self.replicas.checkpoint_shards == 0 {
            return bad("replicas.checkpointShards must be positive");
        }
        if self.replicas.checkpoint_interval_ms == 0 {
            return bad("replicas.checkpointIntervalMs must be positive");
        }
        if self.replicas.lease_duration_secs == 0 {
            return bad("replicas.leaseDurationSecs must be positive");
        }
        if self.replicas.mode == ReplicaMode::Sharded {
            if !self.replicas.leader_election {
                return bad(
                    "replicas.leaderElection: false is for one replica in leader mode; \
                     sharded mode always uses membership Leases",
                );
            }
            if self.replicas.checkpoint_page_keys == 0 {
                return bad("replicas.checkpointPageKeys must be positive");
            }
            // The names are label values in sharded mode (members are listed by them).
            for (what, name) in [
                ("replicas.leaseName", &self.replicas.lease_name),
                ("replicas.checkpointName", &self.replicas.checkpoint_name),
            ] {
                if name.is_empty() || name.len() > 50 {
                    return Err(LogsError::Config(format!(
                        "{what} must have 1 to 50 characters in sharded mode"
                    )));
                }
            }
        }
        for s in &self.sinks {
            s.validate()?;
        }
        Ok(())
    }

    pub(crate) fn reconnect_initial(&self) -> Duration {
        Duration::from_millis(self.reconnect_initial_ms)
    }

    pub(crate) fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }
}

/// One destination of log lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum SinkOptions {
    /// RFC 5424 syslog over TCP (or TLS) with octet-counting framing (RFC 6587); no
    /// acknowledgement: a receiver crash loses what it had not yet stored.
    Syslog(SyslogOptions),
    /// RFC 5424 syslog over RELP (rsyslog's `imrelp`, TCP or TLS): every message acknowledged,
    /// only acknowledged ones count as delivered (at least once across receiver crashes).
    Relp(SyslogOptions),
    /// Cloud Foundry Loggregator v2 ingress (gRPC `BatchSender`) with mutual TLS.
    Loggregator(LoggregatorOptions),
}

impl SinkOptions {
    /// The sink's name, for logs and metrics.
    pub fn name(&self) -> String {
        match self {
            SinkOptions::Syslog(s) => s
                .name
                .clone()
                .unwrap_or_else(|| format!("syslog:{}", s.address)),
            SinkOptions::Relp(s) => s
                .name
                .clone()
                .unwrap_or_else(|| format!("relp:{}", s.address)),
            SinkOptions::Loggregator(l) => l
                .name
                .clone()
                .unwrap_or_else(|| format!("loggregator:{}", l.address)),
        }
    }

    fn validate(&self) -> Result<(), LogsError> {
        let address = match self {
            SinkOptions::Syslog(s) | SinkOptions::Relp(s) => &s.address,
            SinkOptions::Loggregator(l) => &l.address,
        };
        if eirinix_core::names::split_host_port(address).is_none_or(|(host, _)| host.is_empty()) {
            return Err(LogsError::Config(format!(
                "sink address {address:?} is not host:port"
            )));
        }
        if let SinkOptions::Syslog(s) | SinkOptions::Relp(s) = self {
            validate_sd_id(&s.structured_data_id)?;
        }
        Ok(())
    }
}

/// Default SD-ID: `tags@47450`, the element Cloud Foundry's syslog drains use (47450 is the
/// Cloud Foundry Foundation's private enterprise number).
pub const DEFAULT_SD_ID: &str = "tags@47450";

/// Check that `id` is a valid RFC 5424 SD-ID (1 to 32 printable characters, no `= ] "` or space).
pub fn validate_sd_id(id: &str) -> Result<(), LogsError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"'));
    if ok {
        Ok(())
    } else {
        Err(LogsError::Config(format!(
            "invalid structured data id {id:?}"
        )))
    }
}

/// A syslog destination (plain syslog or RELP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct SyslogOptions {
    /// Name for logs and metrics (default `syslog:<address>`).
    pub name: Option<String>,
    /// `host:port` of the receiver.
    pub address: String,
    /// TLS (RFC 5425) when set; plain TCP otherwise.
    pub tls: Option<TlsOptions>,
    /// SD-ID of the structured data element carrying the record fields.
    pub structured_data_id: String,
    /// What to do with lines that are not valid UTF-8.
    pub non_utf8: NonUtf8,
}

impl Default for SyslogOptions {
    fn default() -> Self {
        Self {
            name: None,
            address: String::new(),
            tls: None,
            structured_data_id: DEFAULT_SD_ID.into(),
            non_utf8: NonUtf8::Raw,
        }
    }
}

/// Treatment of message bytes that are not valid UTF-8 (syslog only; Loggregator carries bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NonUtf8 {
    /// Send the bytes unchanged as RFC 5424 `MSG-ANY` (no BOM): nothing is altered or lost.
    #[default]
    Raw,
    /// Replace invalid sequences with U+FFFD (for receivers that reject invalid UTF-8).
    Lossy,
}

/// A Loggregator v2 ingress destination (usually the local agent on port 3458).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggregatorOptions {
    /// Name for logs and metrics (default `loggregator:<address>`).
    pub name: Option<String>,
    /// `host:port` of the ingress.
    pub address: String,
    /// Mutual TLS material (Loggregator requires client certificates).
    pub tls: TlsOptions,
}

impl Default for LoggregatorOptions {
    fn default() -> Self {
        Self {
            name: None,
            address: String::new(),
            tls: TlsOptions {
                server_name: Some("metron".into()),
                ..TlsOptions::default()
            },
        }
    }
}

/// TLS material, as files (mounted from Secrets).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM CA bundle that signs the receiver's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM client private key (mutual TLS).
    pub key_file: Option<PathBuf>,
    /// Name checked in the receiver's certificate (default: the host of `address`).
    pub server_name: Option<String>,
}

/// How replicas share the work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReplicaMode {
    /// One leader (a Lease) follows every pod; the other replicas wait.
    #[default]
    Leader,
    /// Every replica follows a share of the pods (hashed by pod UID over the live members, each
    /// holding a membership Lease), handing pods over when members come and go.
    Sharded,
}

/// How replicas share the work: one leader follows every pod (default), or each follows a share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaOptions {
    /// `leader` (default): one Lease holder follows every pod; `sharded`: the replicas share them.
    pub mode: ReplicaMode,
    /// Elect a leader with a Lease (on by default; off only for a single replica; `leader` mode).
    pub leader_election: bool,
    /// Namespace of the Lease and checkpoint ConfigMaps (default: the manager's webhook namespace).
    pub namespace: Option<String>,
    /// Name of the Lease.
    pub lease_name: String,
    /// Lease validity: a dead leader is replaced after about this long.
    pub lease_duration_secs: u64,
    /// This replica's identity (default: `POD_NAME`, else host name and pid).
    pub identity: Option<String>,
    /// Prefix of the checkpoint ConfigMaps (`<prefix>-<shard>`).
    pub checkpoint_name: String,
    /// Number of checkpoint ConfigMaps (each holds about 8k containers within the 1 MiB limit).
    pub checkpoint_shards: u32,
    /// How often forwarded positions are written; bounds duplicates after a crash.
    pub checkpoint_interval_ms: u64,
    /// `sharded` mode: entries per checkpoint ConfigMap of a member (each member has as many as
    /// its share needs, a power of two; about 150 bytes per entry with its field ownership).
    pub checkpoint_page_keys: usize,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        Self {
            mode: ReplicaMode::Leader,
            leader_election: true,
            namespace: None,
            lease_name: "eirinix-logs".into(),
            lease_duration_secs: 15,
            identity: None,
            checkpoint_name: "eirinix-logs-checkpoint".into(),
            checkpoint_shards: 4,
            checkpoint_interval_ms: 1_000,
            checkpoint_page_keys: 2_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_every_sink_kind() {
        let o = LogsOptions::from_yaml(
            r#"
namespaces: [eirini]
bufferLines: 5000
sinks:
  - type: syslog
    address: logs.example.com:6514
    tls:
      caFile: /tls/ca.crt
      serverName: logs.example.com
    nonUtf8: lossy
  - type: syslog
    name: plain
    address: 10.0.0.5:514
  - type: relp
    address: logs.example.com:2514
  - type: loggregator
    address: localhost:3458
    tls:
      caFile: /loggregator/ca.crt
      certFile: /loggregator/tls.crt
      keyFile: /loggregator/tls.key
      serverName: metron
replicas:
  namespace: eirinix
  leaseDurationSecs: 10
  checkpointIntervalMs: 500
"#,
        )
        .unwrap();
        assert_eq!(o.namespaces, ["eirini"]);
        assert_eq!(o.buffer_lines, 5000);
        assert_eq!(o.batch_size, LogsOptions::default().batch_size);
        assert_eq!(o.sinks.len(), 4);
        match &o.sinks[0] {
            SinkOptions::Syslog(s) => {
                assert_eq!(s.non_utf8, NonUtf8::Lossy);
                assert_eq!(s.structured_data_id, "tags@47450");
                assert_eq!(
                    s.tls.as_ref().unwrap().server_name.as_deref(),
                    Some("logs.example.com")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(o.sinks[1].name(), "plain");
        assert_eq!(o.sinks[2].name(), "relp:logs.example.com:2514");
        assert!(matches!(&o.sinks[2], SinkOptions::Relp(r) if r.tls.is_none()));
        assert_eq!(o.sinks[3].name(), "loggregator:localhost:3458");
        assert_eq!(o.replicas.namespace.as_deref(), Some("eirinix"));
        assert_eq!(o.replicas.lease_duration_secs, 10);
        assert!(o.replicas.leader_election);
        o.validate().unwrap();

        // JSON is YAML too.
        let j = LogsOptions::from_yaml(r#"{"sinks":[{"type":"syslog","address":"h:1"}]}"#).unwrap();
        j.validate().unwrap();
    }

    #[test]
    fn sd_ids() {
        assert!(validate_sd_id("tags@47450").is_ok());
        assert!(validate_sd_id("").is_err());
        assert!(validate_sd_id("a b").is_err());
        assert!(validate_sd_id("a=b").is_err());
        assert!(validate_sd_id(&"x".repeat(33)).is_err());
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(LogsOptions::from_yaml("sinks: [{type: syslog, adress: h:1}]").is_err());
        assert!(LogsOptions::from_yaml("bufferLine: 3").is_err());
        assert!(LogsOptions::from_yaml("sinks: [{type: kafka}]").is_err());
        assert!(LogsOptions::default().validate().is_err(), "no sink");
        let mut o = LogsOptions::from_yaml("sinks: [{type: syslog, address: 'nohost'}]").unwrap();
        assert!(o.validate().is_err());
        o.sinks = vec![SinkOptions::Syslog(SyslogOptions {
            address: "h:514".into(),
            structured_data_id: "bad id".into(),
            ..SyslogOptions::default()
        })];
        assert!(o.validate().is_err());
        o = LogsOptions::from_yaml("{sinks: [{type: syslog, address: 'h:1'}], batchSize: 0}")
            .unwrap();
        assert!(o.validate().is_err());
    }
}
