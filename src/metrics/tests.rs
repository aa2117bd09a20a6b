//! Tests of the registry, its bounds and both renderings.

use super::*;

#[test]
fn two_registries_are_independent() {
    let a = Metrics::default();
    let b = Metrics::default();
    a.record_datagram_out(100);
    a.record_message_in("Join");
    assert_eq!(a.status().bandwidth.bytes_out, 100);
    assert_eq!(b.status().bandwidth.bytes_out, 0);
    assert!(a
        .render_prometheus()
        .contains("neonet_messages_in_total{type=\"Join\"} 1"));
    assert!(!b.render_prometheus().contains("type=\"Join\""));
}

#[test]
fn top_entities_orders_by_bytes_then_id() {
    let m = Metrics::default();
    let mut batch = EntityBytesBatch::new();
    for id in 0..50u32 {
        batch.add(id, (id as usize % 7) * 10);
    }
    m.merge_entity_bytes(&mut batch);
    assert!(batch.is_empty());
    m.record_entity_bytes(3, 1000);
    let top = m.top_entities();
    assert_eq!(top.len(), TOP_ENTITIES_K);
    assert_eq!(top[0].entity_id, 3);
    assert_eq!(
        top[1],
        EntityBandwidth {
            entity_id: 6,
            name: None,
            bytes_out: 60
        }
    );
    assert_eq!(
        top[2],
        EntityBandwidth {
            entity_id: 13,
            name: None,
            bytes_out: 60
        }
    );
    let text = m.render_prometheus();
    assert!(text.contains("neonet_entity_bytes_out_top{entity=\"3\",rank=\"1\"} 1030"));
    m.forget_entity(3);
    assert_ne!(m.top_entities()[0].entity_id, 3);
}

#[test]
fn labels_are_bounded() {
    let m = Metrics::default();
    let names: Vec<&'static str> = (0..LABEL_VALUES_MAX + 6)
        .map(|i| &*Box::leak(format!("reason{i}").into_boxed_str()))
        .collect();
    for name in names {
        m.record_drop(name);
    }
    let text = m.render_prometheus();
    let series = text
        .lines()
        .filter(|l| l.starts_with("neonet_drops_total{"))
        .count();
    assert_eq!(series, LABEL_VALUES_MAX + 1);
    // The known reasons hold their places from the start, so six more spill into `other`.
    let other = 6 + DROP_REASONS.len();
    assert!(text.contains(&format!("neonet_drops_total{{reason=\"other\"}} {other}")));
}

#[test]
fn batched_trails_keep_the_same_records_as_one_by_one() {
    let one = Metrics::default();
    let batched = Metrics::default();
    for m in [&one, &batched] {
        for i in 0..5000u32 {
            m.record_trail(i % 100, 1, 40);
        }
        m.record_tick(Duration::from_millis(1));
    }
    let updates: Vec<(u32, u64, usize)> = (0..997u32).map(|i| (i, u64::from(i % 7), 30)).collect();
    for chunk in updates.chunks(61) {
        for &(e, s, b) in chunk {
            one.record_trail(e, s, b);
        }
        batched.record_trails(chunk.iter().copied());
    }
    let ids = |m: &Metrics| -> Vec<(u64, u32, u64)> {
        lock(&m.trails)
            .records
            .iter()
            .map(|r| (r.seq, r.entity_id, r.session_id))
            .collect()
    };
    assert_eq!(ids(&one), ids(&batched));
}

#[test]
fn trails_are_thinned_and_bounded() {
    let m = Metrics::default();
    for i in 0..5000u32 {
        m.record_trail(i % 100, u64::from(i % 10), 40);
    }
    // No tick yet: stride 1, so the ring is full.
    assert_eq!(lock(&m.trails).records.len(), TRAIL_RING_LEN);
    m.record_tick(Duration::from_millis(1));
    let before = m.status().trail_next_seq;
    for i in 0..4800u32 {
        m.record_trail(i % 100, 1, 40);
    }
    let kept = m.status().trail_next_seq - before;
    let stride = 5000 / TRAIL_SAMPLES_PER_TICK;
    assert!(
        kept.abs_diff(4800 / stride) <= 1,
        "kept {kept} with stride {stride}"
    );
    let since = m.status_since(before + 5);
    assert!(since.trails.iter().all(|t| t.seq >= before + 5));
}

