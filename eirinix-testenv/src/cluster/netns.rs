//! The node's own namespaces: a network namespace (its address, the pod bridge, kube-proxy's
//! iptables rules) and a mount namespace (containerd's and kubelet's mounts), both held open by
//! a small holder process. Nothing of the node touches the machine's own network: the host side
//! gets one veth end with a /30 address and a route to the pod CIDR, both gone with the node.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::process::Setup;
use crate::{Error, Result};

/// How many clusters may run at once on one machine (each takes a slot: its own CIDRs).
pub(crate) const SLOTS: u8 = 64;

/// The addresses of one slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addresses {
    /// The slot number.
    pub slot: u8,
}

impl Addresses {
    /// Host end of the node link (`10.245.<slot>.1/30`).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 245, self.slot, 1)
    }

    /// The node's address (`10.245.<slot>.2/30`): its InternalIP, where kubelet serves.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 245, self.slot, 2)
    }

    /// The pod CIDR (`10.244.<slot>.0/24`).
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.slot)
    }

    /// The host-side veth name.
    pub fn host_link(&self) -> String {
        format!("eirinixn{}", self.slot)
    }
}

/// An exclusive claim on a slot for the life of this process (an `flock`ed file: released by
/// the kernel when the process dies, however it dies).
#[derive(Debug)]
pub(crate) struct Slot {
    _lock: File,
    pub addrs: Addresses,
}

impl Slot {
    /// Claims the first free slot.
    pub fn claim() -> Result<Slot> {
        let dir = std::env::temp_dir();
        for slot in 0..SLOTS {
            let path = dir.join(format!("eirinix-node-slot-{slot}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Slot {
                    _lock: file,
                    addrs: Addresses { slot },
                });
            }
        }
        Err(Error::NodeUnsupported(format!(
            "all {SLOTS} node slots are taken (files {}/eirinix-node-slot-*.lock are locked by \
             running test processes)",
            dir.display()
        )))
    }
}

/// Paths covered by a private tmpfs inside the node's mount namespace: what containerd, the CNI
/// plugins and kubelet write to fixed system paths stays in the node and vanishes with it.
pub(crate) const PRIVATE_DIRS: [&str; 5] = [
    "/run/containerd",
    "/run/netns",
    "/var/lib/cni",
    "/var/log/containers",
    "/run/runc",
];

/// What a node process does between `fork` and `exec`: join the node cgroup, then the holder's
/// mount and network namespaces. Prepared up front: the child may not allocate.
#[derive(Debug)]
pub(crate) struct Confinement {
    cgroup_files: Vec<CString>,
    mnt: Option<File>,
    net: Option<File>,
}

impl Confinement {
    /// The cgroup and the namespaces of process `holder`.
    pub fn inside(cgroup_files: Vec<CString>, holder: u32) -> Result<Self> {
        let open = |kind: &str| {
            let path = format!("/proc/{holder}/ns/{kind}");
            File::open(&path).map_err(|e| Error::io(format!("opening {path}"), e))
        };
        Ok(Confinement {
            cgroup_files,
            mnt: Some(open("mnt")?),
            net: Some(open("net")?),
        })
    }

