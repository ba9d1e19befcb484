//! The demo on a real single-node cluster started on this machine: an Eirini app StatefulSet
//! with a volume binding runs, and each stock extension is shown at work from inside the running
//! container (persi's volume written by the app user, a command over `ssh` through the ssh
//! proxy, the app's stdout and stderr at a syslog aggregator, a rootfs roll onto a new image).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use eirinix_testenv::eirini::{EiriniApp, running_image};
use eirinix_testenv::{Cluster, ControlPlane, ImageArchive, app_image, unique_name};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use super::{common_args, manager_cleanup, print_diff, step, syslog_receiver, yaml};
use crate::cli::DemoArgs;
use crate::cli::StockArgs;
use crate::stock;

/// Repository of the app rootfs images; the tag is the rootfs version.
const ROOTFS: &str = "eirinix.local/cflinuxfs4";
const APP: &str = "dora-dev-7f3a9c2e1b";
const CLAIM: &str = "dora-data-7f3a";
const DATA_DIR: &str = "/var/vcap/data/dora";

/// How long the demo waits for anything the cluster does.
const WAIT: Duration = Duration::from_secs(180);

/// Run the demo on a local cluster.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    step(
        "starting a local cluster: etcd, kube-apiserver, controller-manager, scheduler, and a node \
         (containerd + runc, kubelet, kube-proxy) in namespaces of its own",
    );
    let assets = crate::dev::ensure_assets(true)?;
    crate::dev::ensure_node_packages()?;
    let cluster = Cluster::builder()
        .control_plane(ControlPlane::builder().assets_dir(assets))
        .start()
        .await
        .context("starting the local cluster (the node needs root; see the error above)")?;
    println!(
        "   node {} at {}, pods from {}, files under {}",
        cluster.node_name(),
        cluster.node_ip(),
        cluster.pod_cidr(),
        cluster.dir().display()
    );

    step(
        "loading images: eirinix (what the ssh init container copies into apps), the app rootfs v1.0 and v2.0",
    );
    let eirinix = load_eirinix_image(&cluster, args.image.as_deref())?;
    for version in ["v1.0", "v2.0"] {
        let image = app_image()?
            .with_name(format!("{ROOTFS}:{version}"))
            .contents("/etc/rootfs-version", format!("{version}\n"), 0o644);
        cluster.load_image(&image)?;
    }
    println!("   {eirinix}, {ROOTFS}:v1.0, {ROOTFS}:v2.0");

    let client = cluster.client().await?;
    let system = cluster.namespace("eirinix-demo-system").await?;
    let apps = cluster.namespace("eirini-demo").await?;
    println!("   system namespace {system}, app namespace {apps}");

    step("starting eirinix with every stock extension (URL mode, https://127.0.0.1:<port>)");
    let fingerprint = unique_name("demo");
    let common = common_args(&apps, &system, &fingerprint);
    let (aggregator, mut received) = syslog_receiver().await?;
    let logs_dir = tempfile::tempdir()?;
    let logs_config = logs_dir.path().join("logs.yaml");
    std::fs::write(
        &logs_config,
        format!(
            "namespaces: [{apps}]\nsinks:\n  - type: syslog\n    address: {aggregator}\nreplicas:\n  leaderElection: true\n  namespace: {system}\n  leaseDurationSecs: 5\n"
        ),
    )?;
    let rootfs_config = format!("{fingerprint}-rootfs");
    set_rootfs_version(&client, &system, &rootfs_config, "v1.0").await?;
    let stock_args = StockArgs {
        persi_fs_group: 2000,
        rootfs_version: Some("v1.0".into()),
        rootfs_image_pattern: Some(ROOTFS.into()),
        rootfs_config_map: Some(format!("{system}/{rootfs_config}")),
        rootfs_max_in_flight: 2,
        rootfs_roll_timeout: 120,
        rootfs_opt_out_annotation: "eirinix.org/rootfs-opt-out".into(),
        ssh_image: eirinix.clone(),
        ssh_image_binary: "/usr/local/bin/eirinix".into(),
        ssh_port: 2222,
        logs_config: Some(logs_config),
        ..Default::default()
    };
    let manager = stock::install(
        stock::framework(&common)?,
        &stock::ALL,
        &common,
        &stock_args,
    )?
    .build()?;
    let running = manager.start(client.clone()).await?;
    running
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "   serving {} on {}; configuration {fingerprint}-mutating-hook registered; logs to syslog://{aggregator}",
        stock::ALL.join(", "),
        running.local_addr()
    );

    step(
        "persi: a volume service instance (a PVC, as the broker creates it for `cf create-service`)",
    );
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &apps)
        .create(&PostParams::default(), &pvc)
        .await?;
    println!("   PersistentVolumeClaim {apps}/{CLAIM}");

    step("`cf push dora`: Eirini creates the app's StatefulSet (VCAP_SERVICES binds the volume)");
    let app = dora();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &apps);
    sets.create(&PostParams::default(), &app.statefulset())
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    let pod_name = app.pod_name(0);
    let pod = wait_ready(&pods, &pod_name, None).await?;
    println!(
        "   pod {pod_name} Running on {} with address {}",
        cluster.node_name(),
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()
    );

    step("what the extensions changed (the StatefulSet's pod template -> the pod that runs)");
    let template = app.statefulset().spec.unwrap_or_default().template;
    let submitted = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name.clone()),
            ..template.metadata.unwrap_or_default()
        },
        spec: template.spec,
        ..Default::default()
    };
    print_diff(&yaml(&submitted)?, &yaml(&without_controller_labels(&pod))?);

    step("inside the running container: persi's volume, written and read back by the app user");
    let inside = cluster
        .exec(
            &apps,
            &pod_name,
            "opi",
            [
                "sh",
                "-c",
                &format!(
                    "id; echo \"written by $(id -un) in $HOSTNAME\" > {DATA_DIR}/hello.txt; ls -ln {DATA_DIR}; cat {DATA_DIR}/hello.txt; grep {DATA_DIR} /proc/mounts"
                ),
            ],
        )
        .await?;
    anyhow::ensure!(
        inside.success(),
        "the app could not write its volume: {inside:?}"
    );
    print_indented(&inside.stdout);

    step(
        "ssh: `cf ssh dora` through the ssh proxy (a real OpenSSH client, a Kubernetes token as password)",
    );
    let ssh_out = ssh_through_proxy(&client, &apps, &system, &fingerprint, &app, &pod_name).await?;
    print_indented(&ssh_out);

    step(
        "logs: the app's stdout and stderr lines, from the real kubelet, at the syslog aggregator",
    );
    let mut seen = Vec::new();
    let wanted = ["Starting dora on port 8080", "dora: cache warmed"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|m: &String| m.contains(w)))
    {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some(msg)) => {
                println!("   aggregator received: {msg}");
                seen.push(msg);
            }
            _ => anyhow::bail!(
                "the aggregator did not receive {wanted:?} within 60 s (got {} lines)",
                seen.len()
            ),
        }
    }

    step(
        "rootfs: the operator sets the desired rootfs to v2.0; eirinix rolls the app, no one restarts it",
    );
    set_rootfs_version(&client, &system, &rootfs_config, "v2.0").await?;
    let old_uid = pod.metadata.uid.clone();
    let rolled = wait_ready(&pods, &pod_name, old_uid.as_deref()).await?;
    let version = cluster
        .exec(&apps, &pod_name, "opi", ["cat", "/etc/rootfs-version"])
        .await?;
    println!(
        "   new pod {pod_name} (uid {}) runs {} with label cloudfoundry.org/rootfs-version={}; /etc/rootfs-version says {}",
        rolled.metadata.uid.clone().unwrap_or_default(),
        running_image(&rolled).unwrap_or_default(),
        rolled
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("cloudfoundry.org/rootfs-version").cloned())
            .unwrap_or_default(),
        version.stdout.trim()
    );
    let kept = cluster
        .exec(
            &apps,
            &pod_name,
            "opi",
            ["cat", &format!("{DATA_DIR}/hello.txt")],
        )
        .await?;
    println!("   the volume survived the roll: {}", kept.stdout.trim());

    println!(
        "   metrics: {}",
        running
            .metrics()
            .render()
            .lines()
            .filter(|l| l.starts_with("eirinix_reviews_total") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    if args.keep {
        step("keeping the cluster (Ctrl-C stops it)");
        println!(
            "export KUBECONFIG={}",
            cluster.plane().kubeconfig_path().display()
        );
        eirinix_core::manager::shutdown_signal().await;
    }
    step("cleaning up");
    running.shutdown().await;
    manager_cleanup(&client, &common, &stock_args).await?;
    drop(cluster);
    println!("   done");
    Ok(())
}

/// The Eirini StatefulSet of `cf push dora` with `cf bind-service dora dora-data`.
fn dora() -> EiriniApp {
    let vcap = serde_json::json!({"eirini-persi": [{
        "name": "dora-data", "label": "eirini-persi", "plan": "default",
        "credentials": {"volume_id": CLAIM},
        "volume_mounts": [{"container_dir": DATA_DIR, "mode": "rw", "device_type": "shared",
                           "device": {"volume_id": CLAIM, "mount_config": {}}}]
    }]});
    let mut app = EiriniApp::new(APP).env("VCAP_SERVICES", &vcap.to_string());
    app.guid = "4e7c8f2a-9d1b-4f3e-8a6c-2b5d7e9f1a3c".into();
    app.image = format!("{ROOTFS}:v1.0");
    app.rootfs_version = Some("v1.0".into());
    app.command = vec![
        "sh".into(),
        "-c".into(),
        "echo \"Starting dora on port $PORT\"; echo 'dora: cache warmed' >&2; mkdir -p /tmp/www; echo 'Hello from dora' > /tmp/www/index.html; exec httpd -f -vv -p \"$PORT\" -h /tmp/www".into(),
    ];
    app
}

/// The eirinix image: the given archive, or one built from this source tree.
fn load_eirinix_image(cluster: &Cluster, archive: Option<&Path>) -> anyhow::Result<String> {
    if let Some(path) = archive {
        let archive = ImageArchive::read(path)?;
        cluster.load_image_archive(&archive)?;
        return Ok(archive.name);
    }
    // This very binary, when it is static (as this repository builds it), is the image's.
    let preset = std::env::var_os("EIRINIX_IMAGE_BINARY").is_some();
    let own = std::env::current_exe()
        .ok()
        .filter(|exe| !preset && is_static(exe));
    if own.is_none() && !preset {
        eprintln!(
            "eirinix: building the static eirinix binary for the image from this source tree (the first build takes a few minutes; --image FILE uses an archive from scripts/build-image.sh)"
        );
    }
    let image = eirinix_testenv::eirini::eirinix_image_from(own).map_err(|e| {
        anyhow::anyhow!("{e} (or pass --image with an archive from scripts/build-image.sh)")
    })?;
    cluster.load_image(&image)?;
    Ok(image.name().to_owned())
}

/// Whether a 64-bit little-endian ELF executable is statically linked: no `PT_INTERP` program
/// header (a dynamic one names its loader there).
fn is_static(exe: &Path) -> bool {
    use std::io::Read as _;
    let mut head = vec![0u8; 16 * 1024];
    let n = std::fs::File::open(exe)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let head = &head[..n];
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        head.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    // ELF magic, 64-bit, little-endian.
    if !head.starts_with(b"\x7fELF") || head.get(4) != Some(&2) || head.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..usize::from(phnum)).all(|i| {
        let at = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i * usize::from(phentsize));
        u32_at(at).is_some_and(|t| t != PT_INTERP)
    })
}

