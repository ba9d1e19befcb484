//! One `session` channel of the daemon: a shell or a command, with or without a pty.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf, Sig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Shared;
use super::pty::{Pty, PtyMaster, TermSize};

/// How long output of a pty is still drained after the shell exited (background jobs may
/// keep the terminal open forever).
const PTY_DRAIN: Duration = Duration::from_secs(2);

struct PtyRequest {
    term: String,
    size: TermSize,
}

/// A process started for the channel.
struct Running {
    input: Option<mpsc::Sender<Bytes>>,
    pty: Option<Arc<PtyMaster>>,
    pgid: Pid,
    exited: Arc<AtomicBool>,
}

/// Serve one session channel until the client closes it.
pub(crate) async fn run_session(channel: Channel<Msg>, handle: Handle, shared: Arc<Shared>) {
    let id = channel.id();
    let (mut rx, tx) = channel.split();
    let tx = Arc::new(tx);
    let mut pty: Option<PtyRequest> = None;
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut running: Option<Running> = None;
    while let Some(msg) = rx.wait().await {
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                ..
            } => {
                pty = Some(PtyRequest {
                    term,
                    size: TermSize::from_ssh(col_width, row_height, pix_width, pix_height),
                });
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => env.push((variable_name.into(), variable_value.into())),
            ChannelMsg::RequestShell { .. } | ChannelMsg::Exec { .. } if running.is_some() => {
                tracing::debug!(?id, "second shell/exec on one channel ignored");
            }
            ChannelMsg::RequestShell { .. } => {
                running = start(&shared, None, pty.as_ref(), &env, &tx, &handle, id).await;
            }
            ChannelMsg::Exec { command, .. } => {
                let command = OsString::from_vec(command);
                running = start(&shared, Some(command), pty.as_ref(), &env, &tx, &handle, id).await;
            }
            ChannelMsg::Data { data } => {
                if let Some(input) = running.as_ref().and_then(|r| r.input.as_ref()) {
                    // The process may have exited: input is then dropped, as sshd does.
                    let _ = input.send(data).await;
                }
            }
            ChannelMsg::Eof => {
                // A pipe gets EOF; a pty cannot be half-closed (sshd ignores EOF there too).
                if let Some(r) = running.as_mut().filter(|r| r.pty.is_none()) {
                    r.input = None;
                }
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Some(master) = running.as_ref().and_then(|r| r.pty.as_ref()) {
                    let size = TermSize::from_ssh(col_width, row_height, pix_width, pix_height);
                    if let Err(e) = master.resize(size) {
                        tracing::debug!(error = %e, "window resize failed");
                    }
                } else if let Some(p) = pty.as_mut() {
                    p.size = TermSize::from_ssh(col_width, row_height, pix_width, pix_height);
                }
            }
            ChannelMsg::Signal { signal } => {
                let live = running
                    .as_ref()
                    .filter(|r| !r.exited.load(Ordering::SeqCst));
                if let (Some(r), Some(sig)) = (live, to_signal(&signal)) {
                    let _ = killpg(r.pgid, sig);
                }
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    // The client went away: hang up what still runs, as closing a terminal does.
    if let Some(r) = running.filter(|r| !r.exited.load(Ordering::SeqCst)) {
        let _ = killpg(r.pgid, Signal::SIGHUP);
    }
}

/// Start the shell (`command` None) or `shell -c command`; on failure report it on the channel.
async fn start(
    shared: &Shared,
    command: Option<OsString>,
    pty: Option<&PtyRequest>,
    env: &[(OsString, OsString)],
    tx: &Arc<ChannelWriteHalf<Msg>>,
    handle: &Handle,
    id: ChannelId,
) -> Option<Running> {
    match spawn(shared, command, pty, env, tx, handle, id) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, shell = %shared.shell.display(), "cannot start session process");
            let msg = format!(
                "eirinix-sshd: cannot run {}: {e}\r\n",
                shared.shell.display()
            );
            let _ = tx.extended_data_bytes(1, Bytes::from(msg)).await;
            let _ = tx.exit_status(127).await;
            let _ = tx.eof().await;
            let _ = tx.close().await;
            None
        }
    }
}

