#!/usr/bin/env bash
# Runs neonet's whole test suite on a fresh machine: installs what the browser test needs
# (Debian's Chromium, the Node packages of tests/browser) when missing, then every Rust test:
# unit tests, simulated-network scenarios, real QUIC loopback tests, crash tests and the
# headless-browser tests (the live view, and the demo page over WebTransport and WebSocket), then
# the browser client library's unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .ci/install-browser ]; then
  bash .ci/install-browser
fi
# Two test threads: the machine has two cores and the real-socket tests start relays.
# Benches are compiled by clippy --all-targets in CI and run by hand (see README).
cargo test --workspace -- --test-threads=2
# The relay's real-socket tests again, their relays serving native QUIC with the single-loop
# driver (`quic_driver = "loop"`, quinn-proto from one thread) instead of quinn's tasks: the same
# test binaries, already built (`--workspace`, as above, so nothing is rebuilt); WebTransport then
# on a port of its own.
NEONET_TEST_QUIC_DRIVER=loop cargo test --workspace --test loopback --test packets \
  --test reconnect --test bad_input --test adversarial_identity --test adversarial_limits \
  --test chat_commands --test chat_tokens --test host --test motion --test browser_transports \
  --test browser_play \
  -- --test-threads=2
# The browser client library's own tests (the message and datagram codecs and the movement model
# against the Rust crate's golden vectors): Node's built-in runner, no packages.
node --test web/neonet/test/
# The fuzz targets, briefly (fuzz/: its own workspace; the stable driver, so no nightly or
# libFuzzer is needed here; long runs: see fuzz/Cargo.toml).
cargo run --quiet --manifest-path fuzz/Cargo.toml --features stable --bin fuzz-stable -- all 20000
