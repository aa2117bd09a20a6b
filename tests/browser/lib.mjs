// What the headless-Chromium scripts share: the flags this workplace's Chromium needs and a
// bounded wait. Imported by live_view.mjs, play.mjs, reconnect.mjs and measure.mjs.

/**
 * The flags this workplace's Chromium needs (closed network, no GPU, running as root). No
 * --disable-quic: that would block WebTransport (certificate pinning with
 * serverCertificateHashes needs no flag). The live view, which needs no QUIC, adds it.
 */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** How often a wait looks again, ms. */
const POLL_INTERVAL_MS = 100;

/**
 * Calls `check()` (which answers `{ ok, value }`) until it is ok, then returns its value;
 * throws, naming `what` and the last value, once `timeoutMs` have passed.
 */
export async function waitFor(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last.ok) return last.value;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(last.value)}`);
    }
    await new Promise((r) => setTimeout(r, POLL_INTERVAL_MS));
  }
}
