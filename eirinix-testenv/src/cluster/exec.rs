//! Running a command in a pod's container through the `pods/exec` API (apiserver → kubelet →
//! containerd), as `kubectl exec` does.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use tokio::io::AsyncReadExt as _;

use crate::{Error, Result};

/// What a command run with [`Cluster::exec`](super::Cluster::exec) printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// The exit code (0 on success; `None` when the apiserver reported no code).
    pub code: Option<i32>,
}

impl ExecOutput {
    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

pub(crate) async fn exec<I, T>(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    container: &str,
    command: I,
) -> Result<ExecOutput>
where
    I: IntoIterator<Item = T> + std::fmt::Debug,
    T: Into<String>,
{
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let params = AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut proc = pods.exec(pod, command, &params).await?;
    let mut stdout = proc
        .stdout()
        .ok_or_else(|| Error::Exec("no stdout stream".into()))?;
    let mut stderr = proc
        .stderr()
        .ok_or_else(|| Error::Exec("no stderr stream".into()))?;
    let status = proc
        .take_status()
        .ok_or_else(|| Error::Exec("no status stream".into()))?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (r1, r2) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    r1.map_err(|e| Error::io("reading the exec stdout", e))?;
    r2.map_err(|e| Error::io("reading the exec stderr", e))?;
    let status = status.await;
    proc.join()
        .await
        .map_err(|e| Error::Exec(format!("exec stream: {e}")))?;
    let code = status.and_then(|s| {
        if s.status.as_deref() == Some("Success") {
            return Some(0);
        }
        s.details
            .and_then(|d| d.causes)
            .and_then(|cs| {
                cs.into_iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|c| c.message)
            .and_then(|m| m.parse().ok())
    });
    Ok(ExecOutput {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        code,
    })
}
