//! A cgroup of the tests' own, for the connect-time programs
//! (`margay_ebpf::host_lb`).

use std::path::{Path, PathBuf};

/// A cgroup of its own in a cgroup v2 hierarchy mounted for the test:
/// programs linked to it see no process. Unlinked, removed and unmounted
/// when dropped.
pub struct TestCgroup {
    mount: tempfile::TempDir,
    pub dir: PathBuf,
    root: PathBuf,
}

impl TestCgroup {
    /// A cgroup whose programs are those of BPF root `root` once linked.
    pub fn new(root: &Path) -> TestCgroup {
        let mount = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("cgroup2"),
            mount.path(),
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let dir = mount.path().join(crate::netns::unique_name("mgcg"));
        std::fs::create_dir(&dir).unwrap();
        TestCgroup {
            mount,
            dir,
            root: root.to_owned(),
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = margay_ebpf::host_lb::detach(&self.root);
        let _ = std::fs::remove_dir(&self.dir);
        let _ = nix::mount::umount2(self.mount.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}