/// Creates or updates the rootfs ConfigMap (key `version`), as an operator would.
async fn set_rootfs_version(
    client: &kube::Client,
    ns: &str,
    name: &str,
    version: &str,
) -> anyhow::Result<()> {
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"version": version}
    });
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("eirinix-demo").force(),
            &Patch::Apply(&cm),
        )
        .await?;
    Ok(())
}

/// Waits until pod `name` is Ready (and, with `replacing`, is not that pod uid any more).
async fn wait_ready(pods: &Api<Pod>, name: &str, replacing: Option<&str>) -> anyhow::Result<Pod> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pod = pods.get_opt(name).await?;
        if let Some(p) = &pod
            && eirinix_testenv::support::pod_is_ready(p)
            && (replacing.is_none() || p.metadata.uid.as_deref() != replacing)
        {
            return Ok(p.clone());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "pod {name} not Ready within {WAIT:?}; its status: {:?}",
                pod.and_then(|p| p.status)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Labels the StatefulSet controller adds to every pod (not the extensions' doing).
fn without_controller_labels(pod: &Pod) -> Pod {
    let mut pod = pod.clone();
    if let Some(labels) = pod.metadata.labels.as_mut() {
        labels.retain(|k, _| {
            !matches!(
                k.as_str(),
                "controller-revision-hash"
                    | "statefulset.kubernetes.io/pod-name"
                    | "apps.kubernetes.io/pod-index"
            )
        });
    }
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = None;
        spec.subdomain = None;
        spec.node_name = None;
    }
    pod
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

/// Starts the ssh proxy, gives a developer a token allowed `pods/exec` on the app, and runs a
/// command in the app with the OpenSSH client; returns what it printed.
async fn ssh_through_proxy(
    client: &kube::Client,
    apps: &str,
    system: &str,
    fingerprint: &str,
    app: &EiriniApp,
    pod: &str,
) -> anyhow::Result<String> {
    // The master key the webhook made at the app's admission: the proxy derives from it the
    // app's keys and its own host key.
    let master_secret = eirinix_ssh::SshOptions::default().master_secret_name(fingerprint);
    let master = eirinix_ssh::MasterKey::from_secret(client, system, &master_secret, false)
        .await
        .context("the ssh master key")?;
    let key = master.proxy_host_key()?;
    let mut config = eirinix_ssh::ProxyConfig::new(master)?;
    config.listen = "127.0.0.1:0".parse()?;
    config.namespace = Some(apps.into());
    let proxy = eirinix_ssh::Proxy::bind(config, client.clone()).await?;
    let port = proxy.local_addr()?.port();
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(proxy.serve(cancel.clone()));
    println!("   ssh proxy on 127.0.0.1:{port}");

    let token = developer_token(client, apps).await?;
    let dir = tempfile::tempdir()?;
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{port} {}\n", key.public_key().to_openssh()?),
    )?;
    let secret = dir.path().join("token");
    std::fs::write(&secret, token)?;
    let askpass = dir.path().join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\ncat '{}'\n", secret.display()))?;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700))?;
    let user = format!("{}/0", app.guid);
    let remote = format!(
        "echo \"$(id -un)@$HOSTNAME, PID 1: $(tr '\\0' ' ' < /proc/1/cmdline)\"; cat {DATA_DIR}/hello.txt; wget -qO- http://127.0.0.1:$PORT/"
    );
    println!(
        "   $ ssh -p {port} {user}@127.0.0.1 '<command>'   (password: a ServiceAccount token)"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-p", &port.to_string()])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "IdentityAgent=none",
            ])
            .args(["-l", &user, "127.0.0.1", &remote])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .context("ssh did not finish within 60 s")?
    .context("running ssh (Debian package openssh-client)")?;
    cancel.cancel();
    let _ = serving.await;
    anyhow::ensure!(
        out.status.success(),
        "ssh to {pod} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A ServiceAccount of the app's space allowed to `cf ssh` (create `pods/exec`), and a token.
async fn developer_token(client: &kube::Client, ns: &str) -> anyhow::Result<String> {
    let name = "dora-developer";
    let meta = || ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(),
                ..Default::default()
            },
        )
        .await?;
    let rules = vec![
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods/exec".into()]),
            verbs: vec!["create".into()],
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        },
    ];
    Api::<Role>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &Role {
                metadata: meta(),
                rules: Some(rules),
            },
        )
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta(),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: name.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: name.into(),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }]),
            },
        )
        .await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(name, &pp, &request)
        .await?;
    issued
        .status
        .map(|s| s.token)
        .context("the apiserver issued no token")
}

#[cfg(test)]
mod tests {
    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        let own = std::env::current_exe().unwrap();
        // This repository builds everything statically (.cargo/config.toml).
        assert!(super::is_static(&own), "{}", own.display());
        assert!(
            !super::is_static(std::path::Path::new("/bin/ls")),
            "/bin/ls is dynamic"
        );
        assert!(
            !super::is_static(std::path::Path::new("/etc/hostname")),
            "not ELF"
        );
    }
}
