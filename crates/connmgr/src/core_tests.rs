//! Tests of `ConnCore` with virtual time: no sockets, no clock, seeded jitter.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::{ApplicationClose, ConnectionError};

use super::*;
use crate::error::CLOSE_DUPLICATE;
use crate::key::Identity;

fn key(n: u8) -> PeerKey {
    PeerKey::from_bytes([n; 32])
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config() -> PolicyConfig {
    PolicyConfig {
        rng_seed: Some(7),
        ..PolicyConfig::default()
    }
}

fn events(core: &mut ConnCore) -> Vec<CoreEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn dup_close() -> ConnectionError {
    ConnectionError::ApplicationClosed(ApplicationClose {
        error_code: CLOSE_DUPLICATE,
        reason: b"duplicate".to_vec().into(),
    })
}

fn dial(core: &mut ConnCore, port: u16, expected: Option<PeerKey>, now: Instant) -> ConnId {
    match core.handle_dial(addr(port), expected, now) {
        Ok(DialStart::Dial(id)) => id,
        other => panic!("expected a new dial to port {port}, got {other:?}"),
    }
}

#[test]
fn greater_initiator_is_up_at_once_smaller_is_held_for_the_settle_window() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(5), config());
    // We (5) dial 3: initiated by the greater key, up at once.
    let c = dial(&mut core, 1, None, t0);
    core.handle_established(c, key(3), t0);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::PeerUp {
                conn: c,
                key: key(3)
            },
            CoreEvent::DialDone {
                dial: c,
                result: Ok(key(3))
            },
        ]
    );
    // 9 dials us: initiated by the greater key (9), up at once.
    let i = core.handle_incoming(addr(2)).expect("accept");
    core.handle_established(i, key(9), t0);
    assert_eq!(
        events(&mut core),
        vec![CoreEvent::PeerUp {
            conn: i,
            key: key(9)
        }]
    );
    // We dial 9... no: 9 is up, the dial succeeds without a new connection.
    assert_eq!(
        core.handle_dial(addr(2), Some(key(9)), t0),
        Ok(DialStart::Connected(key(9)))
    );
    // We dial 7 (greater than us): held.
    let d = dial(&mut core, 3, None, t0);
    core.handle_established(d, key(7), t0);
    assert_eq!(events(&mut core), vec![]);
    let settle = config().settle_window;
    assert_eq!(core.poll_timeout(), Some(t0 + settle));
    core.handle_timeout(t0 + settle - Duration::from_millis(1));
    assert_eq!(events(&mut core), vec![]);
    core.handle_timeout(t0 + settle);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::PeerUp {
                conn: d,
                key: key(7)
            },
            CoreEvent::DialDone {
                dial: d,
                result: Ok(key(7))
            },
        ]
    );
    assert_eq!(core.poll_timeout(), None);
}

