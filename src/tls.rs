//! Certificates and TLS configuration for QUIC (rustls with the ring provider only).
//!
//! ## Server identity
//! On first start the relay generates a self-signed development certificate with rcgen into its
//! certificate folder (`./certs/` by default): [`CERT_DER_FILE`], [`KEY_DER_FILE`] (mode 0600)
//! and, for other tools, [`CERT_PEM_FILE`]. Later starts reuse it, so its SHA-256 [`Fingerprint`], printed at
//! start, stays the same. A real certificate chain and key (PEM) can be configured instead with
//! [`load_cert_and_key`].
//!
//! ## Client trust
//! [`Trust`] says how a client checks the relay:
//! - [`Trust::DevCertDir`] (the default, `./certs/`): pin the development certificate found there,
//!   so a relay and a client started in the same folder need no flags;
//! - [`Trust::CertFile`]: pin the certificate(s) in a file (PEM or DER);
//! - [`Trust::Sha256`]: pin the end-entity certificate's SHA-256 fingerprint;
//! - [`Trust::Roots`]: ordinary WebPKI verification against CA roots, with the server name;
//! - [`Trust::DangerAcceptAnyCert`]: accept any certificate (no authentication of the server).
//!
//! Pinning compares the end-entity certificate byte for byte (by hash) and ignores names and
//! validity dates: the pin *is* the identity. Handshake signatures are still verified with the
//! ring provider's algorithms in every mode, so the peer must hold the certificate's key.
//!
//! Every configuration is TLS 1.3 only (QUIC requires it). Clients offer exactly the ALPN
//! [`neonet_proto::wire::msg::ALPN`]; the relay also accepts [`WEBTRANSPORT_ALPN`] (HTTP/3, for
//! browsers' WebTransport) on the same port. A peer offering neither fails the handshake.
//!
//! ## The browser certificate
//! A browser pins a self-signed certificate (WebTransport's `serverCertificateHashes`) only if
//! it is ECDSA P-256 and valid for at most 14 days. So beside the long-lived development
//! certificate natives pin, the relay makes a [`BrowserCert`] in memory: P-256, valid
//! [`BROWSER_CERT_VALIDITY`], replaced every [`BROWSER_CERT_ROTATION`] by a fresh one whose hash
//! the relay publishes (`/connect.json`). The handshake picks the certificate by ALPN
//! ([`AlpnCertResolver`]): HTTP/3 gets the browser certificate, neonet the development one.
//! With a real certificate (from a CA) both use it and no pin is needed.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use neonet_proto::wire::msg::ALPN;

/// The development certificate, DER encoded, in the certificate folder (what clients pin).
pub const CERT_DER_FILE: &str = "dev-cert.der";
/// The development certificate, PEM encoded (for other tools), in the certificate folder.
pub const CERT_PEM_FILE: &str = "dev-cert.pem";
/// The development certificate's private key, PKCS#8 DER, mode 0600, in the certificate folder.
pub const KEY_DER_FILE: &str = "dev-key.der";
/// Names the development certificate is valid for. Clients default to the first as server name.
pub const DEV_CERT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// The server name clients send by default (matches the development certificate).
pub const DEFAULT_SERVER_NAME: &str = "localhost";
/// The default certificate folder, relative to the working directory.
pub const DEFAULT_CERT_DIR: &str = "certs";

