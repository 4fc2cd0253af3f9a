//! The core driven with virtual time and a seeded generator.

use super::*;

const S: Duration = Duration::from_secs(1);

fn topic(n: u8) -> Topic {
    Topic([n; 32])
}

fn addr(n: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 4000 + n))
}

fn core(dht: bool, lan: bool, statics: Vec<SocketAddr>) -> DiscoveryCore {
    DiscoveryCore::new(
        CoreSettings {
            timing: Timing::default(),
            dht,
            lan,
            static_peers: statics,
        },
        7,
    )
}

fn drain(core: &mut DiscoveryCore) -> Vec<CoreEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn found(events: &[CoreEvent]) -> Vec<(SocketAddr, PeerSource)> {
    events
        .iter()
        .filter_map(|e| match e {
            CoreEvent::PeerFound { addr, source, .. } => Some((*addr, *source)),
            _ => None,
        })
        .collect()
}

fn lookups(events: &[CoreEvent]) -> Vec<PeerSource> {
    events
        .iter()
        .filter_map(|e| match e {
            CoreEvent::Lookup { backend, .. } => Some(*backend),
            _ => None,
        })
        .collect()
}

fn announces(events: &[CoreEvent]) -> Vec<PeerSource> {
    events
        .iter()
        .filter_map(|e| match e {
            CoreEvent::Announce { backend, .. } => Some(*backend),
            _ => None,
        })
        .collect()
}

/// Runs the timers until `until`, answering every lookup at once with `answer` and every
/// announce with success. Returns every event.
fn run(
    core: &mut DiscoveryCore,
    now: &mut Instant,
    until: Instant,
    answer: &dyn Fn(PeerSource) -> Vec<SocketAddr>,
) -> Vec<CoreEvent> {
    let mut all = Vec::new();
    loop {
        let events = drain(core);
        if events.is_empty() {
            match core.poll_timeout() {
                Some(t) if t <= until => {
                    *now = t.max(*now);
                    core.handle_timeout(*now);
                    continue;
                }
                _ => break,
            }
        }
        for event in &events {
            match event {
                CoreEvent::Announce {
                    topic,
                    backend,
                    join,
                } => core.handle_announce_done(*topic, *join, *backend, Ok(()), *now),
                CoreEvent::Lookup {
                    topic,
                    backend,
                    join,
                } => {
                    core.handle_peers(*topic, *join, *backend, answer(*backend));
                    core.handle_lookup_done(*topic, *join, *backend, *now);
                }
                _ => {}
            }
        }
        all.extend(events);
    }
    *now = until;
    all
}

#[test]
fn join_starts_both_backends_and_resolves_after_first_round() {
    let mut core = core(true, true, vec![addr(9)]);
    let now = Instant::now();
    let t = topic(1);
    let join = core.handle_join(t, true, true, now);
    let events = drain(&mut core);
    assert_eq!(announces(&events), vec![PeerSource::Dht, PeerSource::Lan]);
    assert_eq!(lookups(&events), vec![PeerSource::Dht, PeerSource::Lan]);
    assert_eq!(
        found(&events),
        vec![(addr(9), PeerSource::Static)],
        "static peer at once"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, CoreEvent::JoinDone { .. })));

    core.handle_announce_done(t, join, PeerSource::Dht, Ok(()), now);
    core.handle_peers(t, join, PeerSource::Dht, [addr(1), addr(2)]);
    core.handle_lookup_done(t, join, PeerSource::Dht, now);
    core.handle_announce_done(t, join, PeerSource::Lan, Err("no interface".into()), now);
    assert!(
        drain(&mut core)
            .iter()
            .all(|e| !matches!(e, CoreEvent::JoinDone { .. })),
        "LAN round still open"
    );
    core.handle_lookup_done(t, join, PeerSource::Lan, now + S);
    let events = drain(&mut core);
    let report = events
        .iter()
        .find_map(|e| match e {
            CoreEvent::JoinDone { report, .. } => Some(report.clone()),
            _ => None,
        })
        .expect("join done after the last backend finished");
    assert_eq!(report.announced, vec![PeerSource::Dht]);
    assert_eq!(
        report.announce_failed,
        vec![(PeerSource::Lan, "no interface".to_string())]
    );
    assert_eq!(report.peers_found, 3);
}

