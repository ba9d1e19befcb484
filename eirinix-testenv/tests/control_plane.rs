//! The control plane against the real etcd + kube-apiserver binaries.

use std::collections::BTreeMap;
use std::time::Duration;

use eirinix_testenv::ControlPlane;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("key".to_owned(), value.to_owned())])),
        ..ConfigMap::default()
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn namespace_and_config_map_round_trip() {
    let plane = ControlPlane::shared().await.unwrap();
    let client = plane.client().await.unwrap();
    let ns = plane.namespace("round-trip").await.unwrap();
    assert!(ns.starts_with("round-trip-"), "{ns}");

    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    cms.create(&PostParams::default(), &config_map("greeting", "hello"))
        .await
        .unwrap();
    let back = cms.get("greeting").await.unwrap();
    assert_eq!(back.data.unwrap()["key"], "hello");

    // The kubeconfig on disk is usable too.
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig_path()).unwrap();
    assert_eq!(
        kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .unwrap()
            .server
            .as_deref(),
        Some(plane.api_url().as_str())
    );
}

#[tokio::test]
async fn shared_returns_the_same_plane() {
    let a = ControlPlane::shared().await.unwrap();
    let b = ControlPlane::shared().await.unwrap();
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.api_url(), b.api_url());
    let version = a.client().await.unwrap().apiserver_version().await.unwrap();
    assert_eq!(version.git_version, eirinix_testenv::KUBE_VERSION);
}

#[tokio::test]
async fn dropping_a_dedicated_plane_kills_processes_and_removes_its_dir() {
    let plane = ControlPlane::start().await.unwrap();
    let apiserver = plane.apiserver_pid().unwrap();
    let etcd = plane.etcd_pid().unwrap();
    let dir = plane.dir().to_owned();
    assert!(pid_alive(apiserver) && pid_alive(etcd));
    assert!(dir.join("kubeconfig").is_file());
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("eirinix-testenv-")
    );

    drop(plane);
    assert!(
        !pid_alive(apiserver),
        "kube-apiserver {apiserver} still alive"
    );
    assert!(!pid_alive(etcd), "etcd {etcd} still alive");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[tokio::test]
async fn client_works_again_after_restart_apiserver() {
    let plane = ControlPlane::builder()
        .apiserver_flag("--v=1")
        .start()
        .await
        .unwrap();
    let client = plane.client().await.unwrap();
    let ns = plane.namespace("restart-apiserver").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(&PostParams::default(), &config_map("before", "1"))
        .await
        .unwrap();
    let old_pid = plane.apiserver_pid().unwrap();
    let port = plane.api_port();

    plane.restart_apiserver().await.unwrap();
    assert_ne!(plane.apiserver_pid().unwrap(), old_pid);
    assert!(!pid_alive(old_pid));
    assert_eq!(plane.api_port(), port);

    // The client made before the restart works again (its pooled connection may be stale
    // for exactly one request).
    let mut got = None;
    for _ in 0..3 {
        match cms.get("before").await {
            Ok(cm) => {
                got = Some(cm);
                break;
            }
            Err(e) => {
                eprintln!("request after restart failed once: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(got.unwrap().data.unwrap()["key"], "1");
    cms.create(&PostParams::default(), &config_map("after", "2"))
        .await
        .unwrap();

    // Stop/start explicitly.
    plane.stop_apiserver();
    assert!(plane.apiserver_pid().is_none());
    assert!(cms.get("after").await.is_err());
    plane.start_apiserver().await.unwrap();
    let fresh: Api<ConfigMap> = Api::namespaced(plane.client().await.unwrap(), &ns);
    assert_eq!(fresh.get("after").await.unwrap().data.unwrap()["key"], "2");
}

#[tokio::test]
async fn data_survives_restart_etcd() {
    let plane = ControlPlane::start().await.unwrap();
    let ns = plane.namespace("restart-etcd").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(plane.client().await.unwrap(), &ns);
    cms.create(&PostParams::default(), &config_map("kept", "yes"))
        .await
        .unwrap();
    let old_pid = plane.etcd_pid().unwrap();

    plane.restart_etcd().await.unwrap();
    assert_ne!(plane.etcd_pid().unwrap(), old_pid);

    let cms: Api<ConfigMap> = Api::namespaced(plane.client().await.unwrap(), &ns);
    assert_eq!(cms.get("kept").await.unwrap().data.unwrap()["key"], "yes");
    cms.create(&PostParams::default(), &config_map("new", "ok"))
        .await
        .unwrap();
}

/// Re-runs this test binary as a child that starts a plane, SIGKILLs it, and checks that the
/// plane's processes die with it and that its temp dir is reclaimed afterwards.
#[tokio::test]
async fn processes_die_with_a_killed_test_process() {
    const CHILD_ENV: &str = "EIRINIX_TESTENV_KILLED_CHILD";
    if std::env::var_os(CHILD_ENV).is_some() {
        let plane = ControlPlane::start().await.unwrap();
        println!(
            "READY {} {} {}",
            plane.apiserver_pid().unwrap(),
            plane.etcd_pid().unwrap(),
            plane.dir().display()
        );
        std::future::pending::<()>().await;
    }

    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "processes_die_with_a_killed_test_process",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        stdout
            .lines()
            .map(Result::unwrap)
            .find(|l| l.starts_with("READY "))
    })
    .await
    .unwrap()
    .expect("child exited before its plane was ready");
    let fields: Vec<&str> = ready.split_whitespace().collect();
    let (apiserver, etcd): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let dir = std::path::PathBuf::from(fields[3]);
    assert!(pid_alive(apiserver) && pid_alive(etcd));
    assert!(dir.exists(), "the child's plane has a temp dir");

    child.kill().unwrap(); // SIGKILL: no destructor, no atexit
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (pid_alive(apiserver) || pid_alive(etcd)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pid_alive(apiserver), "kube-apiserver {apiserver} leaked");
    assert!(!pid_alive(etcd), "etcd {etcd} leaked");

    // Whoever sweeps first reclaims it (a plane started by a parallel test sweeps too).
    eirinix_testenv::remove_stale_dirs();
    assert!(!dir.exists(), "stale dir {} not reclaimed", dir.display());
}

#[tokio::test]
async fn startup_failure_reports_the_apiserver_log() {
    let err = ControlPlane::builder()
        .apiserver_flag("--no-such-flag-for-eirinix")
        .start()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            eirinix_testenv::Error::Exited {
                name: "kube-apiserver",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("no-such-flag-for-eirinix"), "{msg}");
}
