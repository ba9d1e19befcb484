//! The `eirinix` binary as operators use it.

use std::process::Command;

fn eirinix() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eirinix"));
    c.env_remove("KUBECONFIG").env("RUST_LOG", "warn");
    c
}

#[test]
fn help_of_every_subcommand_is_complete() {
    let top = eirinix().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    for sub in [
        "run",
        "register",
        "unregister",
        "broker",
        "ssh-proxy",
        "rootfs-roll",
        "review",
        "dev",
        "demo",
    ] {
        assert!(text.contains(sub), "top-level help lacks {sub}:\n{text}");
        let out = eirinix().args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage: eirinix"), "{sub}: {help}");
    }
    let run = String::from_utf8_lossy(&eirinix().args(["run", "--help"]).output().unwrap().stdout)
        .to_string();
    for flag in [
        "--namespace",
        "--host",
        "--port",
        "--service-name",
        "--webhook-namespace",
        "--fingerprint",
        "--failure-policy",
        "--register",
        "--cert-file",
        "--persi-fs-group",
        "--rootfs-version",
        "--repair-interval",
        "--cert-check-interval",
        "NAMESPACE",
        "OPERATOR_WEBHOOK_PORT",
    ] {
        assert!(run.contains(flag), "run --help lacks {flag}");
    }
}

#[test]
fn invalid_combinations_fail_at_start_with_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--host", "127.0.0.1", "--service-name", "x"],
            "cannot be used with",
        ),
        (
            &["run", "--host", "127.0.0.1", "--extensions", "nope"],
            "unknown extension \"nope\"",
        ),
        (
            &["run", "--host", "127.0.0.1", "--timeout-seconds", "31"],
            "31 is not in 1..=30",
        ),
        (
            &["run", "--host", "127.0.0.1", "--cert-check-interval", "0"],
            "0 is not in 1..",
        ),
        (
            &["run", "--host", "127.0.0.1", "--cert-file", "/x"],
            "--key-file",
        ),
        (&["run"], "--service-name (in a cluster) or --host"),
        (
            &[
                "run",
                "--host",
                "127.0.0.1",
                "--extensions",
                "rootfs",
                "--rootfs-config-map",
                "noslash",
            ],
            "namespace/name",
        ),
        (
            &[
                "run",
                "--host",
                "127.0.0.1",
                "--extensions",
                "persi",
                "--fingerprint",
                "Bad_Name",
            ],
            "DNS-1123",
        ),
        (
            &["run", "--host", "127.0.0.1"],
            "the logs extension needs --logs-config",
        ),
        (
            &[
                "run",
                "--host",
                "127.0.0.1",
                "--extensions",
                "ssh",
                "--ssh-image",
                "",
            ],
            "--ssh-image must name",
        ),
    ];
    for (args, expected) in cases {
        let out = eirinix().args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}

#[test]
fn legacy_eirinix_environment_names_are_accepted() {
    // An unknown extension fails before any cluster is needed, after the environment was read:
    // the port from OPERATOR_WEBHOOK_PORT must have parsed (an invalid one fails with its name).
    let out = eirinix()
        .args(["run", "--extensions", "persi"])
        .env("OPERATOR_WEBHOOK_HOST", "127.0.0.1")
        .env("OPERATOR_WEBHOOK_PORT", "not-a-port")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-port"), "{err}");
}

#[test]
fn review_prints_the_patch_and_the_patched_pod() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, r#"
apiVersion: v1
kind: Pod
metadata: { name: app-0, namespace: eirini, labels: { cloudfoundry.org/source_type: APP } }
spec:
  containers:
    - name: opi
      image: app
      env:
        - name: VCAP_SERVICES
          value: '{"eirini-persi":[{"name":"vol","credentials":{"volume_id":"claim-1"},"volume_mounts":[{"container_dir":"/data","mode":"r"}]}]}'
"#).unwrap();
    let out = eirinix()
        .args(["review", "-e", "persi"])
        .arg(&pod)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("# patch") && text.contains("/spec/volumes"),
        "{text}"
    );
    assert!(
        text.contains("claimName: claim-1") && text.contains("readOnly: true"),
        "{text}"
    );

    std::fs::write(&pod, r#"{"metadata":{"name":"a","namespace":"n","labels":{"cloudfoundry.org/source_type":"APP"}},"spec":{"containers":[{"name":"opi","env":[{"name":"VCAP_SERVICES","value":"{not json"}]}]}}"#).unwrap();
    let out = eirinix()
        .args(["review", "-e", "persi"])
        .arg(&pod)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VCAP_SERVICES"));
}

