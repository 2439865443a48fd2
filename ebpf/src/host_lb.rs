//! Services for host-networked clients (kubelet, hostNetwork pods, the
//! node's own processes): the pinned cgroup programs (`bpf/host_lb.h`)
//! linked to the node's cgroup v2 directory, so a connect to a service is
//! given a backend before any packet exists. Only the node's network
//! namespace is served (its cookie, recorded in `node_config`); pods keep
//! the per-packet path.
//!
//! The links are pinned under the BPF root: they outlive the process that
//! made them (an agent restart changes nothing), and an upgrade moves them
//! onto the new programs in place (`node`'s loader).
//!
//! ```no_run
//! # use margay_ebpf::host_lb;
//! host_lb::attach("/sys/fs/bpf/margay".as_ref(), "/run/margay/cgroup2".as_ref())?;
//! # Ok::<(), margay_ebpf::DataplaneError>(())
//! ```

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramInfo};

use crate::error::{Cause, DataplaneError};
use crate::link;
use crate::maps;
use crate::node::SOCKET_PROGRAMS;
use crate::paths::{link_path, program_path};

/// `statfs` magic of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `SO_NETNS_COOKIE` (Linux 5.14): the calling socket's network namespace.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// What [`DataplaneError::Attach`] names when a step every socket program's
/// linking shares failed, before any program was linked.
pub const ALL_SOCKET_PROGRAMS: &str = "the socket programs";

/// What every socket program's linking shares (the cgroup, mounting its
/// hierarchy, the links' directory) failed: reported as all of theirs.
fn attach_error(cgroup: &Path, reason: impl Into<Cause>) -> DataplaneError {
    program_error(ALL_SOCKET_PROGRAMS, cgroup, reason)
}

/// Socket program `program` could not be linked to `cgroup`.
fn program_error(program: &'static str, cgroup: &Path, reason: impl Into<Cause>) -> DataplaneError {
    DataplaneError::Attach {
        program,
        ifname: format!("cgroup {}", cgroup.display()),
        source: reason.into(),
    }
}

/// Links the programs to `cgroup` (a cgroup v2 directory holding the
/// node's processes; where there is none yet, as on a cgroup v1 machine, the
/// cgroup v2 hierarchy is mounted at that path first) and records this
/// process's network namespace as the node's. Links already there for the
/// same programs and cgroup are kept; others are replaced (a changed
/// cgroup, programs pinned anew).
///
/// # Errors
///
/// [`DataplaneError::Attach`] (interface `cgroup <path>`) naming
/// [`ALL_SOCKET_PROGRAMS`] when `cgroup` is neither a cgroup v2 directory
/// nor an empty one the hierarchy can be mounted on (or cannot be read or
/// mounted), or the links' directory cannot be made; naming the program
/// when it is not pinned under `root`, or cannot be linked or its link
/// pinned; [`DataplaneError::NetnsCookie`]
/// when the kernel cannot tell this network namespace's cookie (before
/// Linux 5.14); [`DataplaneError::Map`] naming `node_config` when the
/// cookie cannot be recorded.
pub fn attach(root: &Path, cgroup: &Path) -> Result<(), DataplaneError> {
    ensure_cgroup2(cgroup)?;
    let cgroup_id = std::fs::metadata(cgroup)
        .map_err(|e| attach_error(cgroup, e))?
        .ino();
    record_netns(root)?;
    std::fs::create_dir_all(root.join("links"))
        .map_err(|e| attach_error(cgroup, format!("creating the links' directory: {e}")))?;
    let dir = std::fs::File::open(cgroup).map_err(|e| attach_error(cgroup, e))?;
    for (name, hook) in SOCKET_PROGRAMS {
        let prog_pin = program_path(root, name);
        let program_id = ProgramInfo::from_pin(&prog_pin)
            .map_err(|e| program_error(name, cgroup, format!("it is not pinned: {e}")))?
            .id();
        let pin = link_path(root, name);
        let current = link::open_pinned(&pin)
            .and_then(|fd| link::cgroup_link(fd.as_fd()))
            .ok();
        if current
            == Some(link::CgroupLink {
                program_id,
                cgroup_id,
            })
        {
            continue;
        }
        let fail = |e: &(dyn std::error::Error + 'static)| {
            program_error(name, cgroup, crate::error::report(e))
        };
        let mut prog = CgroupSockAddr::from_pin(&prog_pin, hook).map_err(|e| fail(&e))?;
        // A cgroup link takes no attach flags (the kernel refuses any with
        // EINVAL): links always coexist with other programs' links. aya
        // passes `Single` as none.
        let id = prog
            .attach(dir.as_fd(), CgroupAttachMode::Single)
            .map_err(|e| fail(&e))?;
        let link: aya::programs::links::FdLink = prog
            .take_link(id)
            .map_err(|e| fail(&e))?
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| fail(&e))?;
        // The old link goes once the new one is pinned: both run meanwhile,
        // never neither.
        let aside = crate::paths::set_aside_path(&pin);
        let had_one = std::fs::rename(&pin, &aside).is_ok();
        link.pin(&pin)
            .map_err(|e| program_error(name, cgroup, format!("pinning {}: {e}", pin.display())))?;
        if had_one {
            let _ = std::fs::remove_file(&aside);
        }
        tracing::info!(program = name, cgroup = %cgroup.display(), "linked to the node's cgroup");
    }
    Ok(())
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
}

