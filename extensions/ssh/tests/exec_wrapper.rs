//! The `--exec` wrapper as a real process: this test binary re-runs itself as the daemon
//! command (`sshd_main`), exactly as the container runs `eirinix-sshd --exec -- CMD`.
//!
//! `harness = false`: `--exec` forks, which must happen before any thread exists, so the
//! daemon side needs its own `main` (libtest starts threads).

mod common;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::*;
use eirinix_ssh::keys::{self, AppKeys};

/// Set when this binary runs as the daemon command rather than as the test.
const AS_SSHD: &str = "EIRINIX_SSH_TEST_RUN_AS_SSHD";
const T: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    if std::env::var_os(AS_SSHD).is_some() {
        return eirinix_ssh::sshd::sshd_main(std::env::args_os().skip(1));
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    type Test = fn() -> Pin<Box<dyn Future<Output = ()>>>;
    let tests: [(&str, Test); 4] = [
        (
            "the_exec_wrapper_keeps_the_app_pid_env_exit_code_and_signals",
            || Box::pin(wrapper_keeps_pid_env_exit_code_and_signals()),
        ),
        (
            "without_keys_the_app_still_starts_and_keeps_its_exit_code",
            || Box::pin(without_keys_the_app_still_starts()),
        ),
        ("install_copies_the_binary", || {
            Box::pin(install_copies_the_binary())
        }),
        (
            "sidecar_mode_serves_from_files_and_idles_without_keys",
            || Box::pin(sidecar_mode()),
        ),
    ];
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let mut failed = 0;
    for (name, test) in selected {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // Every test is bounded; a panic fails it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(120), test())
                    .await
                    .expect("test timed out")
            })
        }));
        match outcome {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed == 0 {
        println!("\ntest result: ok");
        ExitCode::SUCCESS
    } else {
        println!("\ntest result: FAILED. {failed} failed");
        ExitCode::FAILURE
    }
}

/// This binary, set up to behave as `eirinix-sshd`.
fn sshd() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().expect("current exe"));
    cmd.env(AS_SSHD, "1").kill_on_drop(true);
    cmd
}

