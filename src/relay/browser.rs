//! What the relay's HTTP server needs to let browsers in: where the WebTransport endpoint is and
//! which certificate to pin (`/connect.json`), and the way into the core for WebSocket sessions
//! (the same [`Inbound`] queue, connection ids and datagram inbox as QUIC). The development
//! browser certificate is rotated here ([`BrowserAccess::rotate_every`]).

use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::mpsc;

use super::accept::{SharedInbox, WEBTRANSPORT_PATH};
use super::websocket::WS_PROTOCOL;
use super::{ConnIds, Inbound};
use crate::tls::{AlpnCertResolver, BrowserCert, Fingerprint, BROWSER_CERT_ROTATION};

/// The way in for browsers. Made by the relay ([`super::RelayHandle::browser_access`]), used by
/// the HTTP server ([`crate::http::serve`]).
#[derive(Debug)]
pub struct BrowserAccess {
    /// The core task's input queue.
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Connection ids shared with every transport.
    pub(crate) conn_ids: Arc<ConnIds>,
    /// The core's datagram inbox.
    pub(crate) inbox: Arc<SharedInbox>,
    /// Origins besides the page's own allowed to open WebSocket sessions
    /// (`https://game.example`).
    pub(crate) allowed_origins: Vec<String>,
    /// The UDP port of the QUIC endpoint, which also serves WebTransport.
    pub(crate) quic_port: u16,
    /// The development certificate browsers pin, when the relay has no real one.
    pub(crate) pin: Option<RwLock<Fingerprint>>,
    pub(crate) resolver: Arc<AlpnCertResolver>,
}

/// `GET /connect.json`: how a page reaches this relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectInfo {
    /// The protocol version the relay speaks.
    pub protocol_version: u16,
    /// The WebTransport endpoint (`https://{page host}:{port}{path}`).
    pub webtransport: WebTransportInfo,
    /// The WebSocket fallback on this HTTP port.
    pub websocket: WebSocketInfo,
}

/// Where the WebTransport endpoint is and what to pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebTransportInfo {
    /// UDP port.
    pub port: u16,
    /// Path of the session.
    pub path: &'static str,
    /// SHA-256 of the certificate to pin (`serverCertificateHashes`), hex; `None` with a real
    /// certificate.
    pub cert_sha256: Option<String>,
}

/// Where the WebSocket endpoint is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebSocketInfo {
    /// Path on the HTTP port.
    pub path: &'static str,
    /// The subprotocol to ask for.
    pub protocol: &'static str,
}

impl BrowserAccess {
    /// What `/connect.json` answers now.
    pub fn connect_info(&self) -> ConnectInfo {
        ConnectInfo {
            protocol_version: neonet_proto::wire::msg::PROTOCOL_VERSION,
            webtransport: WebTransportInfo {
                port: self.quic_port,
                path: WEBTRANSPORT_PATH,
                cert_sha256: self
                    .pin
                    .as_ref()
                    .map(|p| p.read().unwrap_or_else(|e| e.into_inner()).to_string()),
            },
            websocket: WebSocketInfo {
                path: "/ws",
                protocol: WS_PROTOCOL,
            },
        }
    }

    /// Replaces the development browser certificate every [`BROWSER_CERT_ROTATION`] until the
    /// relay stops (runs on the I/O runtime; a no-op with a real certificate).
    pub(crate) async fn rotate_every(self: Arc<Self>) {
        let Some(pin) = &self.pin else { return };
        loop {
            tokio::time::sleep(BROWSER_CERT_ROTATION).await;
            match BrowserCert::generate() {
                Ok(cert) => {
                    self.resolver.set_browser(&cert);
                    *pin.write().unwrap_or_else(|e| e.into_inner()) = cert.fingerprint;
                    tracing::info!(sha256 = %cert.fingerprint, "rotated the browser certificate");
                }
                Err(e) => tracing::error!(error = %e, "could not rotate the browser certificate"),
            }
        }
    }
}
