//! Small helpers shared by the test suites built on this crate: logging to the test output,
//! polling a condition against the control plane until it holds, waiting out RBAC propagation,
//! and ServiceAccount tokens.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use kube::api::{Api, ObjectMeta, PostParams};

/// Log to the test output (`RUST_LOG` controls it, `warn` by default), once per test binary;
/// later calls, or a subscriber installed by the binary itself, are left alone.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Poll `f` every 100 ms until it returns `Some`, or panic with `what` after `timeout`: for
/// state the apiserver or a controller reaches asynchronously.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(Duration::from_millis(100), timeout, what, f).await
}

/// Like [`eventually`], polling every `period` (shorter to measure a window precisely, longer
/// to spare a busy machine).
pub async fn eventually_every<T, F, Fut>(
    period: Duration,
    timeout: Duration,
    what: &str,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(period).await;
    }
}

/// Run `f` until it succeeds, retrying (as [`eventually`] polls, for at most 60 s) while it
/// fails with HTTP 403: the apiserver's RBAC authorizer sees a new binding only through its
/// informer, so a caller bound a moment ago is refused for a while. Panics with `what` on any
/// other failure, or when 403 lasts.
pub async fn retry_while_forbidden<T, E, F, Fut>(what: &str, mut f: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let waiting = format!("{what} (refused with 403 until then)");
    eventually(Duration::from_secs(60), &waiting, || {
        let attempt = f();
        async move {
            match attempt.await {
                Ok(v) => Some(v),
                Err(e) if format!("{e:?}").contains("code: 403") => None,
                Err(e) => panic!("{what}: {e:?}"),
            }
        }
    })
    .await
}

/// A rule of the core API group allowing `verbs` on `resource` (e.g. `pods`, `pods/exec`), for
/// [`service_account_token`].
pub fn core_rule(resource: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| (*v).into()).collect(),
        ..Default::default()
    }
}

/// Create ServiceAccount `name` in `ns`, allowed `rules` there (a Role and RoleBinding of the same
/// name), and return a one-hour token for it: a real caller for authentication and authorization
/// tests. Panics when any of it fails.
pub async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    name: &str,
    rules: Vec<PolicyRule>,
) -> String {
    let meta = || ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    let account = ServiceAccount {
        metadata: meta(),
        ..Default::default()
    };
    let role = Role {
        metadata: meta(),
        rules: Some(rules),
    };
    // Built from JSON: field optionality differs across the k8s-openapi version features.
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }))
    .expect("a valid RoleBinding");
    let create = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create(&create, &account)
        .await
        .expect("ServiceAccount created");
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    roles.create(&create, &role).await.expect("Role created");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    bindings
        .create(&create, &binding)
        .await
        .expect("RoleBinding created");
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))
    .expect("a valid TokenRequest");
    let issued = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("token requested");
    token_of(&issued).expect("token issued")
}

/// The token of an issued TokenRequest (read through JSON: its type differs across the
/// k8s-openapi version features).
pub fn token_of(issued: &TokenRequest) -> Option<String> {
    serde_json::to_value(issued)
        .ok()?
        .pointer("/status/token")?
        .as_str()
        .map(str::to_owned)
}

/// Waits until pod `name` is Ready (all containers started and passing readiness) and returns
/// it; panics with the pod's status after `timeout`.
pub async fn wait_pod_ready(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    timeout: Duration,
) -> k8s_openapi::api::core::v1::Pod {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pod = pods.get_opt(name).await.ok().flatten();
        if let Some(p) = &pod
            && pod_is_ready(p)
        {
            return p.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} not Ready after {timeout:?}; its status: {:#?}",
            pod.and_then(|p| p.status)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the pod's `Ready` condition is `True`.
pub fn pod_is_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
