//! A netlink connection bound to one network namespace, driven by its own
//! current-thread runtime, and the way into a pod's namespace.

use std::fs::File;
use std::future::Future;
use std::path::Path;

use margay_conf::{CniError, Code};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;
use tokio::runtime::Runtime;

/// A netlink socket in the namespace of the thread that opened it (sockets
/// stay in the namespace they were created in).
pub struct Netlink {
    rt: Runtime,
    pub handle: Handle,
}

impl Netlink {
    /// A connection in the current thread's namespace.
    pub fn open() -> Result<Netlink, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| CniError::kernel("cannot start the netlink runtime", e))?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| CniError::kernel("cannot open a netlink socket", e))?;
            tokio::spawn(conn);
            Ok::<_, CniError>(handle)
        })?;
        Ok(Netlink { rt, handle })
    }

    /// Runs one netlink exchange to completion.
    pub fn run<T>(&self, work: impl Future<Output = T>) -> T {
        self.rt.block_on(work)
    }
}

/// Opens the namespace file a runtime passed in `CNI_NETNS`.
pub fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            Code::UnknownContainer
        } else {
            Code::InvalidEnvironment
        };
        CniError::new(
            code,
            format!("CNI_NETNS {} cannot be opened", path.display()),
        )
        .with_details(e)
    })
}

/// Runs `work` with a netlink connection inside the namespace `netns`, on a
/// thread that enters it and ends there: no other code of ours ever runs
/// in the pod's namespace by accident.
pub fn in_netns<T: Send>(
    netns: &File,
    work: impl FnOnce(&Netlink) -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(netns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| CniError::kernel("cannot enter the pod's network namespace", e))?;
            work(&Netlink::open()?)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The errno of a failed netlink request, if the kernel sent one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}
