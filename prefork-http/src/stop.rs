//! How a worker learns, as a future, that the master wants it to stop.
//!
//! prefork-core offers a blocking [`StopSignal`](prefork_core::worker::StopSignal) today;
//! [`stopped`] bridges it to the runtime with one thread. It is the only place that knows how
//! the stop is learned: when the core offers an async `worker::stopped()`, this function
//! becomes a call to it and nothing else changes.

use std::io;

/// Takes over `SIGTERM`/`SIGINT` now (from here on they drain instead of killing) and returns
/// a future that resolves when one of them arrives.
pub(crate) fn stopped() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let stop = prefork_core::worker::stop_signal().map_err(io::Error::other)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("prefork-http-stop".into())
        .spawn(move || {
            stop.wait();
            let _ = tx.send(());
        })?;
    // An error means the thread ended without sending: stopping is the safe reading of that.
    Ok(async move {
        let _ = rx.await;
    })
}