    /// Network namespace fd, for binding sockets inside the node from this process.
    pub fn net_fd(&self) -> Option<RawFd> {
        self.net.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Adds the `pre_exec` step to `cmd`. The fds stay open in this struct, which must outlive
    /// the spawn.
    pub fn apply(&self, cmd: &mut Command) {
        let files = self.cgroup_files.clone();
        let mnt = self.mnt.as_ref().map(AsRawFd::as_raw_fd);
        let net = self.net.as_ref().map(AsRawFd::as_raw_fd);
        // SAFETY: only async-signal-safe syscalls (open, write, close, setns) on data prepared
        // before fork.
        unsafe {
            cmd.pre_exec(move || {
                super::cgroup::join_raw(&files)?;
                if let Some(fd) = mnt
                    && libc::setns(fd, libc::CLONE_NEWNS) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if let Some(fd) = net
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// The holder: `sleep infinity` in the node cgroup and in a new mount namespace (a slave of the
/// host's, with private tmpfs over [`PRIVATE_DIRS`]) and a new network namespace. Returns the
/// program and the setup that adds those steps to its command.
pub(crate) fn holder_setup(cgroup_files: Vec<CString>) -> Result<(PathBuf, Setup)> {
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| Error::NodeUnsupported("no `sleep` binary in /bin or /usr/bin".into()))?;
    for dir in PRIVATE_DIRS {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {dir}"), e))?;
    }
    let targets: Arc<Vec<CString>> = Arc::new(
        PRIVATE_DIRS
            .iter()
            .filter_map(|d| CString::new(*d).ok())
            .collect(),
    );
    let cgroup_files = Arc::new(cgroup_files);
    let setup: Setup = Arc::new(move |cmd: &mut Command| {
        let targets = targets.clone();
        let cgroup_files = cgroup_files.clone();
        // SAFETY: only async-signal-safe syscalls (open, write, unshare, mount) on data prepared
        // before fork.
        unsafe {
            cmd.pre_exec(move || {
                super::cgroup::join_raw(&cgroup_files)?;
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                for t in targets.iter() {
                    if libc::mount(
                        c"tmpfs".as_ptr(),
                        t.as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    });
    Ok((sleep, setup))
}

/// Runs a command (for `ip` and `sysctl`), failing with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {program}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Connects the holder's network namespace to the host: a veth pair, the /30 addresses, the
/// node's loopback and forwarding, and a host route to the pod CIDR through the node.
pub(crate) fn wire(holder: u32, addrs: &Addresses) -> Result<()> {
    let pid = holder.to_string();
    let link = addrs.host_link();
    // A link left by a dead run of this slot would block ours (it vanishes with its namespace,
    // which the stale-run reaper frees; this is the last resort).
    let _ = run("ip", &["link", "del", &link]);
    run(
        "ip",
        &[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &pid,
        ],
    )?;
    run(
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/30", addrs.host_ip()),
            "dev",
            &link,
        ],
    )?;
    run("ip", &["link", "set", &link, "up"])?;
    let inside = |args: &[&str]| {
        let mut full = vec!["--target", pid.as_str(), "--net", "--"];
        full.extend_from_slice(args);
        run("nsenter", &full)
    };
    inside(&["ip", "link", "set", "lo", "up"])?;
    inside(&[
        "ip",
        "addr",
        "add",
        &format!("{}/30", addrs.node_ip()),
        "dev",
        "eth0",
    ])?;
    inside(&["ip", "link", "set", "eth0", "up"])?;
    inside(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    // kube-proxy's rules must see bridged pod-to-service traffic (per network namespace).
    let _ = inside(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    run(
        "ip",
        &[
            "route",
            "add",
            &addrs.pod_cidr(),
            "via",
            &addrs.node_ip().to_string(),
            "dev",
            &link,
        ],
    )?;
    Ok(())
}

/// Binds TCP listeners inside the network namespace `net_fd` (from this process, on a helper
/// thread that enters it; the sockets stay in that namespace).
pub(crate) fn bind_inside(
    net_fd: RawFd,
    addrs: Vec<std::net::SocketAddr>,
) -> Result<Vec<std::net::TcpListener>> {
    let handle = std::thread::spawn(move || -> io::Result<Vec<std::net::TcpListener>> {
        // SAFETY: setns on this helper thread only; it exits right after.
        if unsafe { libc::setns(net_fd, libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        addrs
            .into_iter()
            .map(|a| {
                let l = std::net::TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .collect()
    });
    handle
        .join()
        .map_err(|_| {
            Error::io(
                "binding inside the node",
                io::Error::other("thread panicked"),
            )
        })?
        .map_err(|e| Error::io("binding inside the node's network namespace", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters at once (two test processes, or two lanes of the suite) never share an
    /// address, a CIDR or a link name: each holds its own slot for as long as it lives.
    #[test]
    fn clusters_at_once_get_their_own_slots() {
        let a = Slot::claim().unwrap();
        let b = Slot::claim().unwrap();
        assert_ne!(
            a.addrs.slot, b.addrs.slot,
            "a held slot is not handed out again"
        );
        assert_ne!(a.addrs.pod_cidr(), b.addrs.pod_cidr());
        assert_ne!(a.addrs.node_ip(), b.addrs.node_ip());
        assert_ne!(a.addrs.host_ip(), b.addrs.host_ip());
        assert_ne!(a.addrs.host_link(), b.addrs.host_link());
    }
}
