//! Timeouts through a real apiserver: an extension that hangs is answered in-process before the
//! apiserver gives up on its webhook (its own registered timeout, not the manager's default), so
//! the failure policy is eirinix's answer with eirinix's message; and the HTTP request timeout
//! never cuts a review the apiserver still waits for.

mod common;

use std::time::Duration;

use common::*;
use eirinix_core::{
    Context, Extension, ExtensionError, FailurePolicy, Mutation, Request, WebhookOverrides,
    async_trait,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

/// Never answers (the extension waits on something that never comes).
struct Hang {
    name: &'static str,
    policy: FailurePolicy,
}

#[async_trait]
impl Extension for Hang {
    fn name(&self) -> &str {
        self.name
    }

    async fn mutate(&self, _: &Context, _: &Request, _: &Pod) -> Result<Mutation, ExtensionError> {
        futures::future::pending().await
    }

    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides {
            failure_policy: Some(self.policy),
            timeout_seconds: Some(2),
            ..Default::default()
        }
    }
}

/// The sticky mutation, after `delay` (a slow dependency), with a 5 s webhook timeout.
struct Slow {
    delay: Duration,
}

#[async_trait]
impl Extension for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    async fn mutate(
        &self,
        ctx: &Context,
        request: &Request,
        pod: &Pod,
    ) -> Result<Mutation, ExtensionError> {
        tokio::time::sleep(self.delay).await;
        Sticky.mutate(ctx, request, pod).await
    }

    fn webhook(&self) -> WebhookOverrides {
        WebhookOverrides {
            timeout_seconds: Some(5),
            ..Default::default()
        }
    }
}

/// Create `pod` in `ns` with a raw request: the status and the `Warning` headers of the answer.
async fn create_with_warnings(client: &kube::Client, ns: &str, pod: &Pod) -> (u16, Vec<String>) {
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods"))
        .create(&PostParams::default(), serde_json::to_vec(pod).unwrap())
        .unwrap();
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .unwrap();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (response.status().as_u16(), warnings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_extension_is_answered_before_the_apiserver_gives_up() {
    let (client, sys, ns, fp) = setup("hang", "e2e-hang").await;
    // The manager's default timeout stays 10 s: each extension's own 2 s is what counts.
    let running = manager(&fp, &sys, &ns)
        .extension(Hang {
            name: "hang-fail",
            policy: FailurePolicy::Fail,
        })
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(Duration::from_secs(20)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let started = tokio::time::Instant::now();
    let err = pods
        .create(&PostParams::default(), &app_pod("denied"))
        .await
        .expect_err("Fail: the pod is denied");
    let took = started.elapsed();
    let message = err.to_string();
    eprintln!("Fail: denied after {took:?}: {message}");
    assert!(
        message.contains("hang-fail: extension hang-fail did not answer within"),
        "eirinix's own answer, not the apiserver's timeout: {message}"
    );
    assert!(pods.get_opt("denied").await.unwrap().is_none());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_extension_under_ignore_admits_unmutated_with_a_warning() {
    let (client, sys, ns, fp) = setup("hang-ignore", "e2e-hang-ignore").await;
    let running = manager(&fp, &sys, &ns)
        .extension(Hang {
            name: "hang-ignore",
            policy: FailurePolicy::Ignore,
        })
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(Duration::from_secs(20)).await.unwrap();
    let started = tokio::time::Instant::now();
    let (status, warnings) = create_with_warnings(&client, &ns, &app_pod("admitted")).await;
    let took = started.elapsed();
    eprintln!("Ignore: status {status} after {took:?}, warnings {warnings:?}");
    assert_eq!(status, 201, "{warnings:?}");
    assert!(
        warnings.iter().any(|w| w
            .contains("hang-ignore: extension hang-ignore did not answer within")
            && w.contains("admitted unmutated")),
        "eirinix's warning reaches the client: {warnings:?}"
    );
    let stored = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("admitted")
        .await
        .unwrap();
    let sent = app_pod("admitted");
    assert_eq!(
        stored.spec.as_ref().unwrap().containers[0].env,
        sent.spec.unwrap().containers[0].env,
        "unmutated"
    );
    assert_eq!(stored.metadata.labels, sent.metadata.labels, "unmutated");
    assert_eq!(stored.metadata.annotations, None, "unmutated");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_never_cuts_a_review_the_apiserver_waits_for() {
    let (client, sys, ns, fp) = setup("slow", "e2e-slow").await;
    // A request timeout of 1 s, below the extension's 5 s webhook timeout.
    let running = manager(&fp, &sys, &ns)
        .request_timeout(Duration::from_secs(1))
        .extension(Slow {
            delay: Duration::from_millis(1500),
        })
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .unwrap();
    running.wait_ready(Duration::from_secs(20)).await.unwrap();
    let pod = admit(&client, &ns, &app_pod("slow")).await;
    assert_eq!(sticky(&pod).as_deref(), Some("hello"));
    running.shutdown().await;
}
