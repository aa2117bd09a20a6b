//! The relay's operator HTTP server: metrics, health, status and the live network view.
//!
//! | route          | answer                                                           |
//! |----------------|------------------------------------------------------------------|
//! | `GET /`        | the live network view (`web/index.html`, `app.css`, `app.js`, icon) |
//! | `GET /metrics` | Prometheus text exposition of [`Metrics`]                        |
//! | `GET /health`  | `200 {"status":"ok"}`                                            |
//! | `GET /status`  | JSON [`Status`]; `?since=N` keeps only trail samples `seq >= N`, `&history=false` leaves out the last 30 s of chart points |
//!
//! With a relay's [`BrowserAccess`] ([`serve_with_browsers`]), browsers join the world here too
//! (a bridge serves these routes and `/health` alone, [`serve_browsers`]):
//!
//! | route                 | answer                                                     |
//! |-----------------------|------------------------------------------------------------|
//! | `GET /play`           | the demo page (`web/play.html`, `play.js`, `play.css`)     |
//! | `GET /neonet/*.js`    | the browser client library (ES modules, no build step)     |
//! | `GET /connect.json`   | [`ConnectInfo`]: the WebTransport endpoint and its pin, the WebSocket path |
//! | `GET /ws`             | the WebSocket fallback ([`crate::relay::websocket`])       |
//!
//! # Running it beside the relay
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use neonet::metrics::{Metrics, MetricsConfig};
//!
//! let metrics = Arc::new(Metrics::new(MetricsConfig::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(neonet::http::serve(listener, metrics.clone(), async {
//!     let _ = stopped.await;
//! }));
//! // ... run the relay, calling metrics.record_*() ...
//! let _ = stop.send(());
//! server.await.expect("http task")?;
//! # Ok(())
//! # }
//! ```
//!
//! # Why axum
//! axum is hyper with routing, typed extractors (`Query`), JSON responses and graceful shutdown
//! already written and widely exercised; plain hyper would need the same accept loop,
//! connection builder and router written by hand. Built with `default-features = false` and
//! only `tokio`, `http1`, `json`, `query` and `ws` (the browsers' WebSocket fallback, on
//! tokio-tungstenite): no HTTP/2, no tracing layer.
//!
//! # Limits
//! At most [`HTTP_CONNECTIONS_MAX`] connections are served at once; further ones wait in the
//! kernel's accept backlog until one closes. Every response is built from bounded data (see
//! [`crate::metrics`]). There is no header-read timeout, so a slow client can hold one of those
//! connections: this port is for operators and must not face the public internet.
//!
//! The page and its assets are compiled in with `include_str!` and load nothing from elsewhere
//! (the closed network has no CDN); a `Content-Security-Policy` of `'self'` enforces that.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, Status};
use crate::relay::{BrowserAccess, ConnectInfo};

/// Connections served at once. The view polls over one keep-alive connection per browser tab,
/// and a scraper uses one more; 64 leaves room for a room full of operators while bounding the
/// relay's memory and file descriptors spent on this port.
pub const HTTP_CONNECTIONS_MAX: usize = 64;

/// Connections served at once with the browser routes: each WebSocket session holds one for its
/// whole life, so the bound is the relay's default connection limit (4,096, as for QUIC) plus
/// [`HTTP_CONNECTIONS_MAX`] for operators.
pub const HTTP_CONNECTIONS_WITH_BROWSERS_MAX: usize = 4096 + HTTP_CONNECTIONS_MAX;

/// The live view page.
const INDEX_HTML: &str = include_str!("../web/index.html");
/// The live view's script.
const APP_JS: &str = include_str!("../web/app.js");
/// The live view's style sheet.
const APP_CSS: &str = include_str!("../web/app.css");

/// The live view's icon (also answered at `/favicon.ico`, which browsers ask for unbidden).
const FAVICON_SVG: &str = include_str!("../web/favicon.svg");

/// The demo page and the browser client library (ES modules served as they are).
const PLAY_HTML: &str = include_str!("../web/play.html");
const PLAY_JS: &str = include_str!("../web/play.js");
const PLAY_CSS: &str = include_str!("../web/play.css");
const NEONET_CLIENT_JS: &str = include_str!("../web/neonet/client.js");
const NEONET_WIRE_JS: &str = include_str!("../web/neonet/wire.js");
const NEONET_DATAGRAM_JS: &str = include_str!("../web/neonet/datagram.js");
const NEONET_MOVEMENT_JS: &str = include_str!("../web/neonet/movement.js");

/// The demo page may also connect to the relay's WebTransport endpoint: another port, so
/// another origin (`https:`), and its own WebSocket (`'self'`).
const PLAY_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                        script-src 'self'; connect-src 'self' https:; frame-ancestors 'none'";

/// Prometheus text exposition format content type.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything loads from this origin only; inline styles are allowed for canvas-free bits.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The router with every route, for embedding in another server or for tests.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .route("/metrics", get(prometheus))
        .route("/health", get(health))
        .route("/status", get(status))
        .with_state(metrics)
}

