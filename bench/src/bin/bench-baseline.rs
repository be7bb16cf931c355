//! `bench-baseline`: the throughput baselines. The same HTTP stack as `sample-warp-like` (hyper 1
//! on a multi-threaded tokio runtime, HTTP/1.1 keep-alive, `TCP_NODELAY`, a header read timeout
//! with tokio's timer) and the same response, [`samples::warp::respond`] (`GET /` → `200 hello`,
//! `text/plain`, `Content-Length: 5`), served from ONE process, without prefork.
//!
//! ```text
//! bench-baseline [-p PORT] [--threads N] [--mode plain|sample]
//! ```
//!
//! * `--mode plain` (default): the textbook hyper server, one task per connection.
//! * `--mode sample`: the accept loop and connection code of `sample-warp-like` itself,
//!   [`samples::warp::accept_loop`] (its byte-activity tracking, in-flight counting, `select!`
//!   against the drain watch, `JoinSet` of connections), with a drain that never starts. Beside
//!   `-w N` of the sample it isolates what prefork itself costs from what the sample's drain
//!   machinery costs.
//!
//! It binds `127.0.0.1:PORT` (0: a free port) with a backlog of 1024 (as the prefork listener),
//! prints `bench-baseline: listening on http://ADDR` on standard error, and serves until killed.

use std::convert::Infallible;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use samples::warp::{self, Drain, HEADER_READ_TIMEOUT};
use tokio::sync::watch;
use tokio::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut port: u16 = 0;
    let mut threads: usize = 2;
    let mut sample = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next();
        match (a.as_str(), v.as_deref()) {
            ("-p" | "--port", Some(p)) => port = p.parse()?,
            ("--threads", Some(t)) => threads = t.parse::<usize>()?.max(1),
            ("--mode", Some("plain")) => sample = false,
            ("--mode", Some("sample")) => sample = true,
            _ => {
                anyhow::bail!("usage: bench-baseline [-p PORT] [--threads N] [--mode plain|sample]")
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!(
            "bench-baseline: listening on http://{}",
            listener.local_addr()?
        );
        if sample {
            sample_accept_loop(listener).await
        } else {
            plain_accept_loop(listener).await
        }
    })
}

/// The plain server: accept forever, one task per connection.
async fn plain_accept_loop(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(
                    TokioIo::new(tcp),
                    service_fn(|req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(warp::respond(&req))
                    }),
                )
                .await;
        });
    }
}

/// `--mode sample`: `sample-warp-like`'s own accept loop, minus prefork: the drain never begins.
async fn sample_accept_loop(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    // The sender lives as long as the loop; it never sends.
    let (_drain_tx, drain_rx) = watch::channel(None::<Instant>);
    warp::accept_loop(0, listener, Drain::default(), drain_rx).await;
    Ok(())
}
