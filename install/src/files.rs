//! Files put in place atomically: written beside the target, then renamed
//! over it, so a kubelet exec'ing a plugin or reading the conf dir never
//! sees half a file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// Already there with the same content (and mode): left alone.
    Unchanged,
}

/// Writes `content` to `target` with `mode`, unless it already holds it.
pub fn put(target: &Path, content: &[u8], mode: u32) -> Result<Outcome> {
    if let Ok(existing) = fs::read(target)
        && existing == content
        && fs::metadata(target).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode)
    {
        return Ok(Outcome::Unchanged);
    }
    let dir = target.parent().context("a target has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = target
        .file_name()
        .context("a target has a name")?
        .to_string_lossy();
    let temp = dir.join(format!(".{name}.margay-install.{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        f.write_all(content)?;
        // umask may have narrowed the mode.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&temp, target)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e).with_context(|| format!("writing {}", target.display()));
    }
    Ok(Outcome::Written)
}

/// Removes `path`; true when it existed.
pub fn remove(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