fn spawn(
    shared: &Shared,
    command: Option<OsString>,
    pty: Option<&PtyRequest>,
    env: &[(OsString, OsString)],
    tx: &Arc<ChannelWriteHalf<Msg>>,
    handle: &Handle,
    id: ChannelId,
) -> std::io::Result<Running> {
    let mut cmd = tokio::process::Command::new(&shared.shell);
    if let Some(c) = &command {
        cmd.arg("-c").arg(c);
    }
    cmd.env_clear()
        .envs(shared.env.iter().map(|(k, v)| (k, v)))
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &shared.working_dir {
        cmd.current_dir(dir);
    }
    let exited = Arc::new(AtomicBool::new(false));
    let (input_tx, input_rx) = mpsc::channel::<Bytes>(32);
    match pty {
        Some(p) => {
            let Pty { master, slave } = Pty::open(p.size)?;
            cmd.env("TERM", &p.term)
                .stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn()?;
            // Our copies of the slave must go, or the master never sees the hang-up.
            drop(cmd);
            let pgid = Pid::from_raw(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
            let master = Arc::new(master);
            let out = tokio::spawn(pump_pty(master.clone(), tx.clone()));
            tokio::spawn(write_pty(master.clone(), input_rx));
            tokio::spawn(supervise(
                child,
                vec![out],
                true,
                tx.clone(),
                handle.clone(),
                id,
                exited.clone(),
            ));
            Ok(Running {
                input: Some(input_tx),
                pty: Some(master),
                pgid,
                exited,
            })
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn()?;
            let pgid = Pid::from_raw(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
            let mut pumps = Vec::new();
            if let Some(stdout) = child.stdout.take() {
                pumps.push(tokio::spawn(pump(stdout, tx.make_writer())));
            }
            if let Some(stderr) = child.stderr.take() {
                pumps.push(tokio::spawn(pump(stderr, tx.make_writer_ext(Some(1)))));
            }
            if let Some(stdin) = child.stdin.take() {
                tokio::spawn(write_pipe(stdin, input_rx));
            }
            tokio::spawn(supervise(
                child,
                pumps,
                false,
                tx.clone(),
                handle.clone(),
                id,
                exited.clone(),
            ));
            Ok(Running {
                input: Some(input_tx),
                pty: None,
                pgid,
                exited,
            })
        }
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

async fn pump_pty(master: Arc<PtyMaster>, tx: Arc<ChannelWriteHalf<Msg>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match master.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .data_bytes(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

async fn write_pty(master: Arc<PtyMaster>, mut input: mpsc::Receiver<Bytes>) {
    while let Some(data) = input.recv().await {
        if master.write_all(&data).await.is_err() {
            return;
        }
    }
}

async fn write_pipe(mut stdin: tokio::process::ChildStdin, mut input: mpsc::Receiver<Bytes>) {
    while let Some(data) = input.recv().await {
        if stdin.write_all(&data).await.is_err() {
            return;
        }
    }
    // Sender dropped: the client sent EOF (or the channel is gone); stdin closes here.
    let _ = stdin.shutdown().await;
}

/// Wait for the process, drain its output, then report its exit and close the channel.
async fn supervise(
    mut child: tokio::process::Child,
    pumps: Vec<JoinHandle<()>>,
    pty: bool,
    tx: Arc<ChannelWriteHalf<Msg>>,
    handle: Handle,
    id: ChannelId,
    exited: Arc<AtomicBool>,
) {
    let status = child.wait().await;
    exited.store(true, Ordering::SeqCst);
    for p in pumps {
        if pty {
            let abort = p.abort_handle();
            if tokio::time::timeout(PTY_DRAIN, p).await.is_err() {
                abort.abort();
            }
        } else {
            let _ = p.await;
        }
    }
    match status {
        Ok(s) => {
            if let Some(code) = s.code() {
                let _ = tx.exit_status(u32::try_from(code).unwrap_or(255)).await;
            } else if let Some(sig) = s.signal() {
                let name = Signal::try_from(sig)
                    .map(from_signal)
                    .unwrap_or_else(|_| Sig::Custom(sig.to_string()));
                let _ = handle
                    .exit_signal_request(id, name, s.core_dumped(), String::new(), String::new())
                    .await;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "waiting for the session process failed");
            let _ = tx.exit_status(255).await;
        }
    }
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

fn to_signal(sig: &Sig) -> Option<Signal> {
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => Signal::SIGUSR2,
            "WINCH" => Signal::SIGWINCH,
            "CONT" => Signal::SIGCONT,
            "STOP" => Signal::SIGSTOP,
            "TSTP" => Signal::SIGTSTP,
            _ => return None,
        },
    })
}

fn from_signal(sig: Signal) -> Sig {
    match sig {
        Signal::SIGABRT => Sig::ABRT,
        Signal::SIGALRM => Sig::ALRM,
        Signal::SIGFPE => Sig::FPE,
        Signal::SIGHUP => Sig::HUP,
        Signal::SIGILL => Sig::ILL,
        Signal::SIGINT => Sig::INT,
        Signal::SIGKILL => Sig::KILL,
        Signal::SIGPIPE => Sig::PIPE,
        Signal::SIGQUIT => Sig::QUIT,
        Signal::SIGSEGV => Sig::SEGV,
        Signal::SIGTERM => Sig::TERM,
        Signal::SIGUSR1 => Sig::USR1,
        other => Sig::Custom(other.as_str().trim_start_matches("SIG").to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_round_trip() {
        for s in [
            Signal::SIGTERM,
            Signal::SIGKILL,
            Signal::SIGUSR2,
            Signal::SIGINT,
        ] {
            assert_eq!(to_signal(&from_signal(s)), Some(s));
        }
        assert_eq!(to_signal(&Sig::Custom("NOPE".into())), None);
    }
}