#[test]
fn tick_percentiles_and_overruns() {
    let m = Metrics::new(MetricsConfig {
        tick_period: Duration::from_millis(10),
    });
    for ms in 1..=100u64 {
        m.record_tick(Duration::from_millis(ms));
    }
    let s = m.status();
    assert_eq!(s.tick.ticks, 100);
    assert_eq!(s.tick.overruns, 90);
    assert!((s.tick.p50_ms - 50.0).abs() < 1e-9);
    assert!((s.tick.p99_ms - 99.0).abs() < 1e-9);
    assert!((s.tick.max_ms - 100.0).abs() < 1e-9);
    let text = m.render_prometheus();
    assert!(text.contains("neonet_tick_duration_seconds_bucket"));
    assert!(text.contains("neonet_tick_overruns_total 90"));
}

#[test]
fn users_get_rates_and_bounded_names() {
    let m = Metrics::default();
    let report = |bytes_out| UserReport {
        session_id: 7,
        name: "x".repeat(500),
        addr: "127.0.0.1:9".parse().unwrap(),
        rtt_ms: 12.5,
        bytes_in: 0,
        bytes_out,
    };
    m.publish_users([report(0)]);
    std::thread::sleep(RATE_SAMPLE_SPACING + Duration::from_millis(20));
    m.publish_users([report(10_000)]);
    let s = m.status();
    assert_eq!(s.users_total, 1);
    assert_eq!(s.users[0].name.chars().count(), USER_NAME_CHARS_MAX);
    assert!(s.users[0].kbps_out > 0.0);
    m.publish_users([]);
    assert_eq!(m.status().users_total, 0);
}

#[test]
fn a_fresh_registry_renders_every_counter_at_zero() {
    let text = Metrics::default().render_prometheus();
    let value = |series: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    };
    let mut expected: Vec<String> = [
        names::CONNECTIONS,
        names::JOINS,
        names::TICKS,
        names::TICK_OVERRUNS,
        names::DATAGRAMS_IN,
        names::DATAGRAMS_OUT,
        names::PERSIST_QUEUE,
        names::RATE_LIMIT_HITS,
        names::ENTITIES,
        names::ENTITY_BYTES_UNTRACKED,
    ]
    .iter()
    .map(|n| n.to_string())
    .collect();
    for family in [names::BYTES_IN, names::BYTES_OUT] {
        for channel in ["datagram", "stream"] {
            expected.push(format!("{family}{{channel=\"{channel}\"}}"));
        }
    }
    for reason in DROP_REASONS {
        expected.push(format!("{}{{reason=\"{reason}\"}}", names::DROPS));
    }
    for series in &expected {
        assert_eq!(
            value(series).as_deref(),
            Some("0"),
            "{series} missing or not 0 in:\n{text}"
        );
    }
    assert!(text.contains(&format!("# TYPE {} counter", names::DROPS)));

    // A known reason keeps its one series; counting goes on from zero.
    let m = Metrics::default();
    m.record_drops(DROP_REASONS[0], 3);
    let text = m.render_prometheus();
    let series = format!("{}{{reason=\"{}\"}}", names::DROPS, DROP_REASONS[0]);
    assert_eq!(text.matches(&series).count(), 1);
    assert!(text.contains(&format!("{series} 3")));
}