#[test]
fn a_peer_is_reported_once_per_round_whoever_returned_it() {
    let mut core = core(true, true, vec![]);
    let now = Instant::now();
    let t = topic(1);
    let join = core.handle_join(t, false, true, now);
    drain(&mut core);
    // Three DHT nodes return the same peer, and the LAN finds it too.
    core.handle_peers(t, join, PeerSource::Dht, [addr(1), addr(2)]);
    core.handle_peers(t, join, PeerSource::Dht, [addr(1)]);
    core.handle_peers(t, join, PeerSource::Dht, [addr(2), addr(1)]);
    core.handle_peers(t, join, PeerSource::Lan, [addr(1)]);
    core.handle_lookup_done(t, join, PeerSource::Dht, now);
    core.handle_lookup_done(t, join, PeerSource::Lan, now);
    let events = drain(&mut core);
    assert_eq!(
        found(&events),
        vec![(addr(1), PeerSource::Dht), (addr(2), PeerSource::Dht)]
    );

    // The next round reports each once again (a refresh), not more.
    let next = core.poll_timeout().expect("next round scheduled");
    core.handle_timeout(next);
    drain(&mut core);
    core.handle_peers(t, join, PeerSource::Dht, [addr(1), addr(1)]);
    core.handle_peers(t, join, PeerSource::Lan, [addr(1)]);
    assert_eq!(found(&drain(&mut core)), vec![(addr(1), PeerSource::Dht)]);
}

#[test]
fn lookups_are_fast_after_join_then_slow_and_jittered() {
    let mut core = core(true, false, vec![]);
    let mut now = Instant::now();
    let start = now;
    let t = topic(1);
    core.handle_join(t, false, true, now);
    let mut starts = Vec::new();
    for _ in 0..9 {
        let events = drain(&mut core);
        for e in &events {
            if let CoreEvent::Lookup {
                topic,
                backend,
                join,
            } = e
            {
                starts.push(now - start);
                core.handle_lookup_done(*topic, *join, *backend, now);
            }
        }
        now = core.poll_timeout().expect("always a next lookup");
        core.handle_timeout(now);
    }
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    let delays = Timing::default().join_lookup_delays;
    for (gap, want) in gaps.iter().zip(delays.iter()) {
        assert!(
            *gap >= want.mul_f64(0.9) && *gap <= want.mul_f64(1.1),
            "gap {gap:?} not within 10% of {want:?}; gaps {gaps:?}"
        );
    }
    for gap in &gaps[delays.len()..] {
        assert!(
            *gap >= 60 * S && *gap <= 300 * S,
            "slow gap {gap:?} outside 1-5 min"
        );
    }
    // Jitter: the slow gaps are not all equal.
    assert_ne!(gaps[delays.len()], gaps[delays.len() + 1]);
}

#[test]
fn dht_announce_refreshes_and_retries_lan_registers_once() {
    let mut core = core(true, true, vec![]);
    let mut now = Instant::now();
    let start = now;
    let t = topic(1);
    let join = core.handle_join(t, true, false, now);
    let events = drain(&mut core);
    assert_eq!(announces(&events), vec![PeerSource::Dht, PeerSource::Lan]);
    assert!(
        lookups(&events).is_empty(),
        "announce-only join does not look up"
    );
    core.handle_announce_done(t, join, PeerSource::Lan, Ok(()), now);
    core.handle_announce_done(t, join, PeerSource::Dht, Err("timeout".into()), now);
    let retry = core.poll_timeout().expect("retry scheduled");
    assert!(
        retry - start >= 9 * S && retry - start <= 11 * S,
        "retry after ~10 s"
    );
    now = retry;
    core.handle_timeout(now);
    assert_eq!(
        announces(&drain(&mut core)),
        vec![PeerSource::Dht],
        "only the DHT retries"
    );
    core.handle_announce_done(t, join, PeerSource::Dht, Ok(()), now);
    let refresh = core.poll_timeout().expect("refresh scheduled");
    assert!(
        refresh - now >= 810 * S && refresh - now <= 990 * S,
        "refresh after 15 min ± 10%"
    );
}

