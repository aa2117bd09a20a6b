//! The bridge: browsers' ways in (WebTransport, the WebSocket fallback, the demo page, the client
//! library, `/connect.json`) in front of a relay that stays off the public web. Each browser
//! session gets its own native QUIC connection to the upstream relay, and the bridge only pipes.
//!
//! ## What it reuses of the relay
//! The browser certificate and its rotation (`relay::BrowserTls`,
//! `BrowserAccess::rotate_every`), the WebTransport handshake and path check
//! (`webtransport_session`), the HTTP routes ([`crate::http::serve_browsers`]), the WebSocket
//! origin and subprotocol checks, framing and latest-wins send queue
//! ([`crate::relay::websocket`]), and the stream plumbing of [`crate::quic`]
//! (`ChannelWriters`, `accept_streams`, the [`quic::UniStreams`] seam).
//!
//! ## Piping
//! - **WebTransport**: a session's unidirectional streams and datagrams carry exactly the bytes
//!   of a native connection's (channel byte, then length-prefixed frames), so every stream the
//!   browser opens becomes one upstream stream and the other way round, copied a chunk at a
//!   time ([`quic::STREAM_READ_CHUNK_BYTES`] at most in flight per stream; flow control holds
//!   the sender back), and datagrams are passed on as they are.
//! - **WebSocket**: a message `[channel][body]` becomes a length-prefixed frame on the upstream
//!   channel's stream (through `ChannelWriters`, bounded per channel); upstream frames are
//!   decoded with `FrameDecoder::for_server_channel` (so the server limits hold) and become
//!   messages; `0x80` messages and QUIC datagrams are passed on. Towards the browser datagrams
//!   are latest-wins and reliable bytes have the relay's budget
//!   ([`crate::relay::websocket::WS_RELIABLE_QUEUE_BYTES_MAX`]); a slow reader is closed with a
//!   reason, and so is its upstream connection.
//!
//! ## Trust
//! The bridge checks no more than it must to bound its own memory and connections
//! ([`BridgeConfig::connections_max`]); the relay checks everything a browser sends, exactly as
//! for a direct session (a bridged session is a native connection to it).
//!
//! ## Ends
//! When either side ends, the other is closed with the same application code and reason (a
//! WebSocket carries a QUIC code `c` as `4000 + c`). The relay's `Close` message is a frame like
//! any other and reaches the browser before the transport close: when the relay closes, the
//! bridge first drains what it already received ([`quic::CLOSE_FLUSH_TIMEOUT`] at most). When
//! the relay cannot be reached or vanishes without a close, the browser gets
//! [`CLOSE_CODE_UPSTREAM`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use neonet_proto::wire::codec::{self, DecodeError, FrameDecoder, FRAME_HEADER_BYTES};
use neonet_proto::wire::msg::{Channel, CloseReason};

use crate::quic::{self, ChannelWriters, ReadFailure, StreamEvent, UniRecv, UniSend, UniStreams};
use crate::relay::websocket::{
    parse_message, quic_close_code_of, ws_close_code_of, WsIn, WsOut, OVERFLOW_REASON,
};
use crate::relay::{
    accept_handshake, is_webtransport, webtransport_session, Backend, BrowserAccess, BrowserTls,
    Ended, PeerConn, HANDSHAKE_TIMEOUT, SHUTDOWN_TIMEOUT,
};
use crate::tls::{Fingerprint, TlsError, Trust};

mod websocket;
mod webtransport;

pub(crate) use websocket::serve_websocket;
use webtransport::serve_webtransport;

/// The bridge's default UDP address for WebTransport: next to the relay's default 4433, so a
/// relay and its bridge can share a machine while trying it out.
pub const LISTEN_DEFAULT: &str = "0.0.0.0:4443";

/// The bridge's default HTTP address (the page, `/connect.json`, `/ws`): loopback, for a
/// reverse proxy in front; an operator opens it up on purpose.
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:4490";

