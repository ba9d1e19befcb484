//! The node's cgroup subtree: every process of the node (containerd, its shims, the containers,
//! kubelet, kube-proxy) lives under one cgroup per hierarchy, so teardown can freeze and kill all
//! of them, whatever forked what, and leave no cgroup behind.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Where cgroup v1 hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Prefix of the node cgroup names; the owner pid follows, for reaping after a SIGKILL.
pub(crate) const PREFIX: &str = "eirinix-testenv-";

/// A cgroup subtree `/<name>` in every mounted hierarchy.
#[derive(Debug, Clone)]
pub(crate) struct CgroupTree {
    name: String,
}

impl CgroupTree {
    /// Creates `/<name>` (and `/<name>/node` for the node's own processes) in every hierarchy.
    pub fn create(name: String) -> Result<Self> {
        let tree = CgroupTree { name };
        let hierarchies = hierarchies();
        if !hierarchies.iter().any(|h| h.ends_with("pids")) {
            return Err(Error::NodeUnsupported(format!(
                "no cgroup v1 `pids` hierarchy under {CGROUP_ROOT}: the real node needs cgroup v1 \
                 controllers (found: {:?})",
                hierarchies
            )));
        }
        for h in &hierarchies {
            for sub in ["", "node"] {
                let dir = h.join(&tree.name).join(sub);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating cgroup {}", dir.display()), e))?;
                if h.ends_with("cpuset") {
                    // A new cpuset cgroup starts with no CPUs and no memory nodes: copy the parent's.
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let parent = dir.parent().map(|p| p.join(file));
                        if let Some(parent) = parent {
                            let value = std::fs::read_to_string(&parent).map_err(|e| {
                                Error::io(format!("reading {}", parent.display()), e)
                            })?;
                            std::fs::write(dir.join(file), value.trim()).map_err(|e| {
                                Error::io(format!("writing {}/{file}", dir.display()), e)
                            })?;
                        }
                    }
                }
            }
        }
        Ok(tree)
    }

    /// The cgroup path kubelet takes as `cgroupRoot`.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// `cgroup.procs` files a process writes `0` to, to join `/<name>/node` in each hierarchy
    /// (prepared before `fork`: the child may not allocate).
    pub fn join_files(&self) -> Vec<CString> {
        hierarchies()
            .into_iter()
            .filter_map(|h| {
                let p = h.join(&self.name).join("node").join("cgroup.procs");
                CString::new(p.into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Kills every process in the subtree and removes its cgroups (bounded; logs what remains).
    pub fn destroy(&self) {
        destroy(&self.name);
    }
}

/// The mounted cgroup v1 hierarchies (directories under `/sys/fs/cgroup` with a `cgroup.procs`).
fn hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    out.sort();
    out
}

/// Writes `0` (the calling process) to each file: joins those cgroups. Async-signal-safe, for
/// `pre_exec`.
pub(crate) fn join_raw(files: &[CString]) -> io::Result<()> {
    for f in files {
        // SAFETY: plain syscalls on a valid NUL-terminated path; no allocation.
        unsafe {
            let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// All pids in `dir` and its descendants.
fn pids_below(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                pids_below(&e.path(), out);
            }
        }
    }
}

/// Removes `dir` and its descendant cgroups, deepest first.
fn remove_below(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_below(&e.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Freezes, kills and removes the subtree `/<name>` in every hierarchy.
pub(crate) fn destroy(name: &str) {
    let hs = hierarchies();
    let freezer = hs
        .iter()
        .find(|h| h.ends_with("freezer"))
        .map(|h| h.join(name));
    let pids_dir = hs
        .iter()
        .find(|h| h.ends_with("pids"))
        .map(|h| h.join(name));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Freeze first so that nothing forks between listing and killing.
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join("freezer.state"), "FROZEN");
        }
        let mut pids = Vec::new();
        if let Some(dir) = &pids_dir {
            pids_below(dir, &mut pids);
        }
        for &pid in &pids {
            // SAFETY: signalling a pid read from our own cgroup.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join("freezer.state"), "THAWED");
        }
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!(cgroup = name, ?pids, "processes survived SIGKILL for 20 s");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in hs {
        let dir = h.join(name);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match remove_below(&dir) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "could not remove cgroup");
                    break;
                }
                // A killed process leaves its cgroup a moment after the signal.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Names of node cgroup subtrees whose owner process is dead (a SIGKILLed test run).
pub(crate) fn stale_trees(alive: impl Fn(i32) -> bool) -> Vec<String> {
    let Some(pids) = hierarchies().into_iter().find(|h| h.ends_with("pids")) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(pids) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| pid != std::process::id() as i32 && !alive(pid))
        })
        .collect()
}
