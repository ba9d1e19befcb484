//! The ssh proxy: `ssh -p <port> <app-guid>/<index>@<proxy>` (or `cf:<app-guid>/<index>`), with a
//! Kubernetes bearer token as the password.
//!
//! Access: a TokenReview authenticates the token; SubjectAccessReviews check that its user may
//! `create pods/exec` in the app namespace (before any pod is looked up) and on the target pod.
//! The proxy then logs in to the pod's daemon with the app's client key and verifies the
//! daemon's host key, both derived from the [`MasterKey`](crate::keys::MasterKey) (the proxy
//! reads no app Secret), and relays the session (shell, exec, exit status, signals, `-L`
//! forwarding).
//!
//! Every refusal before access is granted looks the same to the user: one message, answered
//! [`ProxyConfig::refusal_time`] after the password arrived, whatever the reason. Reasons are
//! logged, never the token. Unauthenticated connections are limited ([`Limits`]).

// One concern a file; the imports run one way: target <- refusal <- auth, upstream <- handler
// <- server, with config, metrics, rate and relay beside them.
mod auth;
mod config;
mod handler;
mod metrics;
mod rate;
mod refusal;
mod relay;
mod server;
mod target;
mod upstream;

pub use crate::limits::Limits;
pub use config::ProxyConfig;
pub use metrics::ProxyMetrics;
pub use refusal::DENIED;
pub use server::{Proxy, run_proxy};
pub use target::{PodIpResolver, PodResolver};