/// Why certificates or TLS configuration could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a certificate or key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A certificate or key file could not be parsed.
    #[error("{path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// rcgen could not generate the development certificate.
    #[error("generating the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (a key not matching the certificate, say).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A fingerprint string is not 32 bytes of hex.
    #[error("a SHA-256 fingerprint is 64 hex digits (colons allowed): {0:?}")]
    BadFingerprint(String),
    /// The default trust found no development certificate to pin.
    #[error(
        "no development certificate at {0}: run where the relay runs (it creates certs/), or pin \
         the relay's certificate with --cert FILE or --cert-sha256 HEX"
    )]
    NoDevCert(PathBuf),
    /// The configuration cannot be used for QUIC (no TLS 1.3 cipher suite, say).
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The crypto provider every neonet TLS configuration uses: ring.
///
/// rustls 0.23.48 deprecates `rustls::crypto::ring::default_provider` ("no support for
/// post-quantum algorithms") without a ring replacement: the only provider it does not deprecate
/// is aws-lc-rs, a C library built from source that neonet keeps out of its tree. So the call is
/// allowed here, the one place a provider is made, and a dependent resolving a newer rustls sees
/// no warning; moving to post-quantum key exchange means moving to aws-lc-rs.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate's SHA-256 fingerprint (of its DER encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    /// 64 lowercase hex digits, no separators (easy to copy into `--cert-sha256`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;
    /// Accepts 64 hex digits in either case, optionally separated by `:` or whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TlsError::BadFingerprint(s.to_string());
        let digits: Vec<u8> = s
            .bytes()
            .filter(|b| *b != b':' && !b.is_ascii_whitespace())
            .collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// What a server presents: its certificate chain (end entity first) and private key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// The chain, end-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the end-entity certificate.
    pub fingerprint: Fingerprint,
    /// Whether the development certificate was generated by this call (first start).
    pub generated: bool,
}

/// Loads the development certificate from `dir`, generating it (and `dir`) if absent.
///
/// If only some of the files exist, all are regenerated: a half-written identity is not one.
pub fn load_or_generate_dev_cert(dir: &Path) -> Result<ServerIdentity, TlsError> {
    let cert_path = dir.join(CERT_DER_FILE);
    let key_path = dir.join(KEY_DER_FILE);
    if cert_path.is_file() && key_path.is_file() {
        let cert = fs::read(&cert_path).map_err(io_err(&cert_path))?;
        let key = fs::read(&key_path).map_err(io_err(&key_path))?;
        let key = PrivateKeyDer::Pkcs8(key.into());
        let fingerprint = Fingerprint::of(&cert);
        return Ok(ServerIdentity {
            chain: vec![CertificateDer::from(cert)],
            key,
            fingerprint,
            generated: false,
        });
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let names: Vec<String> = DEV_CERT_NAMES.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names)?;
    let cert_der = ck.cert.der().to_vec();
    // Key first, so a crash between the writes leaves no certificate without its key.
    write_private(&key_path, &ck.key_pair.serialize_der())?;
    write_file(&dir.join(CERT_PEM_FILE), ck.cert.pem().as_bytes())?;
    write_file(&cert_path, &cert_der)?;
    let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    Ok(ServerIdentity {
        fingerprint: Fingerprint::of(&cert_der),
        chain: vec![CertificateDer::from(cert_der)],
        key,
        generated: true,
    })
}

/// WebTransport's ALPN: HTTP/3.
pub const WEBTRANSPORT_ALPN: &[u8] = b"h3";

/// How long a browser certificate is valid: 13 days, under the 14 days browsers accept for a
/// pinned certificate (`serverCertificateHashes`), with a day's margin for clock skew.
pub const BROWSER_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(13 * 86_400);

/// How often the relay makes a new browser certificate: every 6 days, so the one a page pinned
/// (fetched at most minutes before it connects) always has a week of validity left.
pub const BROWSER_CERT_ROTATION: std::time::Duration = std::time::Duration::from_secs(6 * 86_400);

/// A short-lived certificate for browsers to pin (see the module documentation).
#[derive(Debug)]
pub struct BrowserCert {
    /// The certificate and its signing key, ready for rustls.
    pub certified: Arc<rustls::sign::CertifiedKey>,
    /// SHA-256 of the certificate: what a page passes as `serverCertificateHashes`.
    pub fingerprint: Fingerprint,
    /// When it stops being valid, Unix milliseconds.
    pub not_after_unix_ms: u64,
}

