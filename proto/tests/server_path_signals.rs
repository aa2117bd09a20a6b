//! The path-signal hook at the core's level: what a driver hands `ServerCore::handle_path_signals`
//! (quinn's path stats) reaches the client's transform budget.

use neonet_proto::server::{
    ConnId, InsecureTokens, ServerConfig, ServerCore, TransportKind, World,
};
use neonet_proto::time::{Time, TICK_HZ_DEFAULT};
use neonet_proto::transform::PathSignals;
use neonet_proto::wire::codec;
use neonet_proto::wire::msg::{ClientMsg, PROTOCOL_VERSION};

/// A core with one joined client on `conn`, its first tick run.
fn core_with_client(conn: ConnId) -> ServerCore {
    let mut core = ServerCore::new(
        ServerConfig::default(),
        World::default(),
        Box::new(InsecureTokens),
        Time::ZERO,
    );
    core.handle_connect(conn, TransportKind::Sim, Time::ZERO);
    let hello = ClientMsg::Hello {
        protocol_version: PROTOCOL_VERSION,
        name: "p".into(),
        token: None,
    };
    core.handle_frame(conn, hello.channel(), &codec::encode(&hello), Time::ZERO);
    core.handle_timeout(Time::ZERO);
    while core.poll_transmit().is_some() {}
    core
}

fn budget(core: &ServerCore, conn: ConnId) -> u64 {
    core.conn_figures(conn)
        .expect("open connection")
        .budget_bytes_per_tick
}

/// Runs the core's ticks up to `until`, draining its transmits.
fn run_until(core: &mut ServerCore, until: Time) {
    while let Some(at) = core.poll_timeout() {
        if at > until {
            break;
        }
        core.handle_timeout(at);
        while core.poll_transmit().is_some() {}
    }
}

#[test]
fn a_congestion_event_from_the_transport_shrinks_the_clients_budget() {
    let conn = ConnId(1);
    let mut core = core_with_client(conn);
    let open = budget(&core, conn);
    assert!(open > 0);
    // A wide window: no cap, only the event count matters.
    let mut s = PathSignals {
        rtt_us: 100_000,
        cwnd_bytes: 10_000_000,
        congestion_events: 0,
    };
    core.handle_path_signals(conn, s);
    run_until(&mut core, Time(100_000));
    assert_eq!(budget(&core, conn), open, "no congestion yet");
    s.congestion_events = 1;
    core.handle_path_signals(conn, s);
    run_until(&mut core, Time(200_000));
    let cut = budget(&core, conn);
    assert!(cut < open, "budget {open} -> {cut} bytes per tick");
}

#[test]
fn a_small_congestion_window_caps_the_clients_budget_and_an_unknown_connection_is_ignored() {
    let conn = ConnId(1);
    let mut core = core_with_client(conn);
    let open = budget(&core, conn);
    // 2,000 bytes per 100 ms is 160 kbit/s; the budget takes at most half of it.
    core.handle_path_signals(
        conn,
        PathSignals {
            rtt_us: 100_000,
            cwnd_bytes: 2_000,
            congestion_events: 0,
        },
    );
    let capped = budget(&core, conn);
    assert!(capped < open, "budget {open} -> {capped}");
    let per_tick = 80_000 / 8 / u64::from(TICK_HZ_DEFAULT);
    assert_eq!(capped, per_tick, "{capped} bytes per tick");
    // Signals for a connection the core does not know change nothing and do not panic.
    core.handle_path_signals(ConnId(99), PathSignals::default());
    assert_eq!(budget(&core, conn), capped);
}
