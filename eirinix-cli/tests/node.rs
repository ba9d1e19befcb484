//! The `eirinix` binary serving every stock extension to a real node: an Eirini app
//! StatefulSet is created, the StatefulSet controller makes its pod, the webhook mutates it, the
//! kubelet runs it, and what each extension promised is checked from inside the running
//! container.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eirinix_testenv::eirini::{EiriniApp, running_image};
use eirinix_testenv::support::{eventually, wait_pod_ready};
use eirinix_testenv::{Cluster, app_image, unique_name};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

/// A running `eirinix run`, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A syslog receiver (RFC 6587 octet counting) on 127.0.0.1: every message, as received.
async fn syslog_receiver() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(stream);
                loop {
                    let mut len = Vec::new();
                    if r.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let Ok(n) = String::from_utf8_lossy(&len).trim().parse::<usize>() else {
                        return;
                    };
                    let mut frame = vec![0; n];
                    if r.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    let _ = tx.send(String::from_utf8_lossy(&frame).into_owned());
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eirini_app_runs_with_every_stock_extension() {
    eirinix_testenv::support::init_tracing();
    let cluster = Cluster::shared().await.unwrap();
    let eirinix_image = eirinix_testenv::eirini::eirinix_image().unwrap();
    cluster.load_image(&eirinix_image).unwrap();
    // Rootfs versions v1 and v2 of the app image: the same tools, a file telling them apart.
    for version in ["v1", "v2"] {
        let image = app_image()
            .unwrap()
            .with_name(format!("eirinix.local/cflinuxfs:{version}"))
            .contents("/etc/rootfs-version", format!("{version}\n"), 0o644);
        cluster.load_image(&image).unwrap();
    }
    let client = cluster.client().await.unwrap();
    let system = cluster.namespace("node-sys").await.unwrap();
    let apps = cluster.namespace("node-apps").await.unwrap();

    let (syslog_port, mut received) = syslog_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let logs_config = dir.path().join("logs.yaml");
    std::fs::write(
        &logs_config,
        format!("sinks:\n  - type: syslog\n    address: 127.0.0.1:{syslog_port}\n"),
    )
    .unwrap();
    let admin = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eirinix"))
        .env("KUBECONFIG", cluster.plane().kubeconfig_path())
        .env("RUST_LOG", "info")
        .args(["run", "--extensions", "persi,ssh,logs,rootfs"])
        .args(["--namespace", &apps, "--webhook-namespace", &system])
        .args([
            "--host",
            "127.0.0.1",
            "--bind-address",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args(["--fingerprint", &unique_name("node")])
        .args(["--admin-port", &admin.to_string()])
        .args(["--ssh-image", eirinix_image.name()])
        .arg(format!("--logs-config={}", logs_config.display()))
        .args([
            "--rootfs-version",
            "v2",
            "--rootfs-image-pattern",
            "eirinix.local/cflinuxfs",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let server = Server(child);
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("eirinix: {line}");
        }
    });
    eventually(Duration::from_secs(60), "eirinix ready", || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", admin))
            .await
            .ok()?;
        use tokio::io::AsyncWriteExt as _;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.starts_with("HTTP/1.0 200")
            .then_some(())
            .or_else(|| out.starts_with("HTTP/1.1 200").then_some(()))
    })
    .await;

    // `cf create-service` + `cf bind-service`: a claim and the binding in VCAP_SERVICES.
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "dora-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &apps)
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    let vcap = serde_json::json!({"eirini-persi": [{
        "name": "dora-data", "label": "eirini-persi", "plan": "default",
        "credentials": {"volume_id": "dora-data"},
        "volume_mounts": [{"container_dir": "/var/vcap/data/dora", "mode": "rw", "device_type": "shared",
                           "device": {"volume_id": "dora-data", "mount_config": {}}}]
    }]});
    let mut app = EiriniApp::new("dora-dev-7f3a9c2e1b").env("VCAP_SERVICES", &vcap.to_string());
    app.image = "eirinix.local/cflinuxfs:v1".into();
    app.rootfs_version = Some("v1".into());
    Api::<StatefulSet>::namespaced(client.clone(), &apps)
        .create(&PostParams::default(), &app.statefulset())
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let pod_name = app.pod_name(0);
    let pod = wait_pod_ready(&pods, &pod_name, Duration::from_secs(120)).await;
    let exec = |cmd: &'static str| {
        let (apps, pod_name) = (apps.clone(), pod_name.clone());
        async move {
            let out = cluster
                .exec(&apps, &pod_name, "opi", ["sh", "-c", cmd])
                .await
                .unwrap();
            assert!(
                out.success(),
                "`{cmd}` failed in the app container: {out:?}"
            );
            out.stdout
        }
    };

    // persi: the claim is mounted at container_dir and the app user writes it (fsGroup).
    assert_eq!(
        exec("id -u; echo written > /var/vcap/data/dora/f; cat /var/vcap/data/dora/f").await,
        "2000\nwritten\n"
    );
    assert!(
        exec("grep /var/vcap/data/dora /proc/mounts")
            .await
            .contains(" rw,"),
        "mounted read-write"
    );

    // ssh: the app's own command runs as PID 1 under the wrapper, and the daemon listens.
    let command = pod.spec.as_ref().unwrap().containers[0]
        .command
        .clone()
        .unwrap();
    assert_eq!(command[0], "/eirinix/ssh/eirinix-sshd", "{command:?}");
    assert_eq!(&command[command.len() - 3..], app.command.as_slice());
    let pid1 = exec("tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(
        pid1.starts_with("httpd -f -p 8080"),
        "PID 1 is the app: {pid1}"
    );
    let listening = exec("cat /proc/net/tcp /proc/net/tcp6").await;
    assert!(
        listening.contains(":08AE ") && listening.contains(" 0A "),
        "the daemon listens on 2222: {listening}"
    );

    // rootfs: the pod runs the desired version's image and carries its label.
    assert_eq!(
        running_image(&pod).as_deref(),
        Some("eirinix.local/cflinuxfs:v2")
    );
    assert_eq!(exec("cat /etc/rootfs-version").await, "v2\n");
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["cloudfoundry.org/rootfs-version"],
        "v2"
    );

    // logs: the app's own first line reached the aggregator through the real kubelet.
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let msg = received.recv().await.expect("receiver open");
            if msg.contains("Starting dora-dev-7f3a9c2e1b-0 on port 8080") {
                return msg;
            }
        }
    })
    .await
    .expect("the app's log line reached syslog within 60 s");
    assert!(
        line.contains(&app.guid),
        "app identity in the record: {line}"
    );
    drop(server);
}