#[test]
fn flushed_needs_every_backend_round_and_every_peer_tried() {
    let mut core = core(true, true, vec![]);
    let now = Instant::now();
    let t = topic(1);
    let join = core.handle_join(t, false, true, now);
    drain(&mut core);
    core.handle_peers(t, join, PeerSource::Dht, [addr(1), addr(2)]);
    core.handle_lookup_done(t, join, PeerSource::Dht, now);
    core.handle_peer_tried(t, addr(1));
    core.handle_peer_tried(t, addr(2));
    assert!(!core.is_flushed(&t), "LAN round not complete");
    core.handle_lookup_done(t, join, PeerSource::Lan, now);
    let events = drain(&mut core);
    assert!(core.is_flushed(&t));
    assert!(events.contains(&CoreEvent::Flushed { topic: t }));

    // A new peer makes it unflushed until it is tried; a known one does not.
    core.handle_peers(t, join, PeerSource::Lan, [addr(3), addr(1)]);
    assert!(!core.is_flushed(&t));
    core.handle_peer_tried(t, addr(99)); // never found: no effect
    assert!(!core.is_flushed(&t));
    core.handle_peer_tried(t, addr(3));
    assert!(core.is_flushed(&t));
    let status = &core.topics()[0];
    assert_eq!(
        (status.peers_found, status.peers_tried, status.rounds),
        (3, 3, 1)
    );
}

#[test]
fn found_but_untried_peer_keeps_it_unflushed() {
    let mut core = core(true, false, vec![]);
    let now = Instant::now();
    let t = topic(1);
    let join = core.handle_join(t, false, true, now);
    drain(&mut core);
    core.handle_peers(t, join, PeerSource::Dht, [addr(1)]);
    core.handle_lookup_done(t, join, PeerSource::Dht, now);
    assert!(!core.is_flushed(&t));
    core.handle_peer_tried(t, addr(1));
    assert!(core.is_flushed(&t));
}

#[test]
fn leave_resets_flushed_and_ignores_stale_answers() {
    let mut core = core(true, true, vec![]);
    let mut now = Instant::now();
    let t = topic(1);
    let old = core.handle_join(t, true, true, now);
    let end = now + 10 * S;
    run(&mut core, &mut now, end, &|_| vec![]);
    assert!(core.is_flushed(&t));
    assert!(core.handle_leave(t));
    let events = drain(&mut core);
    assert_eq!(
        events,
        vec![
            CoreEvent::Stop {
                topic: t,
                backend: PeerSource::Dht
            },
            CoreEvent::Stop {
                topic: t,
                backend: PeerSource::Lan
            },
        ]
    );
    assert!(!core.is_joined(&t) && !core.is_flushed(&t));
    assert_eq!(core.poll_timeout(), None, "no timer survives the leave");
    assert!(!core.handle_leave(t), "second leave is a no-op");

    let new = core.handle_join(t, true, true, now);
    assert_ne!(old, new);
    drain(&mut core);
    // Answers for the old join change nothing.
    core.handle_peers(t, old, PeerSource::Dht, [addr(1)]);
    core.handle_lookup_done(t, old, PeerSource::Dht, now);
    core.handle_lookup_done(t, old, PeerSource::Lan, now);
    assert!(drain(&mut core).is_empty());
    assert!(!core.is_flushed(&t), "flushed starts over after leave");
}

#[test]
fn no_events_for_a_left_topic_over_hours() {
    let mut core = core(true, false, vec![addr(5)]);
    let mut now = Instant::now();
    let (a, b) = (topic(1), topic(2));
    core.handle_join(a, true, true, now);
    core.handle_join(b, true, true, now);
    let end = now + 600 * S;
    let first = run(&mut core, &mut now, end, &|_| vec![addr(1)]);
    assert!(
        found(&first).len() >= 2 * 7,
        "both topics refreshed in ten minutes"
    );
    core.handle_leave(a);
    let end = now + 4 * 3600 * S;
    let later = run(&mut core, &mut now, end, &|_| vec![addr(1)]);
    for e in &later {
        let t = match e {
            CoreEvent::Announce { topic, .. }
            | CoreEvent::Lookup { topic, .. }
            | CoreEvent::PeerFound { topic, .. } => topic,
            _ => continue,
        };
        assert_eq!(*t, b, "event for the left topic: {e:?}");
    }
    assert!(
        announces(&later).len() >= 15,
        "b re-announced every ~15 min: {}",
        announces(&later).len()
    );
}

