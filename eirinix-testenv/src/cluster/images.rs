//! The images every cluster loads: a pause image for pod sandboxes and a small app image in the
//! shape of a Cloud Foundry app image (a non-root `vcap` user, a shell and common tools), both
//! made from Debian's `busybox-static`.

use std::path::Path;

use crate::image::ImageBuilder;
use crate::{Error, Result};

/// Debian's static busybox (package `busybox-static`).
const BUSYBOX: &str = "/bin/busybox";

/// Name of the app image loaded into every cluster.
pub const APP_IMAGE: &str = "eirinix.local/app:1";

/// Uid and gid of the app user `vcap` in [`APP_IMAGE`] (as in Cloud Foundry's rootfs images).
pub const APP_UID: i64 = 2000;

/// Busybox applets linked into the app image.
const APPLETS: &[&str] = &[
    "[",
    "basename",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "echo",
    "env",
    "false",
    "grep",
    "head",
    "hostname",
    "httpd",
    "id",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mount",
    "mv",
    "nc",
    "printf",
    "ps",
    "pwd",
    "rm",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "test",
    "touch",
    "tr",
    "true",
    "uname",
    "uniq",
    "wc",
    "wget",
    "whoami",
    "xargs",
];

fn busybox() -> Result<&'static str> {
    if Path::new(BUSYBOX).exists() {
        Ok(BUSYBOX)
    } else {
        Err(Error::NodeUnsupported(format!(
            "{BUSYBOX} is missing: install Debian's busybox-static (scripts/install-deps.sh); the \
             pause and app images are made from it"
        )))
    }
}

/// The pod sandbox image: a shell loop that sleeps, exits 0 on SIGTERM/SIGINT and reaps its
/// children (the shell's `wait`).
pub(crate) fn pause() -> Result<ImageBuilder> {
    Ok(ImageBuilder::new(super::containerd::PAUSE_IMAGE)
        .file("/bin/busybox", busybox()?, 0o755)
        .symlink("/bin/sh", "busybox")
        .symlink("/bin/sleep", "busybox")
        .contents(
            "/pause",
            "#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n",
            0o755,
        )
        .entrypoint(["/pause"]))
}

/// The app image [`APP_IMAGE`]: busybox applets in `/bin`, users `root` and `vcap` (2000),
/// `/home/vcap` owned by `vcap`, a world-writable `/tmp`, working directory `/home/vcap`.
pub fn app() -> Result<ImageBuilder> {
    let mut image = ImageBuilder::new(APP_IMAGE).file("/bin/busybox", busybox()?, 0o755);
    for applet in APPLETS {
        image = image.symlink(&format!("/bin/{applet}"), "busybox");
    }
    let uid = APP_UID as u64;
    Ok(image
        .contents(
            "/etc/passwd",
            format!("root:x:0:0:root:/root:/bin/sh\nvcap:x:{uid}:{uid}:vcap:/home/vcap:/bin/sh\n"),
            0o644,
        )
        .contents("/etc/group", format!("root:x:0:\nvcap:x:{uid}:\n"), 0o644)
        .dir("/tmp", 0o1777, 0, 0)
        .dir("/root", 0o700, 0, 0)
        .dir("/home/vcap", 0o755, uid, uid)
        .workdir("/home/vcap")
        .cmd(["/bin/sh"]))
}
