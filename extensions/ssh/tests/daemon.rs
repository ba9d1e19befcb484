//! The in-pod daemon against the real OpenSSH client (`ssh` from openssh-client).
//!
//! The daemon runs in-process on a loopback port with the keys and environment the webhook
//! injects; tests/exec_wrapper.rs runs the real `--exec` wrapper as a separate process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use eirinix_ssh::keys::AppKeys;
use russh::ChannelMsg;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_commands_with_their_exit_codes_and_the_app_environment() {
    bounded(async {
        init_tracing();
        let keys = AppKeys::generate("app-exec").unwrap();
        let daemon = start_daemon(&keys, "marker-7f3").await;
        let port = daemon.addr.port();
        let files = SshFiles::new(Some(&keys.client), keys.host_public(), port);

        let out = run(
            files.ssh_with_key(port, "vcap").arg("echo hello; exit 0"),
            b"",
            T,
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
        assert_eq!(stdout, "hello\n");

        let out = run(
            files
                .ssh_with_key(port, "vcap")
                .arg("echo oops >&2; exit 42"),
            b"",
            T,
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(42),
            "stdout {stdout:?} stderr {stderr:?}"
        );
        assert!(stderr.contains("oops"), "stderr goes to stderr: {stderr:?}");
        assert!(!stdout.contains("oops"));

        // The app's environment, without the daemon's key variables; the container's user.
        let out = run(
            files
                .ssh_with_key(port, "vcap")
                .arg("echo \"$APP_MARKER\"; echo \"${EIRINIX_SSH_HOST_KEY:-no-key}\"; id -u"),
            b"",
            T,
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(stdout, format!("marker-7f3\nno-key\n{uid}\n"));

        // stdin reaches the command and EOF ends it.
        let out = run(files.ssh_with_key(port, "vcap").arg("wc -c"), b"12345", T).await;
        assert_eq!(text(&out).0.trim(), "5");

        // Killed by a signal: ssh reports 255 (exit-signal), not success.
        let out = run(
            files.ssh_with_key(port, "vcap").arg("kill -TERM $$"),
            b"",
            T,
        )
        .await;
        assert_eq!(out.status.code(), Some(255), "{:?}", text(&out));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_session_works_with_ssh_tt() {
    bounded(async {
        init_tracing();
        let keys = AppKeys::generate("app-pty").unwrap();
        let daemon = start_daemon(&keys, "m").await;
        let port = daemon.addr.port();
        let files = SshFiles::new(Some(&keys.client), keys.host_public(), port);
        let mut cmd = files.ssh_with_key(port, "vcap");
        cmd.arg("-tt");
        let out = run(
            &mut cmd,
            b"tty\necho \"A$((6*7))B\"\necho \"term=$TERM\"\nexit 7\n",
            T,
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(7),
            "stdout {stdout:?} stderr {stderr:?}"
        );
        assert!(stdout.contains("/dev/pts/"), "a real terminal: {stdout:?}");
        assert!(
            stdout.contains("A42B"),
            "the shell evaluated input: {stdout:?}"
        );
        assert!(stdout.contains("term="), "{stdout:?}");
        // The pty echoes input and turns \n into \r\n: proof that output went through a terminal.
        assert!(stdout.contains("\r\n"), "{stdout:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused() {
    bounded(async {
        init_tracing();
        let keys = AppKeys::generate("app-wrong").unwrap();
        let daemon = start_daemon(&keys, "m").await;
        let port = daemon.addr.port();
        // The host key is right, the client key is another app's.
        let other = AppKeys::generate("other").unwrap();
        let files = SshFiles::new(Some(&other.client), keys.host_public(), port);
        let out = run(files.ssh_with_key(port, "vcap").arg("echo in"), b"", T).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(255),
            "stdout {stdout:?} stderr {stderr:?}"
        );
        assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");
        assert!(!stdout.contains("in"));
        // Passwords are not even offered.
        let out = run(
            files
                .ssh(port, "vcap")
                .args([
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "PreferredAuthentications=password",
                ])
                .arg("true"),
            b"",
            T,
        )
        .await;
        assert_eq!(out.status.code(), Some(255));
        assert!(
            text(&out).1.contains("Permission denied (publickey)"),
            "{:?}",
            text(&out)
        );
        // And a client that expects another host key refuses the daemon (MITM protection works).
        let files = SshFiles::new(Some(&keys.client), other.host_public(), port);
        let out = run(files.ssh_with_key(port, "vcap").arg("true"), b"", T).await;
        assert_eq!(out.status.code(), Some(255));
        assert!(
            text(&out).1.contains("Host key verification failed"),
            "{:?}",
            text(&out)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_forwarding_works_and_remote_forwarding_is_refused() {
    bounded(async {
        init_tracing();
        let keys = AppKeys::generate("app-fwd").unwrap();
        let daemon = start_daemon(&keys, "m").await;
        let port = daemon.addr.port();
        let files = SshFiles::new(Some(&keys.client), keys.host_public(), port);
        let echo = echo_server().await;

        // -W: stdio over a direct-tcpip channel.
        let mut cmd = files.ssh_with_key(port, "vcap");
        cmd.arg("-W").arg(format!("127.0.0.1:{}", echo.port()));
        let out = run(&mut cmd, b"ping through the pod\n", T).await;
        assert_eq!(text(&out).0, "ping through the pod\n", "{:?}", text(&out));

        // -L: a local listener forwarded through the daemon.
        let local = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut cmd = files.ssh_with_key(port, "vcap");
        cmd.args(["-o", "ExitOnForwardFailure=yes", "-N", "-L"])
            .arg(format!("127.0.0.1:{local}:127.0.0.1:{}", echo.port()));
        let mut child = cmd.spawn().unwrap();
        let reply = eventually(T, "the -L listener to forward", || async {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .ok()?;
            s.write_all(b"hello -L").await.ok()?;
            let mut buf = [0u8; 8];
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some(buf)
        })
        .await;
        assert_eq!(&reply, b"hello -L");
        child.kill().await.unwrap();

        // -R is refused.
        let mut cmd = files.ssh_with_key(port, "vcap");
        cmd.args([
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "127.0.0.1:0:127.0.0.1:9",
        ])
        .arg("echo should-not-run");
        let out = run(&mut cmd, b"", T).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(255),
            "stdout {stdout:?} stderr {stderr:?}"
        );
        assert!(stderr.contains("remote port forwarding failed"), "{stderr}");
        assert!(!stdout.contains("should-not-run"));
    })
    .await
}

struct CheckHost(PublicKey);

impl russh::client::Handler for CheckHost {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.0.key_data()),
        )
    }
}

/// Read channel output until it contains `needle`.
async fn read_until(ch: &mut russh::Channel<russh::client::Msg>, out: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + T;
    while !out.contains(needle) {
        let msg = tokio::time::timeout_at(deadline, ch.wait())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {out:?}"));
        match msg {
            Some(ChannelMsg::Data { data }) => out.push_str(&String::from_utf8_lossy(&data)),
            Some(_) => {}
            None => panic!("channel closed before {needle:?}: {out:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pty_follows_window_resizes() {
    bounded(async {
        init_tracing();
        let keys = AppKeys::generate("app-resize").unwrap();
        let daemon = start_daemon(&keys, "m").await;
        let config = Arc::new(russh::client::Config::default());
        let mut session =
            russh::client::connect(config, daemon.addr, CheckHost(keys.host_public().clone()))
                .await
                .unwrap();
        let auth = session
            .authenticate_publickey(
                "vcap",
                PrivateKeyWithHashAlg::new(Arc::new(keys.client.clone()), None),
            )
            .await
            .unwrap();
        assert!(auth.success());
        let mut ch = session.channel_open_session().await.unwrap();
        ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
            .await
            .unwrap();
        ch.request_shell(true).await.unwrap();
        let mut out = String::new();
        ch.data_bytes(&b"stty size; echo END1\n"[..]).await.unwrap();
        read_until(&mut ch, &mut out, "24 80").await;
        read_until(&mut ch, &mut out, "END1\r\n").await;
        ch.window_change(132, 43, 0, 0).await.unwrap();
        ch.data_bytes(&b"stty size\n"[..]).await.unwrap();
        read_until(&mut ch, &mut out, "43 132").await;
        ch.data_bytes(&b"exit 5\n"[..]).await.unwrap();
        let deadline = tokio::time::Instant::now() + T;
        let status = loop {
            match tokio::time::timeout_at(deadline, ch.wait()).await.unwrap() {
                Some(ChannelMsg::ExitStatus { exit_status }) => break exit_status,
                Some(_) => {}
                None => panic!("no exit status"),
            }
        };
        assert_eq!(status, 5);
    })
    .await
}

/// Issue item 6, daemon side: connections that do not log in in time are closed, and only a
/// few may wait at once (the proxy is the daemon's only client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_limits_connections_that_do_not_log_in() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    bounded(async {
        init_tracing();
        let keys = AppKeys::generate("app-limits").unwrap();
        let mut config = eirinix_ssh::DaemonConfig::new(
            keys.host.clone(),
            vec![keys.authorized_public().clone()],
        );
        config.listen = Some(std::net::Ipv4Addr::LOCALHOST.into());
        config.port = 0;
        config.limits.auth_timeout = Duration::from_secs(2);
        config.limits.max_unauthenticated = 2;
        let daemon = eirinix_ssh::Daemon::bind(config).await.unwrap();
        let addr = daemon.local_addr().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(daemon.serve(cancel.clone()));

        let banner = |mut s: tokio::net::TcpStream| async move {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(T, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            (s, String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        let mut silent = Vec::new();
        for _ in 0..2 {
            let (mut s, b) = banner(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
            assert!(b.starts_with("SSH-2.0-"), "{b:?}");
            s.write_all(b"SSH-2.0-test\r\n").await.unwrap();
            silent.push(s);
        }
        let (_, b) = banner(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        assert_eq!(b, "", "a third waiting connection is closed at accept");
        let started = std::time::Instant::now();
        for mut s in silent {
            let mut buf = vec![0; 4096];
            tokio::time::timeout(T, async {
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            })
            .await
            .expect("closed after the login time limit");
        }
        assert!(started.elapsed() >= Duration::from_millis(1500));
        // The slots are free again: the proxy's key still logs in.
        let files = SshFiles::new(Some(&keys.client), keys.host_public(), addr.port());
        let out = run(files.ssh_with_key(addr.port(), "vcap").arg("true"), b"", T).await;
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        cancel.cancel();
    })
    .await
}
