//! The daemon's command line: `install`, `--exec -- CMD...` (the wrapper the webhook injects)
//! and foreground serving (sidecar mode). [`sshd_main`] is what a binary calls.
//!
//! `--exec` forks: the child becomes the daemon, the parent `exec`s the app command unchanged,
//! so the app keeps the PID (PID 1 in a container), its signals and its exit code.
//! [`sshd_main`] must run before any thread is started (no tokio runtime yet): it forks.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::daemon::{DaemonConfig, run_daemon};

/// Usage text of the daemon command.
pub const USAGE: &str = "\
usage: eirinix-sshd install DEST              copy this binary to DEST (init container)
       eirinix-sshd --exec -- COMMAND [ARG...]   start the daemon in the background, exec COMMAND
       eirinix-sshd [--listen IP] [--port N] [--host-key-file F] [--authorized-keys-file F] [--shell S]
                    [--idle-without-keys]     serve in the foreground (sidecar mode)
Keys, port and address also come from EIRINIX_SSH_HOST_KEY, EIRINIX_SSH_AUTHORIZED_KEYS,
EIRINIX_SSH_PORT and EIRINIX_SSH_LISTEN.";

/// Foreground-serving options (sidecar mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeArgs {
    /// Port, overriding `EIRINIX_SSH_PORT`.
    pub port: Option<u16>,
    /// IP address, overriding `EIRINIX_SSH_LISTEN`.
    pub listen: Option<std::net::IpAddr>,
    /// File with the host key, overriding `EIRINIX_SSH_HOST_KEY`.
    pub host_key_file: Option<PathBuf>,
    /// File with authorized keys, overriding `EIRINIX_SSH_AUTHORIZED_KEYS`.
    pub authorized_keys_file: Option<PathBuf>,
    /// Shell, overriding `EIRINIX_SSH_SHELL`.
    pub shell: Option<PathBuf>,
    /// Without keys, wait for SIGTERM instead of failing (a crash-looping sidecar would make
    /// the app instance unready).
    pub idle_without_keys: bool,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SshdCommand {
    /// Copy the running binary to this path (mode 0755).
    Install(PathBuf),
    /// Start the daemon in the background and exec this command.
    Exec(Vec<OsString>),
    /// Serve in the foreground.
    Serve(ServeArgs),
    /// Print the usage.
    Help,
}