/// Two cores that dial each other at once, with the four handshake completions in every
/// order, and each side's close of a loser delivered to the other side: both end up with
/// the same single connection up, and the losing one never went up anywhere.
#[test]
fn simultaneous_dial_converges_in_every_order() {
    let (small, great) = (key(1), key(2));
    // Physical connections: X = initiated by small, Y = initiated by great.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Phys {
        X,
        Y,
    }
    let orders: Vec<[(bool, Phys); 4]> = {
        let steps = [
            (true, Phys::X),
            (true, Phys::Y),
            (false, Phys::X),
            (false, Phys::Y),
        ];
        let mut all = Vec::new();
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    for d in 0..4 {
                        let idx = [a, b, c, d];
                        let mut seen = idx.to_vec();
                        seen.sort();
                        seen.dedup();
                        if seen.len() == 4 {
                            all.push(idx.map(|i| steps[i]));
                        }
                    }
                }
            }
        }
        all
    };
    assert_eq!(orders.len(), 24);
    for order in orders {
        let t0 = Instant::now();
        let mut s = ConnCore::new(small, config());
        let mut g = ConnCore::new(great, config());
        // Each side: its own dial and its accept.
        let s_x = dial(&mut s, 2, Some(great), t0);
        let g_y = dial(&mut g, 1, Some(small), t0);
        let s_y = s.handle_incoming(addr(2)).expect("accept");
        let g_x = g.handle_incoming(addr(1)).expect("accept");
        let id_of = |on_small: bool, p: Phys| match (on_small, p) {
            (true, Phys::X) => s_x,
            (true, Phys::Y) => s_y,
            (false, Phys::X) => g_x,
            (false, Phys::Y) => g_y,
        };
        let phys_of = |on_small: bool, id: ConnId| {
            if id == id_of(on_small, Phys::X) {
                Phys::X
            } else {
                Phys::Y
            }
        };
        let mut ups: Vec<(bool, Phys)> = Vec::new();
        let mut closed: Vec<Phys> = Vec::new();
        for (on_small, p) in order {
            if closed.contains(&p) {
                continue; // closed by the other side before its handshake finished here
            }
            let id = id_of(on_small, p);
            let (core, remote) = if on_small {
                (&mut s, great)
            } else {
                (&mut g, small)
            };
            core.handle_established(id, remote, t0);
            // Deliver events; closes reach the other side.
            let mut pending = vec![on_small];
            while let Some(side) = pending.pop() {
                let core = if side { &mut s } else { &mut g };
                let mut probes = Vec::new();
                for ev in events(core) {
                    match ev {
                        CoreEvent::PeerUp { conn, .. } => ups.push((side, phys_of(side, conn))),
                        CoreEvent::Close { conn, reason } => {
                            assert_eq!(reason, CloseReason::Duplicate, "order {order:?}");
                            let p = phys_of(side, conn);
                            closed.push(p);
                            let other = if side { &mut g } else { &mut s };
                            other.handle_closed(id_of(!side, p), dup_close(), t0);
                            pending.push(!side);
                        }
                        CoreEvent::PeerDown { .. } => panic!("peer down in order {order:?}"),
                        // Both connections are alive in this simulation.
                        CoreEvent::Probe { conn } => probes.push(conn),
                        _ => {}
                    }
                }
                let core = if side { &mut s } else { &mut g };
                for conn in probes {
                    core.handle_probe_result(conn, true, t0);
                    pending.push(side);
                }
            }
        }
        let settle = config().settle_window;
        for (side, core) in [(true, &mut s), (false, &mut g)] {
            core.handle_timeout(t0 + settle);
            for ev in events(core) {
                if let CoreEvent::PeerUp { conn, .. } = ev {
                    ups.push((side, phys_of(side, conn)));
                }
            }
        }
        ups.sort_by_key(|(side, _)| *side);
        assert_eq!(
            ups,
            vec![(false, Phys::Y), (true, Phys::Y)],
            "order {order:?}"
        );
        assert_eq!(closed, vec![Phys::X], "order {order:?}");
        assert_eq!(s.up(&great), Some(s_y));
        assert_eq!(g.up(&small), Some(g_y));
    }
}

#[test]
fn late_duplicate_replaces_a_settled_connection_and_says_duplicate() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(1), config());
    let d = dial(&mut core, 1, None, t0);
    core.handle_established(d, key(2), t0);
    core.handle_timeout(t0 + Duration::from_secs(1));
    events(&mut core);
    let i = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(i, key(2), t0 + Duration::from_secs(2));
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::PeerDown {
                conn: d,
                key: key(2),
                reason: DownReason::Duplicate
            },
            CoreEvent::Close {
                conn: d,
                reason: CloseReason::Duplicate
            },
            CoreEvent::PeerUp {
                conn: i,
                key: key(2)
            },
        ]
    );
}

#[test]
fn restarted_peer_replaces_a_dead_connection_at_once() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(9), config());
    // We (9) dialed 4: up.
    let old = dial(&mut core, 1, None, t0);
    core.handle_established(old, key(4), t0);
    events(&mut core);
    // 4 restarted and dials us: loses by keys (4 < 9), so the old one is probed.
    let new = core.handle_incoming(addr(5)).expect("accept");
    core.handle_established(new, key(4), t0);
    assert_eq!(events(&mut core), vec![CoreEvent::Probe { conn: old }]);
    core.handle_probe_result(old, false, t0);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::PeerDown {
                conn: old,
                key: key(4),
                reason: DownReason::Replaced
            },
            CoreEvent::Close {
                conn: old,
                reason: CloseReason::Replaced
            },
            CoreEvent::PeerUp {
                conn: new,
                key: key(4)
            },
        ]
    );
    assert_eq!(core.up(&key(4)), Some(new));
    // The old connection's close arrives later: nothing more happens.
    core.handle_closed(old, ConnectionError::TimedOut, t0);
    assert_eq!(events(&mut core), vec![]);
}