/// Browser sessions bridged at once by default, WebTransport and WebSocket together: the
/// relay's own default connection limit, since every bridged session is one of its connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = crate::config::CONNECTIONS_MAX_DEFAULT;

pub use crate::quic::CLOSE_CODE_UPSTREAM;

/// Application close code of a native QUIC client that reached the bridge: it only serves
/// browsers (WebTransport).
pub const CLOSE_CODE_NOT_A_BROWSER: u32 = 0x102;

/// WebSocket close code when the bridge already carries [`BridgeConfig::connections_max`]
/// sessions: RFC 6455's "try again later".
pub const WS_CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Upstream stream reads waiting for a WebSocket session's writer, each one read of at most
/// [`quic::STREAM_READ_CHUNK_BYTES`]: enough to keep the four channels' readers busy; when it
/// is full the readers wait and QUIC flow control holds the relay back.
const WS_DOWN_QUEUE_LEN: usize = 16;

/// Settings of a bridge.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The relay's address, `HOST:PORT` (resolved at start; `HOST` is also the TLS server name).
    pub upstream: String,
    /// How the bridge authenticates the relay.
    pub upstream_trust: Trust,
    /// UDP address of the bridge's WebTransport endpoint.
    pub listen: SocketAddr,
    /// TCP address of the bridge's HTTP server.
    pub http_listen: SocketAddr,
    /// Development certificate folder (generated on first use), used without `cert_path`.
    pub cert_dir: PathBuf,
    /// A real certificate chain (PEM) for browsers, instead of the development certificate.
    pub cert_path: Option<PathBuf>,
    /// The private key of `cert_path`.
    pub key_path: Option<PathBuf>,
    /// Browser sessions bridged at once (WebTransport and WebSocket together); further ones are
    /// refused.
    pub connections_max: usize,
    /// Origins besides the page's own allowed to open WebSocket sessions.
    pub allowed_origins: Vec<String>,
    /// QUIC idle timeout on both sides.
    pub idle_timeout: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            upstream: "127.0.0.1:4433".into(),
            upstream_trust: Trust::default(),
            listen: LISTEN_DEFAULT.parse().expect("a valid default address"),
            http_listen: HTTP_LISTEN_DEFAULT
                .parse()
                .expect("a valid default address"),
            cert_dir: PathBuf::from(crate::tls::DEFAULT_CERT_DIR),
            cert_path: None,
            key_path: None,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            allowed_origins: Vec::new(),
            idle_timeout: Duration::from_millis(quic::IDLE_TIMEOUT_MS_DEFAULT),
        }
    }
}

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// `upstream` is not `HOST:PORT` or does not resolve.
    #[error("upstream {0}: {1}")]
    Upstream(String, String),
    /// `connections_max` is 0.
    #[error("connections_max must be at least 1")]
    NoConnections,
    /// Certificates could not be loaded or generated, or the trust is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A socket could not be set up.
    #[error(transparent)]
    Transport(#[from] quic::TransportError),
    /// The HTTP port could not be bound.
    #[error("binding the HTTP server to {0}: {1}")]
    Http(SocketAddr, #[source] std::io::Error),
}

/// The bridge. See the module documentation.
#[derive(Debug)]
pub struct Bridge;

/// A running bridge.
#[derive(Debug)]
pub struct BridgeHandle {
    endpoint: Endpoint,
    upstream: Arc<Upstream>,
    local_addr: SocketAddr,
    http_addr: SocketAddr,
    browser_access: Arc<BrowserAccess>,
    shutdown: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
    http_task: JoinHandle<std::io::Result<()>>,
    rotation: JoinHandle<()>,
}

/// The relay a bridge forwards to, and what every bridged session shares.
#[derive(Debug)]
pub(crate) struct Upstream {
    endpoint: Endpoint,
    addr: SocketAddr,
    server_name: String,
    client_config: quinn::ClientConfig,
    /// One permit per bridged session, [`BridgeConfig::connections_max`] in all.
    permits: Arc<Semaphore>,
    /// Turns `true` when the bridge shuts down.
    shutdown: watch::Receiver<bool>,
}

impl Upstream {
    /// A session's permit, if the bridge has room for one more.
    fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A new native connection to the relay, within [`HANDSHAKE_TIMEOUT`].
    async fn connect(&self) -> Result<Connection, String> {
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), self.addr, &self.server_name)
            .map_err(|e| format!("cannot reach the relay: {e}"))?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("cannot reach the relay: {e}")),
            Err(_) => Err("cannot reach the relay: handshake timed out".into()),
        }
    }
}

