//! The real single-node cluster: pods run (non-root, with claims and fsGroup), reach the
//! apiserver through the `kubernetes` Service, are reachable from the host, and teardown leaves
//! nothing behind, also after the test process is SIGKILLed.

use std::path::PathBuf;
use std::time::Duration;

use eirinix_testenv::support::eventually;
use eirinix_testenv::{APP_IMAGE, APP_UID, Cluster};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn pod(name: &str, claim: Option<&str>) -> Pod {
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsUser": APP_UID, "runAsGroup": APP_UID, "fsGroup": 3000},
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "app",
                "image": APP_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c",
                    "echo to-stdout; echo to-stderr >&2; mkdir -p /tmp/www; echo hello > /tmp/www/index.html; exec httpd -f -p 8080 -h /tmp/www"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }],
        }
    }))
    .unwrap();
    if let Some(claim) = claim {
        let spec = pod.spec.as_mut().unwrap();
        spec.volumes = Some(vec![
            serde_json::from_value(serde_json::json!({
                "name": "data", "persistentVolumeClaim": {"claimName": claim}
            }))
            .unwrap(),
        ]);
        spec.containers[0].volume_mounts = Some(vec![
            serde_json::from_value(serde_json::json!({"name": "data", "mountPath": "/data"}))
                .unwrap(),
        ]);
    }
    pod
}

async fn wait_ready(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(
        Duration::from_secs(120),
        &format!("pod {name} Ready"),
        || async {
            let p = pods.get(name).await.ok()?;
            let ready = p
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(p)
        },
    )
    .await
}

#[tokio::test]
async fn pods_run_non_root_with_a_claim_and_reach_the_apiserver() {
    eirinix_testenv::support::init_tracing();
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().await.unwrap();
    let ns = cluster.namespace("run").await.unwrap();

    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod("web", Some("data")))
        .await
        .unwrap();
    let running = wait_ready(&pods, "web").await;

    let id = cluster.exec(&ns, "web", "app", ["id"]).await.unwrap();
    assert!(id.success(), "{id:?}");
    assert!(
        id.stdout.starts_with("uid=2000(vcap) gid=2000(vcap)"),
        "{id:?}"
    );
    assert!(
        id.stdout.contains("3000"),
        "fsGroup is a supplementary group: {id:?}"
    );

    // The claim is bound, mounted, and writable by the non-root user through fsGroup.
    let write = cluster
        .exec(
            &ns,
            "web",
            "app",
            [
                "sh",
                "-c",
                "echo kept > /data/f && cat /data/f && stat -c %g /data",
            ],
        )
        .await
        .unwrap();
    assert_eq!(write.stdout, "kept\n3000\n", "{write:?}");
    let failed = cluster
        .exec(&ns, "web", "app", ["sh", "-c", "exit 7"])
        .await
        .unwrap();
    assert_eq!(failed.code, Some(7), "exit codes come back: {failed:?}");

    // Pod → `kubernetes` Service (kube-proxy in the node) → relay → apiserver: an HTTP request
    // to the TLS port gets the apiserver's own 400.
    let svc = cluster
        .exec(&ns, "web", "app", ["wget", "-qO-", "http://10.0.0.1:443/"])
        .await
        .unwrap();
    assert!(svc.stderr.contains("400 Bad Request"), "{svc:?}");

    // Host → pod address (routed into the node).
    let ip = running.status.unwrap().pod_ip.unwrap();
    assert!(
        ip.starts_with("10.244."),
        "pod address from the pod CIDR: {ip}"
    );
    let mut tcp = tokio::net::TcpStream::connect((ip.as_str(), 8080))
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    assert!(body.ends_with("hello\n"), "{body}");

    // Container logs through the apiserver and the real kubelet, with the streams apart.
    let logs = pods.logs("web", &Default::default()).await.unwrap();
    assert!(
        logs.contains("to-stdout") && logs.contains("to-stderr"),
        "{logs}"
    );
    let stderr_only: String = client
        .request_text(
            http::Request::get(format!(
                "/api/v1/namespaces/{ns}/pods/web/log?stream=Stderr"
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stderr_only, "to-stderr\n");
}

/// Alive and not a zombie.
fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Everything a node leaves on the host while it runs.
#[derive(Debug)]
struct Footprint {
    cgroup: String,
    link: String,
    dir: PathBuf,
    pod_cidr: String,
    pids: Vec<i32>,
}

impl Footprint {
    fn of(cluster: &Cluster) -> Footprint {
        let cgroup = cluster.cgroup_path();
        let procs = format!("/sys/fs/cgroup/pids{cgroup}");
        let mut pids = Vec::new();
        collect_pids(std::path::Path::new(&procs), &mut pids);
        Footprint {
            cgroup,
            link: cluster.host_link(),
            dir: cluster.dir().to_owned(),
            pod_cidr: cluster.pod_cidr(),
            pids,
        }
    }

    fn assert_present(&self) {
        assert!(
            self.pids.len() >= 6,
            "holder, containerd, shim, pause, app, kubelet, kube-proxy: {self:?}"
        );
        assert!(link_exists(&self.link), "{self:?}");
        assert!(routes().contains(&self.pod_cidr), "{self:?}");
    }

    fn assert_gone(&self) {
        // Killed processes are reaped, and a dead network namespace is dismantled, a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let alive = || -> Vec<i32> {
            self.pids
                .iter()
                .copied()
                .filter(|p| pid_alive(*p))
                .collect()
        };
        while (!alive().is_empty() || link_exists(&self.link))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let alive = alive();
        assert!(
            alive.is_empty(),
            "node processes survived: {alive:?} of {self:?}"
        );
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let p = h.path().join(self.cgroup.trim_start_matches('/'));
            assert!(!p.exists(), "cgroup {} left behind", p.display());
        }
        assert!(!link_exists(&self.link), "link {} left behind", self.link);
        assert!(
            !routes().contains(&self.pod_cidr),
            "route to {} left behind",
            self.pod_cidr
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.dir.display().to_string();
        assert!(!mounts.contains(&dir), "mounts under {dir} left behind");
        assert!(!self.dir.exists(), "{dir} left behind");
    }
}