#[test]
fn probe_that_answers_keeps_the_old_connection() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(9), config());
    let old = dial(&mut core, 1, None, t0);
    core.handle_established(old, key(4), t0);
    events(&mut core);
    let new = core.handle_incoming(addr(5)).expect("accept");
    core.handle_established(new, key(4), t0);
    events(&mut core);
    // A third one while the probe runs is closed at once.
    let third = core.handle_incoming(addr(6)).expect("accept");
    core.handle_established(third, key(4), t0);
    assert_eq!(
        events(&mut core),
        vec![CoreEvent::Close {
            conn: third,
            reason: CloseReason::Duplicate
        }]
    );
    core.handle_probe_result(old, true, t0);
    assert_eq!(
        events(&mut core),
        vec![CoreEvent::Close {
            conn: new,
            reason: CloseReason::Duplicate
        }]
    );
    assert_eq!(core.up(&key(4)), Some(old));
}

#[test]
fn probed_connection_that_dies_hands_over_to_the_challenger() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(9), config());
    let old = dial(&mut core, 1, None, t0);
    core.handle_established(old, key(4), t0);
    events(&mut core);
    let new = core.handle_incoming(addr(5)).expect("accept");
    core.handle_established(new, key(4), t0);
    events(&mut core);
    core.handle_closed(old, ConnectionError::TimedOut, t0);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::PeerDown {
                conn: old,
                key: key(4),
                reason: DownReason::Lost(ConnectionError::TimedOut)
            },
            CoreEvent::PeerUp {
                conn: new,
                key: key(4)
            },
        ]
    );
    core.handle_probe_result(old, false, t0);
    assert_eq!(events(&mut core), vec![]);
}

#[test]
fn self_connections_are_refused() {
    let t0 = Instant::now();
    let me = Identity::generate().key();
    let mut core = ConnCore::new(me, config());
    assert_eq!(
        core.handle_dial(addr(1), Some(me), t0),
        Err(DialError::Refused(RefuseReason::SelfConnection))
    );
    // Unpinned dial to our own address: both halves are refused after the handshake.
    let d = dial(&mut core, 1, None, t0);
    let i = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(i, me, t0);
    core.handle_established(d, me, t0);
    let evs = events(&mut core);
    let refusal = CloseReason::Refused(RefuseReason::SelfConnection);
    assert!(
        evs.contains(&CoreEvent::Close {
            conn: i,
            reason: refusal.clone()
        }),
        "{evs:?}"
    );
    assert!(
        evs.contains(&CoreEvent::Close {
            conn: d,
            reason: refusal
        }),
        "{evs:?}"
    );
    assert!(evs.contains(&CoreEvent::DialDone {
        dial: d,
        result: Err(DialError::Refused(RefuseReason::SelfConnection))
    }));
    assert_eq!(core.peers().count(), 0);
}

#[test]
fn limits_refuse_with_their_reason() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(
        key(50),
        PolicyConfig {
            max_peers: 2,
            max_pending_dials: 1,
            ..config()
        },
    );
    let d = dial(&mut core, 1, None, t0);
    assert_eq!(
        core.handle_dial(addr(2), None, t0),
        Err(DialError::Refused(RefuseReason::TooManyPending(1)))
    );
    core.handle_established(d, key(1), t0);
    let i = core.handle_incoming(addr(3)).expect("accept");
    core.handle_established(i, key(60), t0);
    events(&mut core);
    assert_eq!(
        core.handle_dial(addr(4), None, t0),
        Err(DialError::Refused(RefuseReason::TooManyPeers(2)))
    );
    let third = core.handle_incoming(addr(5)).expect("accept");
    core.handle_established(third, key(70), t0);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::Refused {
                conn: third,
                key: key(70),
                reason: RefuseReason::TooManyPeers(2)
            },
            CoreEvent::Close {
                conn: third,
                reason: CloseReason::Refused(RefuseReason::TooManyPeers(2))
            },
        ]
    );
    // A duplicate of a connected key is not refused by the limit: it is deduplicated.
    let dup = core.handle_incoming(addr(6)).expect("accept");
    core.handle_established(dup, key(60), t0);
    assert_eq!(events(&mut core), vec![CoreEvent::Probe { conn: i }]);
}