/// Splits `HOST:PORT` into the TLS server name (`HOST`, unbracketed) and resolves it.
async fn resolve(upstream: &str) -> Result<(String, SocketAddr), BridgeError> {
    let err = |why: &str| BridgeError::Upstream(upstream.to_string(), why.to_string());
    let (host, _) = upstream
        .rsplit_once(':')
        .ok_or_else(|| err("expected HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = tokio::net::lookup_host(upstream)
        .await
        .map_err(|e| err(&e.to_string()))?
        .next()
        .ok_or_else(|| err("resolves to no address"))?;
    Ok((host.to_string(), addr))
}

impl Bridge {
    /// Starts a bridge: resolves the relay, binds the WebTransport endpoint and the HTTP
    /// server, and serves until [`BridgeHandle::shutdown`]. Must be called inside a tokio
    /// runtime (with the `time` and `net` drivers enabled). The relay is not contacted until a
    /// browser comes.
    pub async fn start(config: BridgeConfig) -> Result<BridgeHandle, BridgeError> {
        if config.connections_max == 0 {
            return Err(BridgeError::NoConnections);
        }
        let (server_name, addr) = resolve(&config.upstream).await?;
        let mut client_config = quic::client_config(&config.upstream_trust, config.idle_timeout)?;
        let mut transport = quic::transport_config(config.idle_timeout);
        // The relay sizes its datagrams for the path to the bridge; at QUIC's minimum size they
        // also fit the browser's path (every path carries 1200-byte packets).
        transport.mtu_discovery_config(None);
        client_config.transport_config(Arc::new(transport));
        let upstream_endpoint = quic::client_endpoint(addr)?;

        let cert_and_key = match (&config.cert_path, &config.key_path) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let browser_tls = BrowserTls::load(&config.cert_dir, cert_and_key)?;
        let (endpoint, _) = quic::relay_endpoint(
            config.listen,
            browser_tls.resolver.clone(),
            config.idle_timeout,
        )?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| quic::TransportError::Socket {
                addr: config.listen,
                source,
            })?;
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|e| BridgeError::Http(config.http_listen, e))?;
        let http_addr = listener
            .local_addr()
            .map_err(|e| BridgeError::Http(config.http_listen, e))?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let upstream = Arc::new(Upstream {
            endpoint: upstream_endpoint,
            addr,
            server_name,
            client_config,
            permits: Arc::new(Semaphore::new(config.connections_max)),
            shutdown: shutdown_rx.clone(),
        });
        let browser_access = browser_tls.access(
            Backend::Upstream(upstream.clone()),
            config.allowed_origins.clone(),
            local_addr.port(),
        );
        let rotation = tokio::spawn(browser_access.clone().rotate_every());
        let http_task = tokio::spawn({
            let mut stop = shutdown_rx.clone();
            crate::http::serve_browsers(
                listener,
                browser_access.clone(),
                config.connections_max + crate::http::HTTP_CONNECTIONS_MAX,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
        });
        let accept_task =
            tokio::spawn(accept_loop(endpoint.clone(), upstream.clone(), shutdown_rx));
        tracing::info!(%local_addr, %http_addr, upstream = %addr, "bridge listening");
        Ok(BridgeHandle {
            endpoint,
            upstream,
            local_addr,
            http_addr,
            browser_access,
            shutdown: shutdown_tx,
            accept_task,
            http_task,
            rotation,
        })
    }
}

impl BridgeHandle {
    /// The UDP address of the WebTransport endpoint (with the real port when configured with
    /// port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the HTTP server (the page, `/connect.json`, `/ws`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The SHA-256 of the certificate browsers pin now (what `/connect.json` says); `None` with
    /// a real certificate.
    pub fn browser_cert_fingerprint(&self) -> Option<Fingerprint> {
        self.browser_access
            .connect_info()
            .webtransport
            .cert_sha256
            .and_then(|h| h.parse().ok())
    }

    /// Stops accepting, closes every bridged session on both sides (`ServerShutdown` towards
    /// the browsers), stops the HTTP server and waits for the endpoints to go idle (bounded by
    /// [`SHUTDOWN_TIMEOUT`] each).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.rotation.abort();
        self.endpoint.set_server_config(None);
        let _ = self.accept_task.await;
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.endpoint.wait_idle()).await;
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.upstream.endpoint.wait_idle()).await;
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.http_task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server failed"),
            Ok(_) => {}
            Err(_) => tracing::warn!("the HTTP server did not stop in time"),
        }
        tracing::info!("bridge stopped");
    }
}

