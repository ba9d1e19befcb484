//! Reaping what test processes that died without cleaning up (SIGKILL, a crash) left behind:
//! the processes and cgroups of their nodes first, then their temp dirs.

use crate::cluster::cgroup;
use crate::process;

/// Kills and removes stale node cgroup trees, then removes stale temp dirs.
pub(crate) fn reap() {
    for tree in cgroup::stale_trees(process::process_alive) {
        tracing::debug!(cgroup = tree, "removing a dead test run's node");
        cgroup::destroy(&tree);
    }
    process::remove_stale_dirs();
}
