//! Child-process management: spawning that never leaks processes, teardown at drop and at
//! process exit, and removal of temp dirs left behind by dead test processes.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, TryLockError, Weak, mpsc};

use crate::{Error, Result};

/// Prefix of the temp dirs of control planes.
pub(crate) const DIR_PREFIX: &str = "eirinix-testenv-";

/// Name of the file holding the owning process id inside a control plane's temp dir.
pub(crate) const PID_FILE: &str = "owner.pid";

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Locks a mutex, ignoring poisoning (a panicking test must not break teardown).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The channel to the spawner thread.
///
/// Children are forked from one dedicated thread that lives as long as the process, because
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and test threads
/// end after each test.
fn spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let mut guard = lock(&SPAWNER);
    if let Some(tx) = guard.as_ref() {
        return Ok(tx.clone());
    }
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("eirinix-testenv-spawner".into())
        .spawn(move || {
            while let Ok((mut cmd, reply)) = rx.recv() {
                let _ = reply.send(cmd.spawn());
            }
        })?;
    *guard = Some(tx.clone());
    Ok(tx)
}

/// Spawns `cmd` so that the child is SIGKILLed when this process dies, however it dies
/// (`PR_SET_PDEATHSIG`, set from a spawner thread that lives as long as the process). For
/// harnesses that run their own helper processes (a syslog receiver, a second process of the
/// test binary) next to the control plane.
pub fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid) and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()?
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the eirinix-testenv spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the eirinix-testenv spawner thread is gone"))?
}

/// Adjusts a command before it is spawned (e.g. adds a `pre_exec` step that enters namespaces).
pub(crate) type Setup = Arc<dyn Fn(&mut Command) + Send + Sync>;

/// One child process (etcd, kube-apiserver, a node component): how to start it and its running
/// child.
pub(crate) struct Proc {
    pub name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    pub log: PathBuf,
    setup: Option<Setup>,
    child: Mutex<Option<Child>>,
    pid: AtomicU32,
}

impl Proc {
    /// Describes a process; nothing is started yet.
    pub fn new(name: &'static str, program: PathBuf, args: Vec<OsString>, log: PathBuf) -> Self {
        Proc {
            name,
            program,
            args,
            log,
            setup: None,
            child: Mutex::new(None),
            pid: AtomicU32::new(0),
        }
    }

    /// Runs `setup` on the command each time the process is started.
    pub fn with_setup(mut self, setup: Setup) -> Self {
        self.setup = Some(setup);
        self
    }

    /// Starts the process (killing a previous instance first); output is appended to the log.
    pub fn start(&self) -> Result<()> {
        self.kill();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(format!("opening {}", self.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(format!("duplicating {}", self.log.display()), e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some(setup) = &self.setup {
            setup(&mut cmd);
        }
        let child = spawn_tied(cmd)
            .map_err(|e| Error::io(format!("starting {}", self.program.display()), e))?;
        tracing::debug!(name = self.name, pid = child.id(), "started");
        self.pid.store(child.id(), Ordering::SeqCst);
        *lock(&self.child) = Some(child);
        Ok(())
    }

    /// SIGKILLs the process (if running) and reaps it.
    pub fn kill(&self) {
        let child = lock(&self.child).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(name = self.name, pid = child.id(), "killed");
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Kill path for `atexit`: touches no mutex, only the recorded pid.
    pub fn kill_at_exit(&self) {
        let pid = self.pid.swap(0, Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: plain syscalls on a child pid we spawned and have not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// `Some(exit status)` if the process has exited (or was never started).
    pub fn exit_status(&self) -> Option<String> {
        let mut guard = lock(&self.child);
        match guard.as_mut() {
            None => Some("not running".to_owned()),
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown: {e}")),
            },
        }
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        tail_of(&self.log, 40)
    }
}

/// The last `lines` lines (at most 16 KiB) of a file, or a note why it cannot be read.
pub(crate) fn tail_of(path: &Path, lines: usize) -> String {
    const MAX: u64 = 16 * 1024;
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The OS resources of one control plane: its processes and its temp dir.
pub(crate) struct Resources {
    pub dir: PathBuf,
    pub etcd: Proc,
    pub apiserver: Proc,
    cleaned: AtomicBool,
}

impl Resources {
    /// Bundles the resources and registers them for cleanup at process exit.
    pub fn register(dir: PathBuf, etcd: Proc, apiserver: Proc) -> Arc<Resources> {
        let res = Arc::new(Resources {
            dir,
            etcd,
            apiserver,
            cleaned: AtomicBool::new(false),
        });
        let teardown: Arc<dyn Teardown> = res.clone();
        register_at_exit(&teardown);
        res
    }

    /// Kills both processes and removes the temp dir (idempotent).
    pub fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        self.apiserver.kill();
        self.etcd.kill();
        remove_dir(&self.dir);
    }
}

impl Teardown for Resources {
    fn cleanup_at_exit(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        self.apiserver.kill_at_exit();
        self.etcd.kill_at_exit();
        remove_dir(&self.dir);
    }
}

/// Something to tear down when the process exits without dropping it (statics such as shared
/// control planes and clusters). Later registrations are torn down first.
pub(crate) trait Teardown: Send + Sync {
    /// Releases everything; runs from `atexit`, so it must not wait on locks others may hold.
    fn cleanup_at_exit(&self);
}

pub(crate) fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove the control plane's temp dir");
    }
}

static LIVE: Mutex<Vec<Weak<dyn Teardown>>> = Mutex::new(Vec::new());

/// Registers `res` for teardown at process exit (held weakly: dropping it first is fine).
pub(crate) fn register_at_exit(res: &Arc<dyn Teardown>) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain `extern "C"` function without arguments.
        let rc = unsafe { libc::atexit(cleanup_all_at_exit) };
        if rc != 0 {
            tracing::warn!(
                "atexit registration failed; shared control planes rely on PDEATHSIG only"
            );
        }
    });
    let mut live = lock(&LIVE);
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(res));
}

/// Runs at process exit (`std::process::exit` or returning from `main`): statics such as the
/// shared control plane are never dropped, so their processes and temp dirs are handled here.
extern "C" fn cleanup_all_at_exit() {
    let live = match LIVE.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    for res in live.iter().rev().filter_map(Weak::upgrade) {
        res.cleanup_at_exit();
    }
}

/// Creates the temp dir of a new control plane, with a pid file naming its owner.
pub(crate) fn create_dir() -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir()
        .map_err(|e| Error::io("creating the control plane's temp dir", e))?
        .keep();
    std::fs::write(dir.join(PID_FILE), std::process::id().to_string())
        .map_err(|e| Error::io(format!("writing {}", dir.join(PID_FILE).display()), e))?;
    Ok(dir)
}

/// Removes `eirinix-testenv-*` temp dirs whose owner process is dead (e.g. SIGKILLed tests).
pub(crate) fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Some(pid) = std::fs::read_to_string(path.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() || process_alive(pid) {
            continue;
        }
        tracing::debug!(dir = %path.display(), pid, "removing stale control plane dir");
        remove_dir(&path);
    }
}

pub(crate) fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