#[test]
fn bans_close_refuse_and_expire() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), config());
    let i = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(i, key(60), t0);
    events(&mut core);
    core.ban(key(60), Duration::from_secs(10), t0);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::PeerDown {
                conn: i,
                key: key(60),
                reason: DownReason::Banned
            },
            CoreEvent::Close {
                conn: i,
                reason: CloseReason::Refused(RefuseReason::Banned(key(60)))
            },
        ]
    );
    assert_eq!(
        core.handle_dial(addr(1), Some(key(60)), t0),
        Err(DialError::Refused(RefuseReason::Banned(key(60))))
    );
    let again = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(again, key(60), t0 + Duration::from_secs(9));
    assert!(matches!(
        events(&mut core).first(),
        Some(CoreEvent::Refused {
            reason: RefuseReason::Banned(_),
            ..
        })
    ));
    let later = t0 + Duration::from_secs(11);
    core.handle_timeout(later);
    let after = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(after, key(60), later);
    assert_eq!(
        events(&mut core),
        vec![CoreEvent::PeerUp {
            conn: after,
            key: key(60)
        }]
    );
}

#[test]
fn firewall_sees_key_and_address() {
    let t0 = Instant::now();
    let firewall: Firewall =
        Arc::new(|key: &PeerKey, addr: SocketAddr| key.as_bytes()[0] != 66 && addr.port() != 666);
    let mut core = ConnCore::new(
        key(50),
        PolicyConfig {
            firewall: Some(firewall),
            ..config()
        },
    );
    for (port, k, allowed) in [(1, 66, false), (666, 60, false), (2, 61, true)] {
        let i = core.handle_incoming(addr(port)).expect("accept");
        core.handle_established(i, key(k), t0);
        let evs = events(&mut core);
        if allowed {
            assert_eq!(
                evs,
                vec![CoreEvent::PeerUp {
                    conn: i,
                    key: key(k)
                }]
            );
        } else {
            assert_eq!(
                evs.first(),
                Some(&CoreEvent::Refused {
                    conn: i,
                    key: key(k),
                    reason: RefuseReason::Firewall
                })
            );
        }
    }
}

#[test]
fn backoff_per_address_with_jitter_then_drop() {
    let t0 = Instant::now();
    let run = |seed: u64| {
        let mut core = ConnCore::new(
            key(50),
            PolicyConfig {
                rng_seed: Some(seed),
                ..config()
            },
        );
        let mut now = t0;
        let mut waits = Vec::new();
        for base in [1u64, 5, 15] {
            let d = dial(&mut core, 1, None, now);
            core.handle_handshake_failed(d, DialError::Timeout, now);
            let Err(DialError::Backoff { retry_in }) = core.handle_dial(addr(1), None, now) else {
                panic!("expected backoff after a failure");
            };
            let base = Duration::from_secs(base);
            assert!(
                retry_in >= base.mul_f64(0.8) && retry_in <= base.mul_f64(1.2),
                "{retry_in:?}"
            );
            // Another address is not affected.
            assert!(matches!(
                core.handle_dial(addr(2), None, now),
                Ok(DialStart::Dial(_))
            ));
            let other = core.handle_dial(addr(2), None, now);
            assert!(
                matches!(other, Ok(DialStart::Wait(_))),
                "joins the dial in flight"
            );
            waits.push(retry_in);
            now += retry_in;
            core.conns.retain(|_, c| c.addr != addr(2));
        }
        let d = dial(&mut core, 1, None, now);
        core.handle_handshake_failed(d, DialError::Timeout, now);
        assert!(matches!(
            core.handle_dial(addr(1), None, now),
            Err(DialError::GaveUp { .. })
        ));
        now += config().drop_for;
        assert!(matches!(
            core.handle_dial(addr(1), None, now),
            Ok(DialStart::Dial(_))
        ));
        waits
    };
    assert_eq!(run(1), run(1), "same seed, same jitter");
    assert_ne!(run(1), run(2), "jitter depends on the seed");
}

#[test]
fn success_resets_backoff_and_waiters_share_the_outcome() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), config());
    let d = dial(&mut core, 1, Some(key(60)), t0);
    let Ok(DialStart::Wait(w)) = core.handle_dial(addr(9), Some(key(60)), t0) else {
        panic!("a second dial to a key being dialed waits");
    };
    core.handle_handshake_failed(d, DialError::Timeout, t0);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::DialDone {
                dial: d,
                result: Err(DialError::Timeout)
            },
            CoreEvent::DialDone {
                dial: w,
                result: Err(DialError::Timeout)
            },
        ]
    );
    let later = t0 + Duration::from_secs(2);
    let d = dial(&mut core, 1, Some(key(60)), later);
    core.handle_established(d, key(60), later);
    assert_eq!(core.backoff.len(), 0);
}

#[test]
fn remote_duplicate_close_of_an_up_connection_is_not_a_failure() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), config());
    let i = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(i, key(60), t0);
    events(&mut core);
    core.handle_closed(i, dup_close(), t0);
    assert_eq!(
        events(&mut core),
        vec![CoreEvent::PeerDown {
            conn: i,
            key: key(60),
            reason: DownReason::Duplicate
        }]
    );
}

