//! The in-pod daemon as a standalone binary (tests spawn it; the eirinix CLI offers `eirinix sshd`).
//!
//! `sshd_main` forks for `--exec`, so it runs before anything starts a thread.

fn main() -> std::process::ExitCode {
    eirinix_ssh::sshd::sshd_main(std::env::args_os().skip(1))
}