/// Time from `started` until the daemon on `port` sends its SSH banner (polled every 1 ms).
async fn banner(port: u16, started: Instant) -> Duration {
    use tokio::io::AsyncReadExt as _;
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).await.is_ok() && &buf == b"SSH-2.0-" {
                return started.elapsed();
            }
        }
        assert!(started.elapsed() < T, "no SSH banner on port {port}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn wrapper_keeps_pid_env_exit_code_and_signals() {
    init_tracing();
    let keys = AppKeys::generate("app-wrap").unwrap();
    let port = free_port();
    let secret = keys.to_secret_data().unwrap();
    let host_pem = String::from_utf8(secret[keys::HOST_KEY].0.clone()).unwrap();
    let authorized = String::from_utf8(secret[keys::AUTHORIZED_KEY].0.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("app-env");
    let pid_file = dir.path().join("app-pid");

    // The command the webhook produces: <daemon> --exec -- <original command>.
    let script = format!(
        "echo $$ > {pid}; env > {env}; trap 'exit 143' TERM; sleep 60 & wait",
        pid = pid_file.display(),
        env = env_file.display()
    );
    let started = Instant::now();
    let mut app = sshd()
        .args(["--exec", "--", "/bin/sh", "-c", &script])
        .env("EIRINIX_SSH_HOST_KEY", &host_pem)
        .env("EIRINIX_SSH_AUTHORIZED_KEYS", &authorized)
        .env("EIRINIX_SSH_PORT", port.to_string())
        .env("EIRINIX_SSH_LISTEN", "127.0.0.1")
        .env("APP_MARKER", "wrapped-app")
        .spawn()
        .unwrap();
    let wrapper_pid = app.id().unwrap();

    // The daemon answers within milliseconds of the wrapper's start.
    let banner_at = banner(port, started).await;
    println!("daemon ready (SSH banner read) {banner_at:?} after spawning the wrapper");
    assert!(
        banner_at < Duration::from_secs(2),
        "slow start: {banner_at:?}"
    );

    // The app is the wrapper process itself (exec, same PID) and never sees the keys.
    let pid: u32 = eventually(T, "the app's pid file", || async {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;
    assert_eq!(
        pid, wrapper_pid,
        "the app keeps the PID of the wrapped command"
    );
    let env = eventually(T, "the app's env", || async {
        std::fs::read_to_string(&env_file)
            .ok()
            .filter(|e| e.contains("APP_MARKER"))
    })
    .await;
    assert!(env.contains("APP_MARKER=wrapped-app"));
    assert!(
        !env.contains("EIRINIX_SSH_HOST_KEY"),
        "keys leaked to the app: {env}"
    );
    assert!(!env.contains("EIRINIX_SSH_AUTHORIZED_KEYS"), "{env}");

    // ssh reaches the forked daemon; sessions have the app environment.
    let files = SshFiles::new(Some(&keys.client), keys.host_public(), port);
    let out = run(
        files
            .ssh_with_key(port, "vcap")
            .arg("echo $APP_MARKER; echo ${EIRINIX_SSH_HOST_KEY:-none}"),
        b"",
        T,
    )
    .await;
    assert_eq!(text(&out).0, "wrapped-app\nnone\n", "{:?}", text(&out));

    // A signal to the wrapped command's PID reaches the app; its exit code is the wrapper's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(wrapper_pid).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(T, app.wait()).await.unwrap().unwrap();
    assert_eq!(
        status.code(),
        Some(143),
        "the app's trap decided the exit code"
    );

    // The daemon goes away with the app.
    eventually(T, "the daemon to stop with the app", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

async fn without_keys_the_app_still_starts() {
    let out = tokio::time::timeout(
        T,
        sshd()
            .args(["--exec", "--", "/bin/sh", "-c", "echo app-ran; exit 3"])
            .env_remove("EIRINIX_SSH_HOST_KEY")
            .env_remove("EIRINIX_SSH_AUTHORIZED_KEYS")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout, "app-ran\n");
    assert!(stderr.contains("ssh access disabled"), "{stderr}");

    let out = sshd()
        .args(["--exec", "--", "/nonexistent/app"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
}

async fn install_copies_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let dest: PathBuf = dir.path().join("sub").join("eirinix-sshd");
    let out = sshd().arg("install").arg(&dest).output().await.unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let out = tokio::process::Command::new(&dest)
        .env(AS_SSHD, "1")
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("--exec"));
}

async fn sidecar_mode() {
    // Keys from files, port from the flag: the sidecar (and `eirinix sshd`) serving mode.
    let keys = AppKeys::generate("app-sidecar").unwrap();
    let secret = keys.to_secret_data().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host-key");
    let authorized = dir.path().join("authorized-keys");
    std::fs::write(&host, &secret[keys::HOST_KEY].0).unwrap();
    std::fs::write(&authorized, &secret[keys::AUTHORIZED_KEY].0).unwrap();
    let port = free_port();
    let started = Instant::now();
    let mut daemon = sshd()
        .args(["--listen", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--host-key-file")
        .arg(&host)
        .arg("--authorized-keys-file")
        .arg(&authorized)
        .env_remove("EIRINIX_SSH_HOST_KEY")
        .env("APP_MARKER", "sidecar")
        .spawn()
        .unwrap();
    let ready = banner(port, started).await;
    println!("foreground daemon ready {ready:?} after spawn");
    let files = SshFiles::new(Some(&keys.client), keys.host_public(), port);
    let out = run(
        files.ssh_with_key(port, "vcap").arg("echo $APP_MARKER"),
        b"",
        T,
    )
    .await;
    assert_eq!(text(&out).0, "sidecar\n", "{:?}", text(&out));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(daemon.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(T, daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful stop on SIGTERM: {status:?}");

    // Without keys: --idle-without-keys waits (no crash loop) and stops on SIGTERM.
    let mut idle = sshd()
        .arg("--idle-without-keys")
        .env_remove("EIRINIX_SSH_HOST_KEY")
        .env_remove("EIRINIX_SSH_AUTHORIZED_KEYS")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        idle.try_wait().unwrap().is_none(),
        "idles instead of exiting"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(idle.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = tokio::time::timeout(T, idle.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    assert!(
        text(&out).1.contains("ssh access disabled"),
        "{:?}",
        text(&out)
    );
    // Without the flag, missing keys are an error.
    let out = sshd()
        .env_remove("EIRINIX_SSH_HOST_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}