/// Parse the arguments after the program (or subcommand) name.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<SshdCommand, String> {
    let mut args = args.into_iter();
    let mut serve = ServeArgs::default();
    while let Some(arg) = args.next() {
        let flag = arg.to_string_lossy().into_owned();
        let mut value = |name: &str| -> Result<OsString, String> {
            args.next().ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "install" | "--install" => {
                let dest = value(&flag)?;
                return Ok(SshdCommand::Install(PathBuf::from(dest)));
            }
            "--exec" => {
                let mut rest: Vec<OsString> = args.collect();
                if rest.first().is_some_and(|a| a == "--") {
                    rest.remove(0);
                }
                if rest.is_empty() {
                    return Err("--exec needs a command".into());
                }
                return Ok(SshdCommand::Exec(rest));
            }
            "-h" | "--help" | "help" => return Ok(SshdCommand::Help),
            "--port" => {
                let v = value(&flag)?;
                serve.port = Some(
                    v.to_string_lossy()
                        .parse()
                        .map_err(|_| format!("--port {v:?} is not a port"))?,
                );
            }
            "--listen" => {
                let v = value(&flag)?;
                serve.listen = Some(
                    v.to_string_lossy()
                        .parse()
                        .map_err(|_| format!("--listen {v:?} is not an IP address"))?,
                );
            }
            "--host-key-file" => serve.host_key_file = Some(value(&flag)?.into()),
            "--authorized-keys-file" => serve.authorized_keys_file = Some(value(&flag)?.into()),
            "--shell" => serve.shell = Some(value(&flag)?.into()),
            "--idle-without-keys" => serve.idle_without_keys = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(SshdCommand::Serve(serve))
}

/// The daemon configuration for foreground serving: files first, then the environment.
pub fn serve_config(args: &ServeArgs) -> crate::Result<DaemonConfig> {
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let mut set = |name: &str, value: OsString| {
        vars.retain(|(k, _)| k != name);
        vars.push((name.into(), value));
    };
    let read = |path: &PathBuf| {
        std::fs::read(path)
            .map(OsString::from_vec)
            .map_err(|e| crate::SshError::io(format!("cannot read {}", path.display()), e))
    };
    if let Some(f) = &args.host_key_file {
        set(crate::daemon::ENV_HOST_KEY, read(f)?);
    }
    if let Some(f) = &args.authorized_keys_file {
        set(crate::daemon::ENV_AUTHORIZED_KEYS, read(f)?);
    }
    let mut config = DaemonConfig::from_vars(vars)?;
    if let Some(port) = args.port {
        config.port = port;
    }
    if let Some(ip) = args.listen {
        config.listen = Some(ip);
    }
    if let Some(shell) = &args.shell {
        config.shell = shell.clone();
    }
    Ok(config)
}

/// Run the daemon command line (`args` without the program name); call it before any thread.
pub fn sshd_main<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let command = match parse_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("eirinix-sshd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        SshdCommand::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        SshdCommand::Install(dest) => match install(&dest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("eirinix-sshd: install to {}: {e}", dest.display());
                ExitCode::FAILURE
            }
        },
        SshdCommand::Exec(command) => {
            let e = exec_wrapped(&command);
            let program = command.first().map(|c| c.to_string_lossy().into_owned());
            eprintln!(
                "eirinix-sshd: cannot exec {}: {e}",
                program.unwrap_or_default()
            );
            // What a shell reports for a command that cannot run.
            ExitCode::from(127)
        }
        SshdCommand::Serve(args) => {
            let config = match serve_config(&args) {
                Ok(c) => c,
                Err(e) if args.idle_without_keys => {
                    eprintln!("eirinix-sshd: ssh access disabled for this instance: {e}");
                    return idle_until_signal();
                }
                Err(e) => {
                    eprintln!("eirinix-sshd: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match serve_blocking(config, true) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("eirinix-sshd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Wait for SIGTERM/SIGINT, then exit successfully.
fn idle_until_signal() -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            rt.block_on(eirinix_core::manager::shutdown_signal());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("eirinix-sshd: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Copy the running binary to `dest` with mode 0755 (what the init container does).
pub fn install(dest: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let me = std::env::current_exe()?;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Copy to a temporary name and rename, so a concurrent reader never sees half a binary.
    let tmp = dest.with_extension("tmp");
    std::fs::copy(&me, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, dest)
}

/// Serve on a fresh single-threaded runtime until SIGTERM/SIGINT (if `signals`) or forever.
fn serve_blocking(config: DaemonConfig, signals: bool) -> crate::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::SshError::io("cannot start the runtime", e))?;
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        if signals {
            let c = cancel.clone();
            tokio::spawn(async move {
                eirinix_core::manager::shutdown_signal().await;
                c.cancel();
            });
        }
        run_daemon(config, cancel).await
    })
}

/// The environment the app command gets: everything but the daemon's `EIRINIX_SSH_*` variables.
pub fn app_environment() -> Vec<(OsString, OsString)> {
    crate::daemon::app_env(std::env::vars_os())
}

/// Start the daemon in a forked child, then exec `command` with the app environment.
///
/// Returns only if the exec failed. A daemon that cannot start (no keys: the Secret is
/// optional in the pod) never keeps the app from starting: it is reported and skipped.
pub fn exec_wrapped(command: &[OsString]) -> std::io::Error {
    match DaemonConfig::from_env() {
        Ok(config) => fork_daemon(config),
        Err(e) => eprintln!("eirinix-sshd: ssh access disabled for this instance: {e}"),
    }
    match exec(command, &app_environment()) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn fork_daemon(config: DaemonConfig) {
    use nix::unistd::{ForkResult, fork, getppid};
    let parent = nix::unistd::getpid();
    // SAFETY: called before any thread exists (documented contract of `sshd_main`); the child
    // only builds its own runtime.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // Die with the app (outside a container the app is not PID 1 of a namespace).
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
            if getppid() != parent {
                std::process::exit(0);
            }
            // Own session: signals sent to the app's process group do not hit the daemon.
            let _ = nix::unistd::setsid();
            // The app owns stdin.
            if let Ok(null) = std::fs::File::open("/dev/null") {
                let _ = nix::unistd::dup2_stdin(null);
            }
            let code = match serve_blocking(config, true) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("eirinix-sshd: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(e) => eprintln!("eirinix-sshd: cannot fork the daemon, ssh disabled: {e}"),
    }
}

fn cstring(s: &std::ffi::OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "argument contains a NUL byte",
        )
    })
}

fn exec(command: &[OsString], env: &[(OsString, OsString)]) -> std::io::Result<Infallible> {
    let Some(program) = command.first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let program = cstring(program)?;
    let argv = command
        .iter()
        .map(|a| cstring(a))
        .collect::<std::io::Result<Vec<_>>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    nix::unistd::execvpe(&program, &argv, &envp).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_injected_command_lines() {
        assert_eq!(
            parse_args(os(&["--exec", "--", "/bin/app", "--flag", "--", "x"])).unwrap(),
            SshdCommand::Exec(os(&["/bin/app", "--flag", "--", "x"]))
        );
        assert_eq!(
            parse_args(os(&["--exec", "app"])).unwrap(),
            SshdCommand::Exec(os(&["app"]))
        );
        assert!(parse_args(os(&["--exec", "--"])).is_err());
        assert_eq!(
            parse_args(os(&["install", "/eirinix/ssh/eirinix-sshd"])).unwrap(),
            SshdCommand::Install("/eirinix/ssh/eirinix-sshd".into())
        );
        assert_eq!(
            parse_args(os(&[
                "--port",
                "2022",
                "--shell",
                "/bin/bash",
                "--idle-without-keys"
            ]))
            .unwrap(),
            SshdCommand::Serve(ServeArgs {
                port: Some(2022),
                shell: Some("/bin/bash".into()),
                idle_without_keys: true,
                ..Default::default()
            })
        );
        assert!(parse_args(os(&["--port", "x"])).is_err());
        assert!(parse_args(os(&["--bogus"])).is_err());
        assert_eq!(parse_args(os(&["--help"])).unwrap(), SshdCommand::Help);
    }

    #[test]
    fn the_app_never_sees_the_daemon_keys() {
        let env = crate::daemon::app_env(vec![
            (OsString::from("PORT"), OsString::from("8080")),
            (
                OsString::from("EIRINIX_SSH_HOST_KEY"),
                OsString::from("secret"),
            ),
            (OsString::from("EIRINIX_SSH_PORT"), OsString::from("2222")),
        ]);
        assert_eq!(env, vec![(OsString::from("PORT"), OsString::from("8080"))]);
    }
}
