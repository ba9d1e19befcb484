//! A start that fails after the server and the certificate task are running stops them before
//! it returns the error: the port is free again and nothing it spawned keeps running (the
//! extension and the clock it handed to them are released).

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use eirinix_core::certs::{Clock, SystemClock};
use eirinix_core::manager::ManagerError;
use eirinix_testenv::support::{core_rule, service_account_token};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

/// The wall clock, shared: while a certificate task runs, it holds a reference.
#[derive(Debug)]
struct SharedClock;

impl Clock for SharedClock {
    fn now(&self) -> time::OffsetDateTime {
        SystemClock.now()
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Everything `start` spawned is gone: the extension and the clock are ours alone again, and
/// the webhook port can be bound.
async fn assert_nothing_left(ext: &Arc<Sticky>, clock: &Arc<SharedClock>, port: u16) {
    eventually(
        Duration::from_secs(10),
        "the tasks of the failed start to release the extension and the clock",
        || async { (Arc::strong_count(ext) == 1 && Arc::strong_count(clock) == 1).then_some(()) },
    )
    .await;
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("the webhook port {port} is still taken: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_failing_after_the_server_runs_leaves_nothing_running() {
    let (client, sys, ns, fp) = setup("start-fail", "e2e-startfail").await;
    // The admin port is taken: binding it fails after the webhook server was spawned.
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let admin_port = taken.local_addr().unwrap().port();
    let port = free_port();
    let ext = Arc::new(Sticky);
    let clock = Arc::new(SharedClock);
    let err = manager(&fp, &sys, &ns)
        .port(port)
        .admin_port(Some(admin_port))
        .extension_arc(ext.clone())
        .clock(clock.clone())
        .build()
        .unwrap()
        .start(client.clone())
        .await
        .err()
        .expect("the admin port is taken");
    assert!(
        matches!(&err, ManagerError::Bind(e) if e.addr.port() == admin_port),
        "{err}"
    );
    // The certificate Secret was made: the failure came after the certificate task started.
    assert!(
        Api::<Secret>::namespaced(client.clone(), &sys)
            .get_opt(&secret_name(&fp))
            .await
            .unwrap()
            .is_some()
    );
    assert_nothing_left(&ext, &clock, port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_registration_is_refused_leaves_nothing_running() {
    let (admin, sys, ns, fp) = setup("start-rbac", "e2e-startrbac").await;
    // An identity that may manage the certificate Secret but not webhook configurations.
    let token = service_account_token(
        &admin,
        &sys,
        "no-webhooks",
        vec![core_rule(
            "secrets",
            &["get", "list", "watch", "create", "update", "patch"],
        )],
    )
    .await;
    let mut config = plane().await.config().await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let client = kube::Client::try_from(config).unwrap();
    let port = free_port();
    let ext = Arc::new(Sticky);
    let clock = Arc::new(SharedClock);
    let err = manager(&fp, &sys, &ns)
        .port(port)
        .extension_arc(ext.clone())
        .clock(clock.clone())
        .build()
        .unwrap()
        .start(client)
        .await
        .err()
        .expect("registration is forbidden");
    assert!(
        matches!(err, ManagerError::Registration(_)) && err.to_string().contains("forbidden"),
        "{err}"
    );
    assert_nothing_left(&ext, &clock, port).await;
}
