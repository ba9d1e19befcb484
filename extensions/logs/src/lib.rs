//! eirinix logs: the stock extension that follows the logs of Eirini app and staging pods
//! through the Kubernetes API and forwards every line, with its app identity, to syslog
//! (RFC 5424 over TCP or TLS, or over RELP with acknowledgements) and/or Loggregator v2.
//!
//! Add it to a manager with [`install`] (or [`try_install`] to get configuration errors), or
//! use the pieces alone: [`follower::Follower`] (one container), [`record::Record`],
//! [`sink::Sink`] with [`syslog::SyslogSink`], [`relp::RelpSink`] and
//! [`loggregator::LoggregatorSink`], and
//! [`buffer::BoundedBuffer`]. See the README for the record format and the guarantees.

#![warn(missing_docs)]

pub mod buffer;
pub mod checkpoint;
pub mod cursor;
mod destination;
pub mod error;
pub mod follower;
pub mod lines;
pub mod loggregator;
pub mod metrics;
pub mod options;
mod ownership;
pub mod record;
pub mod relp;
pub mod service;
mod sharded;
pub mod sink;
pub mod syslog;
mod term;
mod tls;

use eirinix_core::ManagerBuilder;

pub use error::LogsError;
pub use metrics::LogsMetrics;
pub use options::{
    LoggregatorOptions, LogsOptions, NonUtf8, ReplicaMode, ReplicaOptions, SinkOptions,
    SyslogOptions, TlsOptions,
};
pub use record::{Origin, Record, Stream};
pub use service::{LogsService, Scope};

/// Name of the manager task the extension adds.
pub const TASK_NAME: &str = "logs";

/// Add the logs extension to `builder` (its task and its metrics), or say why its options are
/// unusable; the metrics are also returned, for tests and embedders that read them.
pub fn try_install(
    builder: ManagerBuilder,
    options: LogsOptions,
) -> Result<(ManagerBuilder, std::sync::Arc<LogsMetrics>), LogsError> {
    let service = LogsService::new(options)?;
    let metrics = service.metrics();
    let builder = add(builder, service).metrics_collector(metrics.clone());
    Ok((builder, metrics))
}

/// `builder.install(options)?`: the logs extension, as every stock extension is added.
impl eirinix_core::Install for LogsOptions {
    type Error = LogsError;

    fn install(self, builder: ManagerBuilder) -> Result<ManagerBuilder, LogsError> {
        try_install(builder, self).map(|(builder, _)| builder)
    }
}

fn add(builder: ManagerBuilder, service: LogsService) -> ManagerBuilder {
    builder.task(TASK_NAME, move |ctx, cancel| service.run_in(ctx, cancel))
}
