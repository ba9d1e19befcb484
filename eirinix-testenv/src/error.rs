//! The error type of this crate.

use std::path::PathBuf;

use crate::assets::PROVISION_HINT;

/// Everything that can go wrong while starting or using a test control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `etcd` and/or `kube-apiserver` are not in the assets directory.
    #[error(
        "eirinix-testenv: {} not found in {} (from {source_hint}); to provision the real Kubernetes \
         test binaries, {PROVISION_HINT}",
        missing.join(" and "),
        dir.display()
    )]
    MissingBinaries {
        /// The directory that was searched.
        dir: PathBuf,
        /// Where that directory came from (an environment variable or the default).
        source_hint: &'static str,
        /// The missing binary names.
        missing: Vec<String>,
    },

    /// No assets environment variable and no home directory to derive the cache from.
    #[error(
        "eirinix-testenv: cannot locate the binaries: none of EIRINIX_ASSETS, KUBEBUILDER_ASSETS, \
         EIRINIX_CACHE_DIR, XDG_CACHE_HOME or HOME is set; {PROVISION_HINT}"
    )]
    NoCacheDir,

    /// A filesystem or process operation failed.
    #[error("eirinix-testenv: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Certificate or key generation failed.
    #[error("eirinix-testenv: generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),

    /// A TLS configuration could not be built.
    #[error("eirinix-testenv: TLS setup: {0}")]
    Tls(#[from] rustls::Error),

    /// The generated kubeconfig could not be turned into a client configuration.
    #[error("eirinix-testenv: kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    /// A call to the Kubernetes API failed.
    #[error("eirinix-testenv: Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// A control-plane process exited while it was expected to come up.
    #[error("eirinix-testenv: {name} exited ({status}); last lines of {}:\n{tail}", log.display())]
    Exited {
        /// `etcd` or `kube-apiserver`.
        name: &'static str,
        /// The exit status.
        status: String,
        /// The file holding the process's stdout and stderr.
        log: PathBuf,
        /// The end of that file.
        tail: String,
    },

    /// A control-plane process did not become ready in time.
    #[error(
        "eirinix-testenv: {name} not ready after {timeout:?} (last probe: {last_probe}); last lines \
         of {}:\n{tail}",
        log.display()
    )]
    NotReady {
        /// `etcd` or `kube-apiserver`.
        name: &'static str,
        /// How long we waited.
        timeout: std::time::Duration,
        /// The result of the last readiness probe.
        last_probe: String,
        /// The file holding the process's stdout and stderr.
        log: PathBuf,
        /// The end of that file.
        tail: String,
    },

    /// This machine cannot run the real node; the message says what is missing and how to fix it.
    #[error("eirinix-testenv: the real node cannot run here: {0}")]
    NodeUnsupported(String),

    /// The node (containerd, kubelet, controllers) did not come up.
    #[error("eirinix-testenv: starting the node: {0}")]
    NodeStart(String),

    /// A helper command (`ip`, `nsenter`, `ctr`) failed.
    #[error("eirinix-testenv: `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },

    /// Running a command in a pod failed (not the command's own failure: see its exit code).
    #[error("eirinix-testenv: exec: {0}")]
    Exec(String),

    /// The shared control plane of this test binary failed to start (earlier, in another test).
    #[error("{0} (this test binary's shared control plane failed to start)")]
    Shared(String),
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
