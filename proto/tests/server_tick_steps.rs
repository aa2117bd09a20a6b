//! A tick written in steps (`ServerCore::handle_timeout_step`, as the relay does so the first
//! clients' datagrams leave while later clients' are written) sends exactly what the same tick
//! written at once (`handle_timeout`) sends, in the same order, and takes as many steps as the
//! step size says.

use std::time::Duration;

use neonet_proto::server::{
    ConnId, InsecureTokens, ServerConfig, ServerCore, TimeoutProgress, Transmit, TransportKind,
    World,
};
use neonet_proto::time::{Time, TICK_HZ_DEFAULT};
use neonet_proto::wire::codec;
use neonet_proto::wire::msg::{ClientMsg, PROTOCOL_VERSION};

/// Clients joined to each core: more than one step's worth, and not a multiple of the step.
const CLIENTS: u64 = 7;
/// Clients written per step.
const STEP: usize = 2;

fn core_with_clients() -> ServerCore {
    let mut core = ServerCore::new(
        ServerConfig::default(),
        World::default(),
        Box::new(InsecureTokens),
        Time::ZERO,
    );
    for i in 1..=CLIENTS {
        let conn = ConnId(i);
        core.handle_connect(conn, TransportKind::Sim, Time::ZERO);
        let hello = ClientMsg::Hello {
            protocol_version: PROTOCOL_VERSION,
            name: format!("p{i}"),
            token: None,
        };
        core.handle_frame(conn, hello.channel(), &codec::encode(&hello), Time::ZERO);
    }
    // Tick 0 is due at once: run it, so each test's next tick is the only one due, and start
    // each test with nothing pending.
    core.handle_timeout(Time::ZERO);
    while core.poll_transmit().is_some() {}
    core
}

/// The transform datagrams among `core`'s pending transmits, in order.
fn datagrams(core: &mut ServerCore) -> Vec<(ConnId, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(t) = core.poll_transmit() {
        if let Transmit::Datagram { conn, data, .. } = t {
            out.push((conn, data));
        }
    }
    out
}

#[test]
fn a_tick_written_in_steps_sends_what_the_whole_tick_sends_in_the_same_order() {
    let mut whole = core_with_clients();
    let mut stepped = core_with_clients();
    let period = Duration::from_micros(1_000_000 / u64::from(TICK_HZ_DEFAULT));
    let mut now = Time::ZERO;
    let mut sent = 0;
    for _ in 0..10 {
        now += period;
        whole.handle_timeout(now);
        let expected = datagrams(&mut whole);

        let mut got = Vec::new();
        let mut steps = 0;
        loop {
            steps += 1;
            let progress = stepped.handle_timeout_step(now, STEP);
            got.extend(datagrams(&mut stepped));
            if progress == TimeoutProgress::Done {
                break;
            }
        }
        assert_eq!(got, expected, "tick at {now:?}");
        assert_eq!(stepped.last_tick_stats(), whole.last_tick_stats());
        assert_eq!(stepped.tick(), whole.tick());
        // One step per `STEP` clients of the one tick due (the last step also ends it).
        assert_eq!(steps, (CLIENTS as usize).div_ceil(STEP), "tick at {now:?}");
        sent += got.len();
    }
    // Every client got its first datagram: the comparison compared something.
    assert!(sent >= CLIENTS as usize, "{sent} datagrams");
}

#[test]
fn a_step_writes_at_least_one_client_even_with_a_zero_budget() {
    let mut core = core_with_clients();
    let period = Duration::from_micros(1_000_000 / u64::from(TICK_HZ_DEFAULT));
    let now = Time::ZERO + period;
    let mut steps = 0;
    while core.handle_timeout_step(now, 0) == TimeoutProgress::More {
        steps += 1;
        assert!(
            steps <= CLIENTS as usize,
            "a zero budget must still make progress"
        );
    }
    assert_eq!(core.last_tick_stats().datagrams, CLIENTS as usize);
}
