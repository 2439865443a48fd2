//! The BPF filesystem pins live on.

use std::path::Path;

use nix::mount::{MsFlags, mount};

use crate::error::DataplaneError;

/// Where bpffs is mounted; [`ensure_root`] mounts it there when it is not.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// True when `path` is on a bpffs: pins can only be made there, and a
/// path that cannot be read counts as not.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes sure `root` can hold pins: bpffs is mounted at /sys/fs/bpf (we
/// mount it when it is not) and `root` lies on a bpffs.
///
/// # Errors
///
/// [`DataplaneError::Bpffs`] when `root` is under /sys/fs/bpf, nothing is
/// mounted there and mounting bpffs fails; [`DataplaneError::Root`] when
/// `root` cannot be created or is not on a bpffs.
pub fn ensure_root(root: &Path) -> Result<(), DataplaneError> {
    if root.starts_with(BPFFS) && !is_bpffs(Path::new(BPFFS)) {
        mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| DataplaneError::Bpffs { source: e.into() })?;
    }
    std::fs::create_dir_all(root).map_err(|e| DataplaneError::Root {
        path: root.to_owned(),
        source: e.into(),
    })?;
    if !is_bpffs(root) {
        return Err(DataplaneError::Root {
            path: root.to_owned(),
            source: "is not on a bpffs (mount -t bpf bpf /sys/fs/bpf)".into(),
        });
    }
    Ok(())
}
