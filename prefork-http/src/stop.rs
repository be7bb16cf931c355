//! How a worker learns, as a future, that the master wants it to stop.
//!
//! The core's [`worker::stopped`](prefork_core::worker::stopped) is that future; this module is
//! the one place the layer asks for it.

use std::io;

/// Takes over the stop signal and `SIGINT` now (from here on they drain instead of killing)
/// and returns a future that resolves when one of them arrives.
pub(crate) fn stopped() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    // Install now, so that a failure is reported before serving starts.
    prefork_core::worker::stop_signal().map_err(io::Error::other)?;
    Ok(async {
        // Installed above: this cannot fail any more.
        let _ = prefork_core::worker::stopped().await;
    })
}