/// A pod the webhook's object selector excludes (not an Eirini app) is reported as not sent,
/// exactly as the apiserver would skip it; `--all-pods` reviews it anyway.
#[test]
fn review_says_when_the_object_selector_excludes_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod.json");
    std::fs::write(&pod, r#"{"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[{"name":"opi","env":[{"name":"VCAP_SERVICES","value":"{\"eirini-persi\":[{\"name\":\"v\",\"credentials\":{\"volume_id\":\"c\"},\"volume_mounts\":[{\"container_dir\":\"/d\"}]}]}"}]}]}}"#).unwrap();
    let out = eirinix()
        .args(["review", "-e", "persi"])
        .arg(&pod)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not sent") && stderr.contains("--all-pods"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing is printed as a patch: {out:?}"
    );

    let out = eirinix()
        .args(["review", "-e", "persi", "--all-pods"])
        .arg(&pod)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("claimName: c"), "{text}");
}

#[test]
fn demo_shows_every_extension_at_work_on_a_running_pod() {
    let out = eirinix().arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        // The app's pod runs on the node, mutated by every webhook.
        "Running on eirinix-node",
        "+     fsGroup: 2000",
        "+       claimName: dora-data-7f3a",
        "+   initContainers:",
        "+     - /eirinix/ssh/eirinix-sshd",
        // persi, from inside the container: the app user wrote the volume.
        "uid=2000(vcap)",
        "written by vcap in dora-dev-7f3a9c2e1b-0",
        // ssh through the proxy: the app's own process is PID 1, its files and port are there.
        "vcap@dora-dev-7f3a9c2e1b-0, PID 1: httpd -f -vv -p 8080",
        "Hello from dora",
        // logs: stdout and stderr lines of the real container at the aggregator.
        "[APP/PROC/WEB/0]",
        "] Starting dora on port 8080",
        "] dora: cache warmed",
        // rootfs: rolled onto the new image without anyone restarting the app.
        "runs eirinix.local/cflinuxfs4:v2.0 with label cloudfoundry.org/rootfs-version=v2.0; /etc/rootfs-version says v2.0",
        "the volume survived the roll: written by vcap",
        "done",
    ] {
        assert!(
            text.contains(expected),
            "demo output lacks {expected:?}:\n{text}"
        );
    }
}

