//! `neonet-load proxy`: the impairment proxy as a standalone process.

use std::time::Duration;

use anyhow::Context;
use neonet_proxy::{Proxy, ProxyConfig, ProxyStats};

use crate::cli::{clock_seed, ProxyArgs};

/// How often the running proxy logs its counters: 5 s, frequent enough to watch a test run,
/// rare enough not to flood the log.
const STATS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the proxy until Ctrl-C, logging its counters every [`STATS_LOG_INTERVAL`].
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    let imp = &args.impairment;
    let config = ProxyConfig {
        listen: args.listen,
        upstream: args.upstream,
        loss: imp.loss,
        delay_ms: imp.delay_ms,
        jitter_ms: imp.jitter_ms,
        dup: imp.dup,
        reorder: imp.reorder,
        rate_kbps: imp.rate_kbps,
        queue_ms: imp.queue_ms,
        seed,
    };
    let proxy =
        Proxy::start(config).with_context(|| format!("starting the proxy on {}", args.listen))?;
    tracing::info!(
        listen = %proxy.local_addr(),
        upstream = %args.upstream,
        loss = imp.loss,
        delay_ms = imp.delay_ms,
        jitter_ms = imp.jitter_ms,
        dup = imp.dup,
        reorder = imp.reorder,
        rate_kbps = imp.rate_kbps,
        queue_ms = imp.queue_ms,
        seed,
        "proxy running; Ctrl-C to stop"
    );
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + STATS_LOG_INTERVAL,
        STATS_LOG_INTERVAL,
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            signal = &mut ctrl_c => {
                signal.context("listening for Ctrl-C")?;
                break;
            }
            _ = ticker.tick() => log_stats("proxy counters", &proxy.stats()),
        }
    }
    let stats = proxy.stats();
    proxy.shutdown().await;
    log_stats("proxy stopped", &stats);
    Ok(())
}

fn log_stats(what: &str, s: &ProxyStats) {
    let (up, down) = (&s.to_upstream, &s.to_client);
    tracing::info!(
        flows_active = s.flows_active,
        flows_opened = s.flows_opened,
        flows_rejected = s.flows_rejected,
        flows_expired = s.flows_expired,
        up_in = up.packets_in,
        up_out = up.packets_out,
        up_dropped = up.dropped,
        up_duplicated = up.duplicated,
        up_overflowed = up.overflowed,
        up_queue_dropped = up.queue_dropped,
        up_send_failed = up.send_failed,
        down_in = down.packets_in,
        down_out = down.packets_out,
        down_dropped = down.dropped,
        down_duplicated = down.duplicated,
        down_overflowed = down.overflowed,
        down_queue_dropped = down.queue_dropped,
        down_send_failed = down.send_failed,
        queued_bytes = s.queued_bytes,
        "{what}"
    );
}