/// Close text of a session the bridge ends because it shuts down.
const SHUTDOWN_TEXT: &str = "the bridge is shutting down";

/// Accepts WebTransport sessions while the bridge has room, each on a task of its own.
async fn accept_loop(
    endpoint: Endpoint,
    upstream: Arc<Upstream>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let Some(permit) = upstream.permit() else {
            tracing::warn!(peer = %incoming.remote_address(), "bridge connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(conn) = accept_handshake(incoming).await else {
                return;
            };
            if !is_webtransport(&conn) {
                conn.close(
                    CLOSE_CODE_NOT_A_BROWSER.into(),
                    b"a neonet bridge serves browsers only; connect to the relay itself",
                );
                return;
            }
            if let Some(session) = webtransport_session(conn).await {
                serve_webtransport(session, upstream).await;
            }
        });
    }
}

/// How a bridged session ended.
enum End {
    /// The relay's side ended (it closed, or the transport gave up).
    Upstream(Ended),
    /// The browser's side ended.
    Browser(Ended),
    /// The bridge closes it: a code and reason for both sides.
    Bridge(u32, String),
}

/// The application code and reason to close the other side with, for an end of this side.
fn carried(ended: Ended) -> (u32, String) {
    match ended.code {
        Some(code) => (code, ended.reason),
        None => (CLOSE_CODE_UPSTREAM, ended.reason),
    }
}

/// The close of a bridge shutdown: `ServerShutdown` with [`SHUTDOWN_TEXT`].
fn shutdown_close() -> End {
    End::Bridge(
        quic::close_code(CloseReason::ServerShutdown).into_inner() as u32,
        quic::close_text(CloseReason::ServerShutdown, SHUTDOWN_TEXT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::websocket::ws_close_code;

    #[test]
    fn a_close_is_carried_with_its_code_and_a_lost_transport_as_the_upstream_code() {
        let closed = Ended {
            code: Some(7),
            reason: "server shutting down".into(),
        };
        assert_eq!(carried(closed), (7, "server shutting down".to_string()));
        let lost = Ended {
            code: None,
            reason: "timed out".into(),
        };
        assert_eq!(
            carried(lost),
            (CLOSE_CODE_UPSTREAM, "timed out".to_string())
        );
        assert_eq!(
            ws_close_code_of(quic::close_code(CloseReason::Moderation).into_inner() as u32),
            ws_close_code(CloseReason::Moderation)
        );
    }

    #[tokio::test]
    async fn an_upstream_given_as_host_and_port_resolves_and_names_the_host() {
        let (name, addr) = resolve("127.0.0.1:4433").await.unwrap();
        assert_eq!((name.as_str(), addr.port()), ("127.0.0.1", 4433));
        let (name, _) = resolve("[::1]:4433").await.unwrap();
        assert_eq!(name, "::1");
        assert!(resolve("no-port").await.is_err());
    }
}
