//! The logs service: sinks for the life of the process, and the terms that feed them: the
//! leader's term (every pod, periodic checkpoints) or, in sharded mode, the members' (see
//! `sharded`); what a term does (pod watchers, one follower per container) is in `term`.

use std::sync::Arc;
use std::time::Duration;

use eirinix_core::Context;
use eirinix_core::leader::LeaseLock;
use eirinix_core::options::Settings;
use tokio_util::sync::CancellationToken;

use crate::buffer::BoundedBuffer;
use crate::checkpoint::CheckpointStore;
use crate::error::LogsError;
use crate::metrics::LogsMetrics;
use crate::options::{LogsOptions, ReplicaMode};
use crate::ownership::Ownership;
use crate::sharded::SLOT_LABEL;
use crate::sink::{Sink, SinkHandle, build_sink, spawn_sink};
pub use crate::term::Scope;
use crate::term::{Shared, SinkSet, Term, Watchers, end_term, load_checkpoints, prune, save};

/// The logs extension as one runnable unit (what [`crate::install`] adds to a manager).
pub struct LogsService {
    options: Arc<LogsOptions>,
    sinks: Vec<(String, Box<dyn Sink>)>,
    metrics: Arc<LogsMetrics>,
}

impl LogsService {
    /// Validate `options` and build its sinks (reads TLS files).
    pub fn new(options: LogsOptions) -> Result<Self, LogsError> {
        options.validate()?;
        let sinks = options
            .sinks
            .iter()
            .map(|s| Ok((s.name(), build_sink(s)?)))
            .collect::<Result<Vec<_>, LogsError>>()?;
        Ok(Self::with_sinks(options, sinks))
    }

    /// A service sending to `sinks` instead of those in `options` (custom sinks, tests).
    pub fn with_sinks(options: LogsOptions, sinks: Vec<(String, Box<dyn Sink>)>) -> Self {
        LogsService {
            options: Arc::new(options),
            sinks,
            metrics: LogsMetrics::new(),
        }
    }

    /// The service's counters (a metrics collector, also readable field by field).
    pub fn metrics(&self) -> Arc<LogsMetrics> {
        self.metrics.clone()
    }

    /// Run with the manager's context until `cancel` fires, then drain the sinks, write the last
    /// checkpoint and hand leadership over.
    pub async fn run_in(self, ctx: Context, cancel: CancellationToken) {
        let Ok(client) = ctx.client().cloned() else {
            tracing::error!("the logs extension needs a Kubernetes client");
            return;
        };
        let scope = Scope::resolve(&self.options, ctx.settings());
        self.run(client, scope, ctx.settings().clone(), cancel)
            .await;
    }

    /// Run until `cancel` fires (see [`LogsService::run_in`]).
    pub async fn run(
        self,
        client: kube::Client,
        scope: Scope,
        settings: Settings,
        cancel: CancellationToken,
    ) {
        let options = self.options.clone();
        let metrics = self.metrics.clone();
        let handles: Vec<SinkHandle> = self
            .sinks
            .into_iter()
            .enumerate()
            .map(|(i, (name, sink))| spawn_sink(name, i, sink, &options, &metrics))
            .collect();
        let outputs: Arc<[Arc<BoundedBuffer>]> = handles.iter().map(|h| h.buffer.clone()).collect();
        let sinks = Arc::new(SinkSet::new(handles));
        let shared = Arc::new(Shared {
            client: client.clone(),
            options: options.clone(),
            scope: scope.clone(),
            settings,
            outputs,
            sinks: sinks.clone(),
            metrics: metrics.clone(),
        });
        tracing::info!(
            namespaces = ?scope.namespaces,
            state_namespace = %scope.state_namespace,
            sinks = ?metrics.sink_names(),
            "logs extension starting"
        );
        if options.replicas.mode == ReplicaMode::Sharded {
            crate::sharded::run(shared, cancel.clone()).await;
        } else if options.replicas.leader_election {
            let identity = options
                .replicas
                .identity
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(LeaseLock::default_identity);
            let lock = LeaseLock::new(
                client,
                &scope.state_namespace,
                &options.replicas.lease_name,
                identity,
            )
            .lease_duration(Duration::from_secs(options.replicas.lease_duration_secs));
            let outer = cancel.clone();
            lock.run_while_leader(cancel.clone(), None, move |token| {
                term(shared.clone(), token, outer.clone())
            })
            .await;
        } else {
            term(shared, cancel.clone(), cancel.clone()).await;
        }
        sinks.drain(Duration::from_secs(1)).await;
    }
}

/// The leader's term: follow every pod, checkpointing periodically, until `token` (the Lease is
/// lost, or `shutdown`).
async fn term(shared: Arc<Shared>, token: CancellationToken, shutdown: CancellationToken) {
    use std::sync::atomic::Ordering;
    let o = &shared.options;
    let mut store = CheckpointStore::new(
        shared.client.clone(),
        &shared.scope.state_namespace,
        &o.replicas.checkpoint_name,
        o.replicas.checkpoint_shards,
    )
    .with_selector(&format!("!{}", SLOT_LABEL));
    shared.metrics.leader.store(1, Ordering::Relaxed);
    let Some(mut loaded) = load_checkpoints(&mut store, &token).await else {
        shared.metrics.leader.store(0, Ordering::Relaxed);
        return;
    };
    prune(&shared, &mut loaded).await;
    tracing::info!(checkpoints = loaded.len(), "leading: following app logs");
    let term = Term::new(shared.clone(), loaded, Ownership::All, token.child_token());
    let watchers = Watchers::start(&shared, &term, &token);

    // Checkpoints, periodically.
    let interval = Duration::from_millis(o.replicas.checkpoint_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = token.cancelled() => break,
        }
        save(&mut store, &term, &shared.metrics).await;
    }
    end_term(&shared, &term, watchers, &mut store, &shutdown).await;
    shared.metrics.leader.store(0, Ordering::Relaxed);
}
