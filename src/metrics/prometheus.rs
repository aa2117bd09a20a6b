//! Rendering the registry in the Prometheus text exposition format (`GET /metrics`): the
//! counters copied into the exporter's handles, then the top-K entity family written by hand.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::{lock, names, Metrics, TOP_ENTITIES_K};

impl Metrics {
    // ----- rendering -----

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let c = &self.counts;
        let h = &self.handles;
        h.connections.set(c.connections.load(Relaxed).max(0) as f64);
        h.joins.absolute(c.joins.load(Relaxed));
        h.ticks.absolute(c.ticks.load(Relaxed));
        h.tick_overruns.absolute(c.tick_overruns.load(Relaxed));
        h.bytes_in_dgram.absolute(c.bytes_in_dgram.load(Relaxed));
        h.bytes_in_stream.absolute(c.bytes_in_stream.load(Relaxed));
        h.bytes_out_dgram.absolute(c.bytes_out_dgram.load(Relaxed));
        h.bytes_out_stream
            .absolute(c.bytes_out_stream.load(Relaxed));
        h.datagrams_in.absolute(c.datagrams_in.load(Relaxed));
        h.datagrams_out.absolute(c.datagrams_out.load(Relaxed));
        h.persist_queue.set(c.persist_queue.load(Relaxed) as f64);
        h.rate_limit_hits.absolute(c.rate_limit_hits.load(Relaxed));
        h.entities.set(c.entities.load(Relaxed) as f64);
        h.entity_untracked.absolute(lock(&self.entities).untracked);

        let mut out = self.prometheus.render();
        // The top-K series change membership over time; the exporter cannot delete a series, so
        // this family is rendered here, fresh each time.
        let top = self.top_entities();
        let _ = writeln!(
            out,
            "# HELP {name} Bytes sent on behalf of the {k} entities that cost the most.\n\
             # TYPE {name} gauge",
            name = names::ENTITY_BYTES_TOP,
            k = TOP_ENTITIES_K,
        );
        for (rank, e) in top.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}{{entity=\"{}\",rank=\"{}\"}} {}",
                names::ENTITY_BYTES_TOP,
                e.entity_id,
                rank + 1,
                e.bytes_out
            );
        }
        let top = lock(&self.top_connections).clone();
        let _ = writeln!(
            out,
            "# HELP {name} Bytes each way of the {k} connections that cost the most.\n\
             # TYPE {name} gauge",
            name = names::CONNECTION_BYTES_TOP,
            k = super::TOP_CONNECTIONS_K,
        );
        for (rank, c) in top.iter().enumerate() {
            for (direction, bytes) in [("in", c.bytes_in), ("out", c.bytes_out)] {
                let _ = writeln!(
                    out,
                    "{}{{conn=\"{}\",rank=\"{}\",direction=\"{direction}\"}} {bytes}",
                    names::CONNECTION_BYTES_TOP,
                    c.conn_id,
                    rank + 1,
                );
            }
        }
        out
    }
}
