//! A cgroup of its own for each test node's systemd-nspawn. With `--keep-unit`, nspawn makes
//! its `payload/` and `supervisor/` cgroups inside the cgroup it was started in; two nodes
//! started from one test process would share them. Each node gets a directory of its own in
//! the hierarchies nspawn uses (the named `systemd` one and the unified one), removed on drop.

use std::fs;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Per-node cgroup directories; removed, with what nspawn left inside, on drop.
#[derive(Debug)]
pub struct NodeCgroup {
    dirs: Vec<PathBuf>,
}

impl NodeCgroup {
    /// Creates `name` under this process's cgroup in each hierarchy nspawn uses.
    pub fn create(name: &str) -> Self {
        let own = fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup readable");
        let dirs: Vec<PathBuf> = hierarchies(&own, Path::new(CGROUP_ROOT))
            .into_iter()
            .map(|(mount, path)| mount.join(path.trim_start_matches('/')).join(name))
            .collect();
        assert!(
            !dirs.is_empty(),
            "no named systemd or unified cgroup hierarchy in /proc/self/cgroup: {own}"
        );
        for dir in &dirs {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        Self { dirs }
    }

    /// The node's cgroup directories, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files a process writes its pid to, to move into these cgroups.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|dir| dir.join("cgroup.procs"))
            .collect()
    }
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            if let Err(error) = remove_tree(dir) {
                eprintln!("cannot remove cgroup {}: {error}", dir.display());
            }
        }
    }
}

/// Mount point and this process's path in the hierarchies nspawn uses: `name=systemd` and
/// the unified one (`0::`), the latter at the cgroup root itself on a pure cgroup v2 host.
fn hierarchies(own: &str, root: &Path) -> Vec<(PathBuf, String)> {
    let pure_v2 = root.join("cgroup.controllers").exists();
    own.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let mount = match (id, controllers) {
                ("0", "") if pure_v2 => root.to_path_buf(),
                ("0", "") => root.join("unified"),
                (_, "name=systemd") => root.join("systemd"),
                _ => return None,
            };
            mount.exists().then(|| (mount, path.to_string()))
        })
        .collect()
}

/// Removes a cgroup and its children, deepest first: cgroup directories go with `rmdir` only.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "9:name=systemd:/ci\n8:pids:/\n4:memory:/process_api/x\n0::/ci\n";

    #[test]
    fn hybrid_layout_yields_the_named_systemd_and_unified_hierarchies_only() {
        let root = tempfile::TempDir::new().unwrap();
        for hierarchy in ["systemd", "unified", "memory", "pids"] {
            fs::create_dir(root.path().join(hierarchy)).unwrap();
        }
        let found = hierarchies(OWN, root.path());
        assert_eq!(
            found,
            vec![
                (root.path().join("systemd"), "/ci".to_string()),
                (root.path().join("unified"), "/ci".to_string()),
            ]
        );
    }

    #[test]
    fn pure_v2_layout_yields_the_cgroup_root() {
        let root = tempfile::TempDir::new().unwrap();
        fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let found = hierarchies("0::/ci\n", root.path());
        assert_eq!(found, vec![(root.path().to_path_buf(), "/ci".to_string())]);
    }
}