#[test]
fn lookup_at_reports_now_and_every_round() {
    let mut core = core(false, false, vec![]);
    let now = Instant::now();
    let t = topic(1);
    assert!(!core.handle_lookup_at(t, addr(1)), "not joined");
    core.handle_join(t, false, true, now);
    let events = drain(&mut core);
    assert!(
        core.is_flushed(&t),
        "no backend and nothing found: flushed at once"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, CoreEvent::JoinDone { .. })));
    assert!(core.handle_lookup_at(t, addr(1)));
    assert_eq!(
        found(&drain(&mut core)),
        vec![(addr(1), PeerSource::Static)]
    );
    assert!(!core.is_flushed(&t));
    let next = core.poll_timeout().expect("next round");
    core.handle_timeout(next);
    assert_eq!(
        found(&drain(&mut core)),
        vec![(addr(1), PeerSource::Static)]
    );
}

#[test]
fn lookup_disabled_is_flushed_at_join() {
    let mut core = core(true, true, vec![]);
    let now = Instant::now();
    let t = topic(3);
    core.handle_join(t, true, false, now);
    assert!(core.is_flushed(&t));
    assert!(lookups(&drain(&mut core)).is_empty());
}

#[test]
fn peers_per_topic_are_bounded() {
    let mut core = core(true, false, vec![]);
    let now = Instant::now();
    let t = topic(1);
    let join = core.handle_join(t, false, true, now);
    drain(&mut core);
    let many: Vec<SocketAddr> = (0..MAX_PEERS_PER_TOPIC as u32 + 100)
        .map(|i| SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 9)))
        .collect();
    core.handle_peers(t, join, PeerSource::Dht, many.clone());
    core.handle_lookup_done(t, join, PeerSource::Dht, now);
    assert_eq!(found(&drain(&mut core)).len(), MAX_PEERS_PER_TOPIC);
    let status = &core.topics()[0];
    assert_eq!(
        (status.peers_found, status.peers_dropped),
        (MAX_PEERS_PER_TOPIC, 100)
    );
    // Known addresses are still refreshed in the next round.
    let next = core.poll_timeout().expect("next round");
    core.handle_timeout(next);
    drain(&mut core);
    core.handle_peers(t, join, PeerSource::Dht, many[..10].to_vec());
    assert_eq!(found(&drain(&mut core)).len(), 10);
}

#[test]
fn a_lookup_follows_our_first_dht_announce_at_once() {
    // The announce is stored after the first round ended: a round starts at once.
    let mut core = core(true, false, vec![]);
    let now = Instant::now();
    let t = topic(1);
    let join = core.handle_join(t, true, true, now);
    assert_eq!(lookups(&drain(&mut core)), vec![PeerSource::Dht]);
    core.handle_lookup_done(t, join, PeerSource::Dht, now + S / 2);
    drain(&mut core);
    let stored = now + S / 2 + S / 100;
    core.handle_announce_done(t, join, PeerSource::Dht, Ok(()), stored);
    assert_eq!(lookups(&drain(&mut core)), vec![PeerSource::Dht]);
    // After that extra round the schedule goes on where it was: 1 s ± 10 %.
    core.handle_lookup_done(t, join, PeerSource::Dht, stored);
    drain(&mut core);
    let next = core.poll_timeout().expect("next round") - stored;
    assert!(next >= S * 9 / 10 && next <= S * 11 / 10, "{next:?}");

    // Stored while the first round runs: the next round starts when that one ends.
    let t = topic(2);
    let join = core.handle_join(t, true, true, now);
    drain(&mut core);
    core.handle_announce_done(t, join, PeerSource::Dht, Ok(()), now);
    assert_eq!(lookups(&drain(&mut core)), vec![], "one round at a time");
    core.handle_lookup_done(t, join, PeerSource::Dht, now + S / 2);
    drain(&mut core);
    assert_eq!(core.poll_timeout(), Some(now + S / 2), "due at once");
    core.handle_timeout(now + S / 2);
    assert_eq!(lookups(&drain(&mut core)), vec![PeerSource::Dht]);

    // A failed announce, a refresh, or a join without lookup: no extra round.
    let t = topic(3);
    let join = core.handle_join(t, true, true, now);
    drain(&mut core);
    core.handle_lookup_done(t, join, PeerSource::Dht, now);
    drain(&mut core);
    core.handle_announce_done(t, join, PeerSource::Dht, Err("timeout".into()), now);
    assert_eq!(lookups(&drain(&mut core)), vec![]);
    let t = topic(4);
    let join = core.handle_join(t, true, false, now);
    drain(&mut core);
    core.handle_announce_done(t, join, PeerSource::Dht, Ok(()), now);
    assert_eq!(lookups(&drain(&mut core)), vec![]);
}
