//! Netlink connections, each bound to one network namespace, all driven by
//! one current-thread runtime, and the way into a pod's namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use margay_conf::{CniError, Code};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};
use tokio::runtime::Runtime;

/// A netlink socket in the namespace of the thread that opened it (sockets
/// stay in the namespace they were created in), and the runtime that drives
/// it and any connection [`Netlink::open_in`] adds.
///
/// ```no_run
/// # use margay_conf::CniError;
/// use std::path::Path;
///
/// use margay_plugin::link;
/// use margay_plugin::netlink::{Netlink, open_netns};
///
/// let host = Netlink::open()?;
/// let pod = host.open_in(&open_netns(Path::new("/var/run/netns/cni-1234"))?)?;
/// // Both lookups go out at once, one in each namespace.
/// let (veth, eth0) = host.run(futures::future::try_join(
///     link::find(&host.handle, "mrg0123456789a"),
///     link::find(&pod, "eth0"),
/// ))?;
/// # Ok::<(), CniError>(())
/// ```
pub struct Netlink {
    rt: Runtime,
    /// The request handle of the socket in the opening thread's namespace.
    pub handle: Handle,
}

impl Netlink {
    /// A connection in the current thread's namespace.
    ///
    /// # Errors
    ///
    /// [`Code::Kernel`] when the runtime cannot be started or the netlink
    /// socket cannot be opened.
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

    /// A second connection, whose socket lives in `netns`, driven by this
    /// one's runtime, so that one `run` can issue requests on both sides at
    /// once (and pipeline several on each) instead of a thread, a runtime
    /// and a socket per step in the pod. Only the socket is made inside the
    /// namespace, by a thread that enters it, makes it and ends there: no
    /// other code of ours ever runs in the pod's namespace by accident.
    ///
    /// # Errors
    ///
    /// [`Code::Kernel`] when the thread cannot enter `netns` or the socket
    /// cannot be opened there.
    pub fn open_in(&self, netns: &File) -> Result<Handle, CniError> {
        let socket = std::thread::scope(|s| {
            s.spawn(|| {
                setns(netns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| CniError::kernel("cannot enter the pod's network namespace", e))?;
                Socket::new(NETLINK_ROUTE)
                    .map_err(|e| CniError::kernel("cannot open a netlink socket in the pod", e))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        let _entered = self.rt.enter();
        // SAFETY: the descriptor is a netlink socket we own and give away.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        self.rt.spawn(conn);
        Ok(handle)
    }

    /// Runs netlink exchanges to completion.
    pub fn run<T>(&self, work: impl Future<Output = T>) -> T {
        self.rt.block_on(work)
    }
}

/// Opens the namespace file a runtime passed in `CNI_NETNS`.
///
/// # Errors
///
/// [`Code::UnknownContainer`] when the file does not exist (the container
/// is gone); [`Code::InvalidEnvironment`] when it cannot be opened for
/// another reason.
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

/// The errno of a failed netlink request, if the kernel sent one: what
/// tells an expected refusal (`EEXIST`, `ENODEV`) from a failure.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}
