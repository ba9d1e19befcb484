//! The last step of docs/GUIDE.md, as the guide shows it: the extension's binary in an image,
//! installed with its chart on the real single-node cluster of eirinix-testenv, an app created
//! afterwards runs with the message, and the uninstall leaves nothing behind. Every shell
//! command below is in the guide verbatim (checked first), and runs here as written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use eirinix_testenv::support::wait_pod_ready;
use eirinix_testenv::{Cluster, ImageBuilder};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

const WAIT: Duration = Duration::from_secs(300);

/// The guide's commands, in its order.
const INSTALL: &str = "helm install sticky examples/sticky-message/chart --namespace sticky --create-namespace --set message='hello from the guide' --wait --timeout 5m";
const APP: &str = "kubectl apply -f examples/sticky-message/app.yaml";
const CHECK: &str = r#"kubectl -n apps exec dora-0 -c opi -- sh -c 'echo "$STICKY_MESSAGE"'"#;
const UNINSTALL: &str = "helm uninstall sticky --namespace sticky --wait";
const DEREGISTER: &str = "kubectl delete mutatingwebhookconfiguration sticky-mutating-hook";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_command_of_this_test_is_in_the_guide() {
    let guide = std::fs::read_to_string(repo().join("docs/GUIDE.md")).expect("docs/GUIDE.md");
    for command in [INSTALL, APP, CHECK, UNINSTALL, DEREGISTER] {
        assert!(guide.contains(command), "docs/GUIDE.md lacks `{command}`");
    }
    // The extension shown in the guide is the example's code, whole.
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("src/lib.rs");
    let implementation = &lib[lib.find("#[async_trait]").expect("the impl")..];
    assert!(
        guide.contains(implementation.trim_end()),
        "docs/GUIDE.md shows an outdated Extension impl: copy it from src/lib.rs"
    );
    // The image step of the guide is this test's code.
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chart.rs"))
            .expect("this file");
    let image_step = source
        // The last marker is the real one (the first is in this string).
        .rsplit("// guide: image")
        .next()
        .and_then(|s| s.split("// guide: end").next())
        .expect("the marked image step");
    for line in image_step.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            guide.contains(line),
            "docs/GUIDE.md lacks the image step line `{line}`"
        );
    }
}

/// Runs one of the guide's commands from the repository root, with the cluster's kubeconfig
/// and the provisioned helm and kubectl first on PATH.
fn run(cluster: &Cluster, command: &str, scratch: &Path) -> String {
    let assets =
        eirinix_testenv::assets_dir().expect("provisioned binaries (scripts/provision.sh --helm)");
    let path = format!(
        "{}:{}",
        assets.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", command])
        .current_dir(repo())
        .env("PATH", path)
        .env("KUBECONFIG", cluster.plane().kubeconfig_path())
        .env("HELM_CACHE_HOME", scratch.join("helm-cache"))
        .env("HELM_CONFIG_HOME", scratch.join("helm-config"))
        .env("HELM_DATA_HOME", scratch.join("helm-data"))
        .output()
        .expect("bash runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{command}` failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_the_extension_and_a_new_app_runs_with_the_message() {
    eirinix_testenv::support::init_tracing();
    // guide: image
    let binary = env!("CARGO_BIN_EXE_sticky-message");
    let image = ImageBuilder::new("eirinix.local/sticky-message:dev")
        .file("/usr/local/bin/sticky-message", binary, 0o755)
        .entrypoint(["/usr/local/bin/sticky-message"])
        .user("65532:65532");
    let cluster = Cluster::builder().image(image).start().await.unwrap();
    // guide: end
    let client = cluster.client().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();

    run(&cluster, INSTALL, scratch.path());
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs
        .get("sticky-mutating-hook")
        .await
        .expect("registered at start");
    let webhook = &config.webhooks.unwrap()[0];
    let service = webhook
        .client_config
        .service
        .as_ref()
        .expect("service mode");
    assert_eq!(
        (service.name.as_str(), service.namespace.as_str()),
        ("sticky", "sticky")
    );

    run(&cluster, APP, scratch.path());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let pod = wait_pod_ready(&pods, "dora-0", WAIT).await;
    let env = &pod.spec.unwrap().containers[0].env;
    assert!(
        env.iter().flatten().any(|e| e.name == "STICKY_MESSAGE"),
        "the stored pod carries the injected variable: {env:?}"
    );
    assert_eq!(
        run(&cluster, CHECK, scratch.path()).trim(),
        "hello from the guide"
    );

    run(&cluster, UNINSTALL, scratch.path());
    run(&cluster, DEREGISTER, scratch.path());
    assert!(
        configs
            .get_opt("sticky-mutating-hook")
            .await
            .unwrap()
            .is_none()
    );
    // Nothing of the release is left that would block app pods: a new instance starts.
    pods.delete("dora-0", &Default::default()).await.unwrap();
    eirinix_testenv::support::eventually(WAIT, "dora-0 re-created", || async {
        pods.get_opt("dora-0")
            .await
            .ok()
            .flatten()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
    })
    .await;
    let again = wait_pod_ready(&pods, "dora-0", WAIT).await;
    assert!(
        !again.spec.unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "STICKY_MESSAGE"),
        "after the uninstall no webhook mutates the app"
    );
}