fn collect_pids(dir: &std::path::Path, out: &mut Vec<i32>) {
    if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(t.lines().filter_map(|l| l.parse::<i32>().ok()));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            collect_pids(&e.path(), out);
        }
    }
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn routes() -> String {
    let out = std::process::Command::new("ip")
        .args(["route"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn run_one_pod(cluster: &Cluster) {
    let client = cluster.client().await.unwrap();
    let ns = cluster.namespace("teardown").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    pods.create(&PostParams::default(), &pod("web", None))
        .await
        .unwrap();
    wait_ready(&pods, "web").await;
}

#[tokio::test]
async fn dropping_a_cluster_leaves_nothing_behind() {
    eirinix_testenv::support::init_tracing();
    let cluster = Cluster::start().await.unwrap();
    run_one_pod(&cluster).await;
    let footprint = Footprint::of(&cluster);
    footprint.assert_present();
    drop(cluster);
    footprint.assert_gone();
}

/// Re-runs this test binary as a child that starts a cluster with a running pod, SIGKILLs it,
/// and checks that the next start's reaping (here called directly) removes everything.
#[tokio::test]
async fn a_killed_test_process_leaves_nothing_after_reaping() {
    const CHILD_ENV: &str = "EIRINIX_TESTENV_KILLED_CLUSTER";
    if std::env::var_os(CHILD_ENV).is_some() {
        let cluster = Cluster::start().await.unwrap();
        run_one_pod(&cluster).await;
        let f = Footprint::of(&cluster);
        println!(
            "READY {} {} {} {} {}",
            f.cgroup,
            f.link,
            f.dir.display(),
            f.pod_cidr,
            f.pids
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        std::future::pending::<()>().await;
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_test_process_leaves_nothing_after_reaping",
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
    .expect("child exited before its cluster was ready");
    let f: Vec<&str> = ready.split_whitespace().collect();
    let footprint = Footprint {
        cgroup: f[1].into(),
        link: f[2].into(),
        dir: f[3].into(),
        pod_cidr: f[4].into(),
        pids: f[5].split(',').map(|p| p.parse().unwrap()).collect(),
    };
    footprint.assert_present();
    child.kill().unwrap(); // SIGKILL: no destructor, no atexit
    child.wait().unwrap();
    // Shims and containers are not children of the test process: they outlive it...
    assert!(
        footprint.pids.iter().any(|p| pid_alive(*p)),
        "some node processes outlive a SIGKILLed test process (this is what reaping is for)"
    );
    // ...until the next start (or this call) reaps them.
    eirinix_testenv::remove_stale_dirs();
    footprint.assert_gone();
}
