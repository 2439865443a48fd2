//! A netlink connection of the current network namespace for one piece of
//! async work, on a runtime of the calling thread (the library is called
//! from short-lived, single-threaded processes: the plugin, margayctl).

/// Runs `work` on a fresh rtnetlink connection; `err` turns a failure to
/// set the connection up into the caller's error.
pub(crate) fn with_netlink<T, E>(
    work: impl AsyncFnOnce(&rtnetlink::Handle) -> Result<T, E>,
    err: impl Fn(String) -> E,
) -> Result<T, E> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| err(format!("netlink runtime: {e}")))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| err(format!("netlink: {e}")))?;
        tokio::spawn(conn);
        work(&handle).await
    })
}
