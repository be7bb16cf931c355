//! `sample-warp-like`'s application: `GET /` answers `hello`, anything else 404 ([`respond`],
//! as a tower service: [`App`]). It is served by `prefork-http`, which does the accepting and
//! the keep-alive-safe drain.
//!
//! [`accept_loop`] keeps the signature `bench-baseline --mode sample` calls: the same serving
//! code as `sample-warp-like` (`prefork_http::serve_with_shutdown` with [`App`]), in one
//! process, with a drain that never begins, to tell what prefork costs from what this code
//! costs.

use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = prefork_http::Options::DEFAULT_HEADER_READ_TIMEOUT;

/// How a stopping worker drains: `prefork-http`'s options (`--drain-grace`, `--drain-timeout`).
pub type Drain = prefork_http::Options;

/// The application: `GET /` (or `HEAD /`) answers `200 hello` (`text/plain`), another method
/// on `/` 405, any other path 404.
pub fn respond(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body): (StatusCode, &'static [u8]) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/") => (StatusCode::OK, b"hello"),
        (_, "/") => (StatusCode::METHOD_NOT_ALLOWED, b"method not allowed\n"),
        _ => (StatusCode::NOT_FOUND, b"not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

/// [`respond`] as a tower service, always ready.
#[derive(Clone, Copy, Debug, Default)]
pub struct App;

impl tower_service::Service<Request<Incoming>> for App {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(respond(&req)))
    }
}

/// [`App`] plus the debug endpoints (`--debug-endpoints`, see [`crate::debug`]): `/block`,
/// `/grow`, `/drip`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DebugApp;

/// A response body of [`DebugApp`]: whole, or streamed.
pub type DebugBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl tower_service::Service<Request<Incoming>> for DebugApp {
    type Response = Response<DebugBody>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        use http_body_util::BodyExt;
        let q = req.uri().query();
        let text = |s: String| Response::new(Full::new(Bytes::from(s)).boxed());
        let resp = match (req.method(), req.uri().path()) {
            // Blocks this runtime thread, here, in the service call.
            (&Method::GET, "/block") => text(crate::debug::block(q)),
            (&Method::GET, "/grow") => text(crate::debug::grow(q)),
            (&Method::GET, "/drip") => {
                use futures_util::StreamExt;
                let frames = crate::debug::drip(crate::debug::drip_chunks(q))
                    .map(|s| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(s))));
                Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
            }
            _ => respond(&req).map(BodyExt::boxed),
        };
        std::future::ready(Ok(resp))
    }
}

/// Serves [`App`] on `listener` until `drain` holds `Some(_)`, then drains as `cfg` says.
///
/// If the drain never begins (or its sender is dropped), this serves forever. `id` names the
/// worker in the logs.
pub async fn accept_loop(
    id: u32,
    listener: TcpListener,
    cfg: Drain,
    mut drain: watch::Receiver<Option<Instant>>,
) {
    let stop = async move {
        if drain.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let served = prefork_http::serve_with_shutdown(listener, App, cfg, stop)
        .instrument(tracing::info_span!("worker", id))
        .await;
    if let Err(e) = served {
        tracing::error!(worker = id, error = %e, "cannot serve");
    }
}
