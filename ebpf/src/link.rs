//! Pinned BPF links, the few operations aya 0.14 keeps to itself: opening a
//! pin, reading a cgroup link's program and cgroup, and moving a link onto
//! another program in place (`BPF_LINK_UPDATE`, atomic: no call sees no
//! program).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `union bpf_attr`, large enough for every command used here.
#[repr(C, align(8))]
struct Attr([u32; 16]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, fully initialised bpf_attr of the size
    // passed; the kernel reads (and for info, writes through) only what the
    // command defines.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens the link pinned at `pin`.
pub fn open_pinned(pin: &Path) -> std::io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr([0; 16]);
    let ptr = path.as_ptr() as u64;
    attr.0[0] = ptr as u32;
    attr.0[1] = (ptr >> 32) as u32;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What a cgroup link runs and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLink {
    /// The program it runs.
    pub program_id: u32,
    /// The cgroup's id: its directory's inode number on cgroup v2.
    pub cgroup_id: u64,
}

/// The program and cgroup of the link `fd`.
pub fn cgroup_link(fd: BorrowedFd<'_>) -> std::io::Result<CgroupLink> {
    // struct bpf_link_info: type, id, prog_id, then the cgroup member
    // (cgroup_id: u64, attach_type: u32) at offset 16.
    let mut info = [0u32; 16];
    let mut attr = Attr([0; 16]);
    attr.0[0] = fd.as_raw_fd() as u32;
    attr.0[1] = std::mem::size_of_val(&info) as u32;
    let ptr = info.as_mut_ptr() as u64;
    attr.0[2] = ptr as u32;
    attr.0[3] = (ptr >> 32) as u32;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(CgroupLink {
        program_id: info[2],
        cgroup_id: u64::from(info[4]) | (u64::from(info[5]) << 32),
    })
}

/// Moves link `link` onto program `program`.
pub fn update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut attr = Attr([0; 16]);
    attr.0[0] = link.as_raw_fd() as u32;
    attr.0[1] = program.as_raw_fd() as u32;
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}