/// `cgroup` is a cgroup v2 directory, or an empty (or missing) directory
/// where the hierarchy gets mounted.
fn ensure_cgroup2(cgroup: &Path) -> Result<(), DataplaneError> {
    if is_cgroup2(cgroup) {
        return Ok(());
    }
    std::fs::create_dir_all(cgroup).map_err(|e| attach_error(cgroup, e))?;
    let empty = std::fs::read_dir(cgroup)
        .map_err(|e| attach_error(cgroup, e))?
        .next()
        .is_none();
    if !empty {
        return Err(attach_error(
            cgroup,
            "neither a cgroup v2 directory nor an empty one to mount the hierarchy on",
        ));
    }
    nix::mount::mount(
        Some("cgroup2"),
        cgroup,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| attach_error(cgroup, format!("mounting the cgroup v2 hierarchy: {e}")))?;
    tracing::info!(path = %cgroup.display(), "mounted the cgroup v2 hierarchy");
    Ok(())
}

/// Unlinks the programs: host-networked clients reach services no more
/// (kube-proxy's job again). The node's network namespace is forgotten
/// too (its cookie in `node_config` set to 0).
///
/// # Errors
///
/// [`DataplaneError::Pin`] when a link's pin exists and cannot be removed;
/// [`DataplaneError::Map`] naming `node_config` when it exists and cannot
/// be written.
pub fn detach(root: &Path) -> Result<(), DataplaneError> {
    for (name, _) in SOCKET_PROGRAMS {
        let pin = link_path(root, name);
        match std::fs::remove_file(&pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DataplaneError::Pin {
                    path: pin,
                    source: e.into(),
                });
            }
            _ => {}
        }
    }
    if crate::paths::map_path(root, "node_config").exists() {
        set_netns_cookie(root, 0)?;
    }
    Ok(())
}

/// Whether every socket program is linked (to some cgroup), as its pinned
/// link says.
pub fn attached(root: &Path) -> bool {
    SOCKET_PROGRAMS
        .iter()
        .all(|(name, _)| link::open_pinned(&link_path(root, name)).is_ok())
}

fn record_netns(root: &Path) -> Result<(), DataplaneError> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .map_err(|source| DataplaneError::NetnsCookie { source })?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the kernel to write a u64 into.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(DataplaneError::NetnsCookie {
            source: std::io::Error::last_os_error(),
        });
    }
    set_netns_cookie(root, cookie)
}

fn set_netns_cookie(root: &Path, cookie: u64) -> Result<(), DataplaneError> {
    maps::update_node_config(root, |c| c.host_netns_cookie = cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_cgroup_is_every_socket_programs_failure_not_the_first_ones() {
        let cgroup = tempfile::tempdir().unwrap();
        std::fs::write(cgroup.path().join("not-a-cgroup"), "").unwrap();
        let root = cgroup.path().join("no-bpf-root");
        let e = attach(&root, cgroup.path()).unwrap_err();
        let DataplaneError::Attach {
            program, ifname, ..
        } = &e
        else {
            panic!("not an Attach error: {e:?}");
        };
        assert_eq!(*program, ALL_SOCKET_PROGRAMS);
        assert_eq!(*ifname, format!("cgroup {}", cgroup.path().display()));
        assert_eq!(
            e.to_string(),
            format!(
                "attaching the socket programs to cgroup {} failed: neither a cgroup v2 \
                 directory nor an empty one to mount the hierarchy on",
                cgroup.path().display()
            )
        );
    }
}