impl BrowserCert {
    /// A fresh ECDSA P-256 certificate for the development names, valid from an hour ago (clock
    /// skew) for [`BROWSER_CERT_VALIDITY`] in all.
    pub fn generate() -> Result<BrowserCert, TlsError> {
        let names: Vec<String> = DEV_CERT_NAMES.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after =
            params.not_before + time::Duration::seconds(BROWSER_CERT_VALIDITY.as_secs() as i64);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let not_after = params.not_after;
        let cert = params.self_signed(&key)?;
        let der = CertificateDer::from(cert.der().to_vec());
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(TlsError::Rustls)?;
        let not_after_unix_ms = (not_after.unix_timestamp() as u64) * 1000;
        Ok(BrowserCert {
            fingerprint: Fingerprint::of(&der),
            certified: Arc::new(rustls::sign::CertifiedKey::new(vec![der], signing)),
            not_after_unix_ms,
        })
    }
}

/// Picks the server certificate by the ALPN the client offers: the browser certificate for
/// HTTP/3 (WebTransport), the main identity for everything else. The browser certificate can be
/// replaced while the relay runs ([`AlpnCertResolver::set_browser`]).
#[derive(Debug)]
pub struct AlpnCertResolver {
    main: Arc<rustls::sign::CertifiedKey>,
    browser: std::sync::RwLock<Option<Arc<rustls::sign::CertifiedKey>>>,
}

impl AlpnCertResolver {
    /// A resolver presenting `identity`, and `browser` (if any) to HTTP/3 clients.
    pub fn new(
        identity: &ServerIdentity,
        browser: Option<&BrowserCert>,
    ) -> Result<AlpnCertResolver, TlsError> {
        let signing = provider()
            .key_provider
            .load_private_key(identity.key.clone_key())
            .map_err(TlsError::Rustls)?;
        Ok(AlpnCertResolver {
            main: Arc::new(rustls::sign::CertifiedKey::new(
                identity.chain.clone(),
                signing,
            )),
            browser: std::sync::RwLock::new(browser.map(|b| b.certified.clone())),
        })
    }

    /// Presents `browser` to HTTP/3 clients from now on (handshakes under way keep theirs).
    pub fn set_browser(&self, browser: &BrowserCert) {
        *self.browser.write().unwrap_or_else(|e| e.into_inner()) = Some(browser.certified.clone());
    }
}

impl rustls::server::ResolvesServerCert for AlpnCertResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let wants_h3 = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == WEBTRANSPORT_ALPN));
        if wants_h3 {
            if let Some(b) = self
                .browser
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return Some(b);
            }
        }
        Some(self.main.clone())
    }
}

/// Loads a configured certificate chain (PEM, or a single DER certificate) and key (PEM).
pub fn load_cert_and_key(cert_path: &Path, key_path: &Path) -> Result<ServerIdentity, TlsError> {
    let chain = read_certs(cert_path)?;
    let key = read_key(key_path)?;
    let fingerprint = Fingerprint::of(&chain[0]);
    Ok(ServerIdentity {
        chain,
        key,
        fingerprint,
        generated: false,
    })
}

