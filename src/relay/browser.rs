//! What the relay's HTTP server needs to let browsers in: where the WebTransport endpoint is and
//! which certificate to pin (`/connect.json`), and where WebSocket sessions go ([`Backend`]):
//! into the relay's core (the same [`Inbound`] queue, connection ids and datagram inbox as
//! QUIC), or, in a bridge ([`crate::bridge`]), over native QUIC to an upstream relay. The
//! certificates a browser-facing endpoint presents are set up here ([`BrowserTls`]) and the
//! development browser certificate is rotated here ([`BrowserAccess::rotate_every`]).

use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::mpsc;

use super::accept::{SharedInbox, WEBTRANSPORT_PATH};
use super::websocket::WS_PROTOCOL;
use super::{ConnIds, Inbound};
use crate::tls::{
    self, AlpnCertResolver, BrowserCert, Fingerprint, ServerIdentity, TlsError,
    BROWSER_CERT_ROTATION,
};

/// The way in for browsers. Made by the relay ([`super::RelayHandle::browser_access`]) or a
/// bridge, used by the HTTP server ([`crate::http::serve_with_browsers`],
/// [`crate::http::serve_browsers`]).
#[derive(Debug)]
pub struct BrowserAccess {
    /// Where WebSocket sessions go.
    pub(crate) backend: Backend,
    /// Origins besides the page's own allowed to open WebSocket sessions
    /// (`https://game.example`).
    pub(crate) allowed_origins: Vec<String>,
    /// The UDP port of the QUIC endpoint, which also serves WebTransport.
    pub(crate) quic_port: u16,
    /// The development certificate browsers pin, when the relay has no real one.
    pub(crate) pin: Option<RwLock<Fingerprint>>,
    pub(crate) resolver: Arc<AlpnCertResolver>,
}

/// Where a browser's WebSocket session goes.
#[derive(Debug)]
pub(crate) enum Backend {
    /// Into this relay's core.
    Core(CoreAccess),
    /// Over native QUIC to the upstream relay of a bridge.
    Upstream(Arc<crate::bridge::Upstream>),
}

/// The way into a relay's core for another transport.
#[derive(Clone, Debug)]
pub(crate) struct CoreAccess {
    /// The core task's input queue.
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Connection ids shared with every transport.
    pub(crate) conn_ids: Arc<ConnIds>,
    /// The core's datagram inbox.
    pub(crate) inbox: Arc<SharedInbox>,
}

/// What a browser-facing QUIC endpoint presents: its main identity (for native clients), the
/// short-lived certificate browsers pin when there is no real certificate, and the resolver
/// that picks between them by ALPN.
#[derive(Debug)]
pub(crate) struct BrowserTls {
    /// The main identity.
    pub(crate) identity: ServerIdentity,
    /// The browser certificate; `None` with a real certificate (which serves browsers as it is).
    pub(crate) browser_cert: Option<BrowserCert>,
    /// Picks the certificate by ALPN.
    pub(crate) resolver: Arc<AlpnCertResolver>,
}

impl BrowserTls {
    /// The configured certificate (`cert_and_key`), or the development certificate in
    /// `cert_dir` (generated on first use) together with a fresh browser certificate.
    pub(crate) fn load(
        cert_dir: &Path,
        cert_and_key: Option<(&Path, &Path)>,
    ) -> Result<BrowserTls, TlsError> {
        let (identity, real_cert) = match cert_and_key {
            Some((c, k)) => {
                let id = tls::load_cert_and_key(c, k)?;
                tracing::info!(cert = %c.display(), "using the configured certificate");
                (id, true)
            }
            None => {
                let id = tls::load_or_generate_dev_cert(cert_dir)?;
                if id.generated {
                    tracing::info!(dir = %cert_dir.display(), "generated a self-signed development certificate");
                } else {
                    tracing::info!(dir = %cert_dir.display(), "reusing the development certificate");
                }
                (id, false)
            }
        };
        // Browsers pin only short-lived P-256 certificates: a development endpoint makes one for
        // them (a real certificate serves browsers as it is).
        let browser_cert = if real_cert {
            None
        } else {
            Some(BrowserCert::generate()?)
        };
        let resolver = Arc::new(AlpnCertResolver::new(&identity, browser_cert.as_ref())?);
        Ok(BrowserTls {
            identity,
            browser_cert,
            resolver,
        })
    }

    /// The way in for browsers whose WebTransport endpoint is on `quic_port` and whose
    /// WebSocket sessions go to `backend`.
    pub(crate) fn access(
        &self,
        backend: Backend,
        allowed_origins: Vec<String>,
        quic_port: u16,
    ) -> Arc<BrowserAccess> {
        Arc::new(BrowserAccess {
            backend,
            allowed_origins,
            quic_port,
            pin: self
                .browser_cert
                .as_ref()
                .map(|c| RwLock::new(c.fingerprint)),
            resolver: self.resolver.clone(),
        })
    }
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
