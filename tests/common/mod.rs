//! Helpers for real-socket tests: a relay on `127.0.0.1:0` in a temporary folder, run on its own
//! tokio runtime so tests can use the blocking client from plain `#[test]` functions.
#![allow(dead_code)]

pub mod browser;

use std::net::SocketAddr;
use std::time::Duration;

use neonet::client::{Client, ClientEvent, ClientOptions};
use neonet::config::RelayConfig;
use neonet::proto::persist::World;
use neonet::proto::types::Rank;
use neonet::relay::{Relay, RelayHandle, RelayHooks};
use neonet::tls::{Fingerprint, Trust};

/// Bound on every wait in these tests. Generous: it only matters when something is broken.
pub const WAIT: Duration = Duration::from_secs(10);

/// A multi-threaded tokio runtime of two workers (the machines running the suite are small).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The native QUIC driver the tests' relays use: `NEONET_TEST_QUIC_DRIVER=loop` runs a test
/// file against the single-loop driver (`.ci/run` runs the relay's real-socket files under
/// both); quinn's task driver otherwise.
pub fn quic_driver() -> neonet::config::QuicDriver {
    match std::env::var("NEONET_TEST_QUIC_DRIVER").as_deref() {
        Ok("loop") => neonet::config::QuicDriver::Loop,
        _ => neonet::config::QuicDriver::Tasks,
    }
}

/// A relay running in a temporary folder.
pub struct TestRelay {
    rt: tokio::runtime::Runtime,
    handle: Option<RelayHandle>,
    /// Where certificates and data live; removed on drop.
    pub dir: tempfile::TempDir,
    /// The relay's address.
    pub addr: SocketAddr,
    /// Its certificate's fingerprint.
    pub fingerprint: Fingerprint,
}

impl TestRelay {
    /// A relay hosting a fresh world where everyone is a builder (so tests can edit blueprints).
    pub fn start() -> TestRelay {
        let mut world = World::default();
        world.settings.default_rank = Rank::Builder;
        Self::start_with(RelayHooks {
            world,
            ..RelayHooks::default()
        })
    }

    /// A relay with explicit hooks.
    pub fn start_with(hooks: RelayHooks) -> TestRelay {
        Self::start_config(|_| {}, hooks)
    }

    /// A relay with explicit hooks and configuration changes.
    pub fn start_config(configure: impl FnOnce(&mut RelayConfig), hooks: RelayHooks) -> TestRelay {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = runtime();
        let mut config = RelayConfig::for_tests(dir.path());
        config.quic_driver = quic_driver();
        configure(&mut config);
        let handle = rt
            .block_on(Relay::start_with(config, hooks))
            .expect("relay starts");
        TestRelay {
            addr: handle.local_addr(),
            fingerprint: handle.cert_fingerprint(),
            handle: Some(handle),
            rt,
            dir,
        }
    }

    /// Client options trusting this relay by fingerprint.
    pub fn options(&self, name: &str) -> ClientOptions {
        ClientOptions {
            name: name.into(),
            trust: Trust::Sha256(self.fingerprint),
            connect_timeout: WAIT,
            ..ClientOptions::default()
        }
    }

    /// A joined client.
    pub fn client(&self, name: &str) -> Client {
        Client::connect(self.addr, self.options(name)).expect("client connects and joins")
    }

    /// The running relay.
    pub fn handle(&self) -> &RelayHandle {
        self.handle.as_ref().expect("running")
    }

    /// The runtime the relay runs on (for raw quinn clients).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// Starts the relay's browser-facing HTTP server (the page, the client library,
    /// `/connect.json`, the WebSocket fallback) on a free loopback port; it runs until the
    /// relay's runtime ends.
    pub fn browser_http(&self) -> SocketAddr {
        let metrics = std::sync::Arc::new(neonet::metrics::Metrics::new(Default::default()));
        let access = self.handle().browser_access();
        self.rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(neonet::http::serve_with_browsers(
                listener,
                metrics,
                access,
                std::future::pending(),
            ));
            addr
        })
    }

    /// Shuts the relay down cleanly.
    pub fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown()).expect("clean shutdown");
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h.shutdown());
        }
    }
}

/// Waits for an event matching `pred`, failing the test with `what` if none comes.
pub fn expect(client: &Client, what: &str, pred: impl FnMut(&ClientEvent) -> bool) -> ClientEvent {
    match client.wait_for(WAIT, pred) {
        Ok(ev) => ev,
        Err(e) => panic!("waiting for {what}: {e}"),
    }
}

/// Waits until every predicate has matched some event, in any order (messages on different
/// channels travel on different streams and may arrive in either order).
pub fn expect_all(client: &Client, what: &str, preds: &mut [&mut dyn FnMut(&ClientEvent) -> bool]) {
    let mut done = vec![false; preds.len()];
    let r = client.wait_for(WAIT, |e| {
        for (i, p) in preds.iter_mut().enumerate() {
            if !done[i] && p(e) {
                done[i] = true;
                break;
            }
        }
        done.iter().all(|d| *d)
    });
    if let Err(e) = r {
        panic!("waiting for {what}: {e}");
    }
}

/// Chromium, `node` and `tests/browser/node_modules` for the headless-browser tests, as
/// `(chromium, tests/browser/live_view.mjs)`, or why they are missing. Under `CI=true` a
/// missing prerequisite panics (`.ci/install-browser` must have run); elsewhere the caller
/// skips with the message.
pub fn browser_prerequisites() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let node_ok = || {
        Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing = if !chromium.exists() {
        Some(format!("{} is missing", chromium.display()))
    } else if !browser_dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        Some(format!(
            "{}/node_modules is missing (npm ci)",
            browser_dir.display()
        ))
    } else if !node_ok() {
        Some("node is not on PATH".into())
    } else {
        None
    };
    match missing {
        None => Some((chromium, browser_dir.join("live_view.mjs"))),
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("browser test cannot run under CI: {why}; run .ci/install-browser")
        }
        Some(why) => {
            eprintln!("SKIPPED browser test: {why}; run .ci/install-browser");
            None
        }
    }
}