/// Reads certificates from a PEM file (one or more) or a DER file (one). Never empty.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let parse = |detail: String| TlsError::Parse {
        path: path.to_path_buf(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = if bytes.starts_with(b"-----") {
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| parse(e.to_string()))?
    } else {
        // DER: an X.509 certificate is an ASN.1 SEQUENCE.
        if bytes.first() != Some(&0x30) {
            return Err(parse("neither PEM nor a DER certificate".into()));
        }
        vec![CertificateDer::from(bytes)]
    };
    if certs.is_empty() {
        return Err(parse("no certificate in the file".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Parse {
        path: path.to_path_buf(),
        detail: format!("reading the private key: {e}"),
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    fs::write(path, bytes).map_err(io_err(path))
}

/// Writes a secret file readable by its owner only (mode 0600 on Unix), replacing any old one.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// The rustls server configuration for QUIC: TLS 1.3, ring, ALPN `neonet/1`, no client auth.
pub fn server_crypto(identity: &ServerIdentity) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The relay's rustls configuration: [`server_crypto`] that also accepts WebTransport
/// ([`WEBTRANSPORT_ALPN`]) on the same port, with certificates picked by `resolver`.
pub fn relay_server_crypto(
    resolver: Arc<AlpnCertResolver>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ALPN.to_vec(), WEBTRANSPORT_ALPN.to_vec()];
    // HTTP/3 sends 0-RTT-free requests; nothing here needs early data.
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// How a client authenticates the relay. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Pin the development certificate ([`CERT_DER_FILE`]) in this folder. The default, with
    /// [`DEFAULT_CERT_DIR`].
    DevCertDir(PathBuf),
    /// Pin the certificate(s) in this file (PEM or DER).
    CertFile(PathBuf),
    /// Pin this SHA-256 fingerprint of the end-entity certificate.
    Sha256(Fingerprint),
    /// Verify the chain against these CA roots and the server name (a real certificate).
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate: the server is not authenticated (handshake signatures are still
    /// checked). For experiments only.
    DangerAcceptAnyCert,
}

impl Trust {
    /// [`Trust::DangerAcceptAnyCert`]: accept any certificate. The server is not authenticated;
    /// anyone on the path can impersonate it. For experiments only.
    pub fn danger_accept_any_cert() -> Trust {
        Trust::DangerAcceptAnyCert
    }
}

impl Default for Trust {
    fn default() -> Self {
        Trust::DevCertDir(PathBuf::from(DEFAULT_CERT_DIR))
    }
}

/// The rustls client configuration for QUIC: TLS 1.3, ring, ALPN `neonet/1`, `trust`.
pub fn client_crypto(trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let pinned = |pins: Vec<Fingerprint>| PinnedVerifier {
        pins: Some(pins),
        provider: provider.clone(),
    };
    let mut cfg = match trust {
        Trust::DevCertDir(dir) => {
            let path = dir.join(CERT_DER_FILE);
            if !path.is_file() {
                return Err(TlsError::NoDevCert(path));
            }
            let certs = read_certs(&path)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pinned(vec![Fingerprint::of(
                    &certs[0],
                )])))
                .with_no_client_auth()
        }
        Trust::CertFile(path) => {
            let pins = read_certs(path)?
                .iter()
                .map(|c| Fingerprint::of(c))
                .collect();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pinned(pins)))
                .with_no_client_auth()
        }
        Trust::Sha256(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pinned(vec![*fp])))
            .with_no_client_auth(),
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store.add(r.clone())?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::DangerAcceptAnyCert => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pins: None,
                provider: provider.clone(),
            }))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// Accepts an end-entity certificate whose SHA-256 is pinned (any, if `pins` is `None`), and
/// verifies handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct PinnedVerifier {
    pins: Option<Vec<Fingerprint>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pins {
            None => Ok(ServerCertVerified::assertion()),
            Some(pins) => {
                let fp = Fingerprint::of(end_entity);
                // Fingerprints are public; comparing them in variable time leaks nothing.
                if pins.contains(&fp) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure,
                    ))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_with_and_without_colons() {
        let fp = Fingerprint::of(b"abc");
        let s = fp.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Fingerprint>().unwrap(), fp);
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>().unwrap(), fp);
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn dev_cert_is_generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate_dev_cert(dir.path()).unwrap();
        assert!(a.generated);
        let b = load_or_generate_dev_cert(dir.path()).unwrap();
        assert!(!b.generated);
        assert_eq!(a.fingerprint, b.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_DER_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        server_crypto(&b).unwrap();
        client_crypto(&Trust::DevCertDir(dir.path().to_path_buf())).unwrap();
        client_crypto(&Trust::CertFile(dir.path().join(CERT_PEM_FILE))).unwrap();
    }
}