#[test]
fn idle_entities_leave_the_top_and_named_ones_carry_their_name() {
    let m = Metrics::default();
    let t0 = Instant::now();
    m.record_entity_bytes(1, 500);
    m.record_entity_bytes(2, 100);
    m.publish_entity_names([(1, "ada".to_string()), (9, "y".repeat(500))]);
    let top = m.top_entities();
    assert_eq!(top[0].name.as_deref(), Some("ada"));
    assert_eq!(top[1].name, None);
    assert_eq!(m.top_entities_at(t0 + ENTITY_IDLE_FORGET / 2).len(), 2);
    // Nothing sent for either since: both are gone, from /status and /metrics alike.
    let later = t0 + ENTITY_IDLE_FORGET + Duration::from_secs(1);
    assert!(m.top_entities_at(later).is_empty());
    assert!(m.status_at(0, later).top_entities.is_empty());
    // Forgotten for good: back at zero when bytes are sent for it again.
    m.record_entity_bytes(2, 7);
    assert_eq!(
        m.top_entities(),
        [EntityBandwidth {
            entity_id: 2,
            name: None,
            bytes_out: 7
        }]
    );
    assert!(!m.render_prometheus().contains("entity=\"1\""));
    // Names are bounded like user names.
    m.record_entity_bytes(9, 1);
    let nine = m.top_entities().into_iter().find(|e| e.entity_id == 9);
    assert_eq!(
        nine.unwrap().name.unwrap().chars().count(),
        USER_NAME_CHARS_MAX
    );
}

#[test]
fn rates_restart_after_a_gap_instead_of_averaging_over_it() {
    let m = Metrics::default();
    let t0 = Instant::now();
    m.status_at(0, t0);
    // Heavy traffic, then a minute nobody looked.
    m.record_datagram_out(8_000_000);
    let after_gap = t0 + Duration::from_secs(60);
    let s = m.status_at(0, after_gap);
    assert_eq!(s.bandwidth.kbps_out, 0.0, "not a 60 s average");
    assert_eq!(s.tick.rate_hz, 0.0);
    // From there on, over the actual interval since the previous sample.
    m.record_datagram_out(1_000);
    let s = m.status_at(0, after_gap + Duration::from_millis(500));
    assert!(
        (s.bandwidth.kbps_out - 16.0).abs() < 1e-9,
        "{}",
        s.bandwidth.kbps_out
    );
}

#[test]
fn status_carries_the_last_30_s_of_chart_points() {
    let m = Metrics::default();
    let t0 = Instant::now();
    // 1,000 bytes per step of 250 ms = 32 kbit/s, polled at each step for 40 s.
    let steps = 160u32;
    let mut s = Status::default();
    for k in 0..=steps {
        m.record_datagram_out(1_000);
        s = m.status_at(0, t0 + HISTORY_STEP * k);
    }
    assert_eq!(s.history.len(), HISTORY_LEN);
    let ages: Vec<u64> = s.history.iter().map(|p| p.age_ms).collect();
    assert!(
        ages.windows(2).all(|w| w[0] > w[1]),
        "oldest first: {ages:?}"
    );
    assert_eq!(*ages.last().unwrap(), 0);
    assert!(ages[0] < 30_000);
    for p in &s.history {
        assert!((p.kbps_out - 32.0).abs() < 1e-9, "{p:?}");
    }
    assert_eq!(s.history.last().unwrap().kbps_out, s.bandwidth.kbps_out);
    // After a long gap the old points are too old to show.
    let s = m.status_at(0, t0 + HISTORY_STEP * steps + Duration::from_secs(31));
    assert_eq!(s.history.len(), 1);
}

#[test]
fn ticks_sample_the_history_without_anyone_polling() {
    let m = Metrics::default();
    m.record_tick(Duration::from_millis(1));
    std::thread::sleep(HISTORY_STEP + Duration::from_millis(30));
    m.record_datagram_out(100);
    m.record_tick(Duration::from_millis(1));
    let points = lock(&m.rates).points.len();
    assert_eq!(points, 2);
}