/// [`router`] plus the browser routes ([`browser_router`]) of a relay's [`BrowserAccess`].
pub fn router_with_browsers(metrics: Arc<Metrics>, browsers: Arc<BrowserAccess>) -> Router {
    router(metrics).merge(browser_router(browsers))
}

/// The browser routes alone: the demo page, the client library, `/connect.json` and the
/// WebSocket fallback of `browsers` (a relay's or a bridge's).
pub fn browser_router(browsers: Arc<BrowserAccess>) -> Router {
    let js = "text/javascript; charset=utf-8";
    let page = |body: &'static str, content_type: &'static str| {
        get(move || async move { with_csp(body, content_type, PLAY_CSP) })
    };
    Router::new()
        .route("/play", page(PLAY_HTML, "text/html; charset=utf-8"))
        .route("/play.js", page(PLAY_JS, js))
        .route("/play.css", page(PLAY_CSS, "text/css; charset=utf-8"))
        .route("/neonet/client.js", page(NEONET_CLIENT_JS, js))
        .route("/neonet/wire.js", page(NEONET_WIRE_JS, js))
        .route("/neonet/datagram.js", page(NEONET_DATAGRAM_JS, js))
        .route("/neonet/movement.js", page(NEONET_MOVEMENT_JS, js))
        .route("/connect.json", get(connect_info))
        .route("/ws", get(crate::relay::websocket::ws_handler))
        .with_state(browsers)
}

async fn connect_info(State(browsers): State<Arc<BrowserAccess>>) -> Json<ConnectInfo> {
    Json(browsers.connect_info())
}

/// [`serve`] with the browser routes of [`router_with_browsers`].
pub async fn serve_with_browsers(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    browsers: Arc<BrowserAccess>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_router(
        listener,
        router_with_browsers(metrics, browsers),
        HTTP_CONNECTIONS_WITH_BROWSERS_MAX,
        shutdown,
    )
    .await
}

/// Serves only the browser routes ([`browser_router`]) and `/health`: a bridge's HTTP port,
/// which faces the public web and has no operator routes. At most `connections_max` connections at once (each
/// WebSocket session holds one).
pub async fn serve_browsers(
    listener: TcpListener,
    browsers: Arc<BrowserAccess>,
    connections_max: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = browser_router(browsers).route("/health", get(health));
    serve_router(listener, router, connections_max, shutdown).await
}

/// Serves `router` on `listener`, at most `connections_max` connections at once, until
/// `shutdown` completes.
async fn serve_router(
    listener: TcpListener,
    router: Router,
    connections_max: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = LimitedListener {
        inner: listener,
        permits: Arc::new(Semaphore::new(connections_max)),
    };
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The address of the peer of an HTTP connection (a browser's WebSocket session shows it in
/// `/status`), as axum's `ConnectInfo` for our connection-limited listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Serves the operator HTTP routes on `listener` until `shutdown` completes, then finishes the
/// requests in flight and returns.
///
/// # Errors
/// Only what the underlying server returns; accept errors (such as running out of file
/// descriptors) are retried after a pause, not returned.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_router(listener, router(metrics), HTTP_CONNECTIONS_MAX, shutdown).await
}

fn with_type(body: &'static str, content_type: &'static str) -> Response {
    with_csp(body, content_type, CSP)
}

fn with_csp(body: &'static str, content_type: &'static str, csp: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(csp),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    with_type(INDEX_HTML, "text/html; charset=utf-8")
}

async fn app_js() -> Response {
    with_type(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    with_type(APP_CSS, "text/css; charset=utf-8")
}

async fn favicon() -> Response {
    with_type(FAVICON_SVG, "image/svg+xml")
}

async fn prometheus(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        )],
        metrics.render_prometheus(),
    )
        .into_response()
}

async fn health() -> Response {
    (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response()
}

/// Query of `GET /status`.
#[derive(Debug, Default, Deserialize)]
struct StatusQuery {
    /// Only trail samples with `seq >= since`.
    since: Option<u64>,
    /// `false`: without [`Status::history`] (the live view needs it only when it opens).
    history: Option<bool>,
}

async fn status(State(metrics): State<Arc<Metrics>>, Query(q): Query<StatusQuery>) -> Response {
    let mut status: Status = metrics.status_since(q.since.unwrap_or(0));
    if q.history == Some(false) {
        status.history = Vec::new();
    }
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(status),
    )
        .into_response()
}

/// A TCP listener that holds a semaphore permit for each connection it hands out.
pub(crate) struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so acquiring only waits.
        let permit = loop {
            if let Ok(p) = self.permits.clone().acquire_owned().await {
                break p;
            }
        };
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        (
            LimitedStream {
                stream,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection counted against [`HTTP_CONNECTIONS_MAX`] until dropped.
pub(crate) struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