#[test]
fn shutdown_closes_everything_and_answers_every_dial() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), config());
    let i = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(i, key(60), t0);
    let d = dial(&mut core, 2, None, t0);
    events(&mut core);
    core.shutdown();
    let evs = events(&mut core);
    assert!(evs.contains(&CoreEvent::Close {
        conn: i,
        reason: CloseReason::Shutdown
    }));
    assert!(evs.contains(&CoreEvent::DialDone {
        dial: d,
        result: Err(DialError::Shutdown)
    }));
    assert_eq!(
        core.handle_dial(addr(3), None, t0),
        Err(DialError::Shutdown)
    );
    assert!(core.handle_incoming(addr(3)).is_err());
}

#[test]
fn dial_closed_as_duplicate_in_its_handshake_waits_for_the_peers_connection() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(1), config());
    let d = dial(&mut core, 1, None, t0);
    core.handle_handshake_duplicate(d, Some(key(2)), dup_close(), t0);
    assert_eq!(events(&mut core), vec![]);
    assert_eq!(core.backoff.len(), 0, "a duplicate is not a failure");
    let i = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(i, key(2), t0);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::PeerUp {
                conn: i,
                key: key(2)
            },
            CoreEvent::DialDone {
                dial: d,
                result: Ok(key(2))
            },
        ]
    );
    // If the peer's connection never comes, the dial times out.
    let d = dial(&mut core, 3, Some(key(3)), t0);
    core.handle_handshake_duplicate(d, None, dup_close(), t0);
    let deadline = core.poll_timeout().expect("waiter deadline");
    assert_eq!(deadline, t0 + config().dial_wait);
    core.handle_timeout(deadline);
    assert_eq!(
        events(&mut core),
        vec![CoreEvent::DialDone {
            dial: d,
            result: Err(DialError::Timeout)
        }]
    );
}

#[test]
fn redial_of_a_connected_address_reuses_the_connection() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), config());
    // 90 dialed us from its one socket (port 1); discovery then finds port 1 again.
    let i = core.handle_incoming(addr(1)).expect("accept");
    core.handle_established(i, key(90), t0);
    events(&mut core);
    assert_eq!(
        core.handle_dial(addr(1), None, t0),
        Ok(DialStart::Connected(key(90)))
    );
    assert_eq!(
        core.handle_dial(addr(1), Some(key(90)), t0),
        Ok(DialStart::Connected(key(90)))
    );
    // Pinned to another key: that is a different peer, dial it (the handshake decides).
    assert!(matches!(
        core.handle_dial(addr(1), Some(key(91)), t0),
        Ok(DialStart::Dial(_))
    ));
    // A held connection at an address: the dial waits for it to settle.
    let d = dial(&mut core, 2, None, t0);
    core.handle_established(d, key(60), t0);
    let Ok(DialStart::Wait(w)) = core.handle_dial(addr(2), None, t0) else {
        panic!("expected to wait for the held connection");
    };
    core.handle_timeout(t0 + config().settle_window);
    let evs = events(&mut core);
    assert!(
        evs.contains(&CoreEvent::DialDone {
            dial: w,
            result: Ok(key(60))
        }),
        "{evs:?}"
    );
}

#[test]
fn a_pinned_dial_does_not_join_an_unpinned_one_to_the_same_address() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), config());
    let unpinned = dial(&mut core, 1, None, t0);
    // Pinned: a dial of its own (the pin must be checked in its handshake).
    let pinned = dial(&mut core, 1, Some(key(60)), t0);
    // Unpinned: joins the unpinned one in flight.
    let Ok(DialStart::Wait(joined)) = core.handle_dial(addr(1), None, t0) else {
        panic!("an unpinned dial joins the unpinned one in flight");
    };
    core.handle_established(unpinned, key(40), t0);
    core.handle_handshake_failed(
        pinned,
        DialError::KeyMismatch(crate::tls::KeyMismatch {
            expected: key(60),
            actual: key(40),
        }),
        t0,
    );
    let evs = events(&mut core);
    assert!(
        evs.contains(&CoreEvent::DialDone {
            dial: joined,
            result: Ok(key(40))
        }),
        "{evs:?}"
    );
    assert!(evs.iter().any(|e| matches!(e,
        CoreEvent::DialDone { dial, result: Err(DialError::KeyMismatch(_)) } if *dial == pinned)));
}