#[test]
fn apiserver_only_demo_shows_the_stored_changes() {
    let out = eirinix()
        .args(["demo", "--apiserver-only"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "+     persistentVolumeClaim:",
        "claimName: dora-data-7f3a",
        "+     fsGroup: 2000",
        "+     cloudfoundry.org/rootfs-version: v2.0",
        "+     image: demo.registry.local/cloudfoundry/cflinuxfs4:v2.0",
        "outcome=\"patched\"} 1",
        "+   initContainers:",
        "aggregator received:",
        "Starting dora on port 8080",
        "done",
    ] {
        assert!(
            text.contains(expected),
            "demo output lacks {expected:?}:\n{text}"
        );
    }
    assert!(
        !text.contains("tolerations"),
        "apiserver defaults leak into the diff"
    );
}

/// `register --dry-run` with only EiriniX environment names set: the configuration it prints.
fn dry_run_with(env: &[(&str, &str)]) -> String {
    let mut cmd = eirinix();
    cmd.args(["register", "--dry-run", "--extensions", "persi"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_eirinix_environment_name_is_read() {
    // URL mode: NAMESPACE, OPERATOR_WEBHOOK_HOST, OPERATOR_WEBHOOK_PORT.
    let url = dry_run_with(&[
        ("NAMESPACE", "eirini-apps"),
        ("OPERATOR_WEBHOOK_HOST", "10.1.2.3"),
        ("OPERATOR_WEBHOOK_PORT", "3999"),
    ]);
    assert!(url.contains("url: https://10.1.2.3:3999/persi"), "{url}");
    assert!(url.contains("- eirini-apps"), "namespaceSelector: {url}");
    // Service mode: OPERATOR_SERVICE_NAME, OPERATOR_WEBHOOK_NAMESPACE (the registered port is
    // the Service's, OPERATOR_WEBHOOK_PORT when no Service port is given).
    let svc = dry_run_with(&[
        ("OPERATOR_SERVICE_NAME", "eirinix-webhook"),
        ("OPERATOR_WEBHOOK_NAMESPACE", "eirinix-sys"),
        ("OPERATOR_WEBHOOK_PORT", "3999"),
    ]);
    for expected in [
        "name: eirinix-webhook",
        "namespace: eirinix-sys",
        "port: 3999",
    ] {
        assert!(svc.contains(expected), "{expected}: {svc}");
    }
    assert!(!svc.contains("url:"), "{svc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eirini_extension_register_false_is_split_mode() {
    let cp = eirinix_testenv::ControlPlane::shared()
        .await
        .expect("control plane");
    let client = cp.client().await.unwrap();
    let system = cp.namespace("legacy-sys").await.unwrap();
    let fingerprint = eirinix_testenv::unique_name("legacy");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut run = eirinix()
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("OPERATOR_WEBHOOK_HOST", "127.0.0.1")
        .env("OPERATOR_WEBHOOK_PORT", "0")
        .env("OPERATOR_WEBHOOK_NAMESPACE", &system)
        .env("EIRINI_EXTENSION_REGISTER", "false")
        .args([
            "run",
            "--extensions",
            "persi",
            "--bind-address",
            "127.0.0.1",
        ])
        .args([
            "--fingerprint",
            &fingerprint,
            "--admin-port",
            &admin.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Ready (certificates, handshake) without writing a configuration: split mode.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ready = loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", admin))
            .and_then(|mut s| {
                use std::io::{Read as _, Write as _};
                s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out.contains(" 200 "))
            })
            .unwrap_or(false);
        if ok || std::time::Instant::now() > deadline || run.try_wait().unwrap().is_some() {
            break ok;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = run.kill();
    let _ = run.wait();
    assert!(ready, "eirinix run never became ready");
    let configs: kube::Api<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
    > = kube::Api::all(client);
    assert!(
        configs
            .get_opt(&format!("{fingerprint}-mutating-hook"))
            .await
            .unwrap()
            .is_none(),
        "EIRINI_EXTENSION_REGISTER=false must not register"
    );
}

#[test]
fn what_cannot_work_is_refused_with_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        // A remote apiserver cannot call 127.0.0.1: the demo on a cluster needs the address.
        (&["demo", "--cluster"], "--cluster needs --webhook-host"),
        (
            &["demo", "--cluster", "--webhook-host", " "],
            "--cluster needs --webhook-host",
        ),
        (&["demo", "--webhook-host", "10.0.0.5"], "--cluster"),
        // Port 0 is picked when the server starts: register has no URL to write.
        (
            &[
                "register",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--extensions",
                "persi",
            ],
            "cannot register a URL with port 0",
        ),
        (
            &[
                "register",
                "--dry-run",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--extensions",
                "persi",
            ],
            "cannot register a URL with port 0",
        ),
        // The in-pod daemon only runs as the first argument; no panic otherwise.
        (
            &["--log-format", "text", "sshd", "--port", "2222"],
            "sshd must be the first argument",
        ),
    ];
    for (args, expected) in cases {
        let out = eirinix().args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(if err.contains("Usage:") { 2 } else { 1 }),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err:?}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Service mode registers the Service's port, whatever the server's.
    let out = eirinix()
        .args([
            "register",
            "--dry-run",
            "--service-name",
            "eirinix",
            "--webhook-namespace",
            "eirinix-system",
            "--service-port",
            "443",
            "--port",
            "0",
            "--extensions",
            "persi",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("port: 443"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_demo_registers_the_host_it_is_given() {
    let cp = eirinix_testenv::ControlPlane::shared()
        .await
        .expect("control plane (see eirinix-testenv README)");
    // `localhost`, not the 127.0.0.1 the local demo uses: the registered URL and the serving
    // certificate carry the given host, and the apiserver reaches the webhook through it.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_eirinix"))
        .args(["demo", "--cluster", "--webhook-host", "localhost"])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "URL mode, https://localhost:<port>",
        "+     cloudfoundry.org/rootfs-version: v2.0",
        "claimName: dora-data-7f3a",
    ] {
        assert!(
            text.contains(expected),
            "demo output lacks {expected:?}:\n{text}"
        );
    }
}

/// `GET path` on `127.0.0.1:port` over plain HTTP/1.0: the whole response, or `None` when the
/// port does not answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The families an OpenMetrics text page declares, or what breaks the format: a family declared
/// twice (Prometheus drops the whole scrape), a sample of no declared family, no `# EOF` end.
fn openmetrics_families(page: &str) -> Result<Vec<(String, String)>, String> {
    let body = page
        .strip_suffix("# EOF\n")
        .ok_or("the page does not end with # EOF")?;
    let mut families: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or(format!("bad TYPE line {line:?}"))?;
            if families.iter().any(|(n, _)| n == name) {
                return Err(format!("family {name} declared twice"));
            }
            families.push((name.to_owned(), kind.to_owned()));
        } else if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        } else if line.starts_with('#') || line.is_empty() {
            return Err(format!("unexpected line {line:?}"));
        } else {
            let sample = line
                .split(['{', ' '])
                .next()
                .ok_or(format!("bad sample line {line:?}"))?;
            let (family, kind) = families
                .last()
                .ok_or(format!("sample {sample} before any TYPE line"))?;
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            if !suffixes.iter().any(|s| sample == format!("{family}{s}")) {
                return Err(format!(
                    "sample {sample} is not of family {family} ({kind})"
                ));
            }
        }
    }
    Ok(families)
}

#[test]
fn the_openmetrics_check_catches_what_prometheus_would_refuse() {
    let good = "# HELP a A.\n# TYPE a counter\na_total 1\n# TYPE b gauge\nb{x=\"1\"} 2\n# EOF\n";
    assert_eq!(openmetrics_families(good).unwrap().len(), 2);
    for bad in [
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na_total 1\n# TYPE a counter\na_total 2\n# EOF\n",
        "# TYPE a counter\nb_total 1\n# EOF\n",
        "a_total 1\n# EOF\n",
    ] {
        assert!(openmetrics_families(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_stock_extensions_share_one_valid_metrics_page() {
    let cp = eirinix_testenv::ControlPlane::shared()
        .await
        .expect("control plane");
    let system = cp.namespace("metrics-sys").await.unwrap();
    let apps = cp.namespace("metrics-apps").await.unwrap();
    let fingerprint = eirinix_testenv::unique_name("metrics");
    // A syslog receiver that takes and discards (the logs extension needs a sink).
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in sink.incoming().flatten() {
            std::thread::spawn(move || std::io::copy(&mut &s, &mut std::io::sink()));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let logs_config = dir.path().join("logs.yaml");
    std::fs::write(
        &logs_config,
        format!("namespaces: [{apps}]\nsinks:\n  - type: syslog\n    address: {sink_addr}\n"),
    )
    .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stderr = dir.path().join("eirinix.err");
    let mut run = eirinix()
        .env("KUBECONFIG", cp.kubeconfig_path())
        .args([
            "run",
            "--extensions",
            "persi,ssh,logs,rootfs",
            "--host",
            "127.0.0.1",
            "--bind-address",
            "127.0.0.1",
            "--port",
            "0",
            "--fingerprint",
            &fingerprint,
            "--namespace",
            &apps,
            "--webhook-namespace",
            &system,
            "--admin-port",
            &admin.to_string(),
        ])
        .arg("--logs-config")
        .arg(&logs_config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let ready = loop {
        if http_get(admin, "/readyz").is_some_and(|r| r.contains(" 200 ")) {
            break true;
        }
        if std::time::Instant::now() > deadline || run.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let page = ready.then(|| http_get(admin, "/metrics")).flatten();
    let _ = run.kill();
    let _ = run.wait();
    assert!(
        ready,
        "eirinix run never became ready: {}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    let page = page.expect("/metrics answers");
    let (head, body) = page.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let families = openmetrics_families(body).unwrap_or_else(|e| panic!("{e}:\n{body}"));
    for name in [
        "eirinix_reviews",
        "eirinix_review_duration_seconds",
        "eirinix_certificate_expiry_timestamp_seconds",
        "eirinix_ssh_injected",
        "eirinix_logs_lines_read",
        "eirinix_logs_sink_sent",
        "eirinix_rootfs_rolls_started",
    ] {
        assert!(
            families.iter().any(|(n, _)| n == name),
            "family {name} missing from:\n{body}"
        );
    }
    for hook in ["persi", "ssh"] {
        assert!(
            body.contains(&format!(
                "eirinix_reviews_total{{extension=\"{hook}\",outcome=\"patched\"}} 0"
            )),
            "{hook} reviews missing:\n{body}"
        );
    }
}
