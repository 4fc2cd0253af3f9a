//! Tests of `ConnCore` with virtual time: no sockets, no clock, seeded jitter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{ApplicationClose, ConnectionError};

use super::*;
use crate::error::CLOSE_DUPLICATE;
use crate::key::Identity;

pub(super) fn key(n: u8) -> PeerKey {
    PeerKey::from_bytes([n; 32])
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(super) fn config() -> PolicyConfig {
    PolicyConfig {
        rng_seed: Some(7),
        ..PolicyConfig::default()
    }
}

pub(super) fn events(core: &mut ConnCore) -> Vec<CoreEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn dup_close() -> ConnectionError {
    ConnectionError::ApplicationClosed(ApplicationClose {
        error_code: CLOSE_DUPLICATE,
        reason: b"duplicate".to_vec().into(),
    })
}

/// An incoming handshake from a validated address, which must be accepted.
pub(super) fn accept(core: &mut ConnCore, from: SocketAddr) -> ConnId {
    match core.handle_incoming(from, true) {
        Ok(IncomingStart::Accept(id)) => id,
        other => panic!("expected {from} to be accepted, got {other:?}"),
    }
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
    let i = accept(&mut core, addr(2));
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
        let s_y = accept(&mut s, addr(2));
        let g_x = accept(&mut g, addr(1));
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
    let i = accept(&mut core, addr(1));
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
    let new = accept(&mut core, addr(5));
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
            // We (9) commit to the connection 4 initiated, and tell it.
            CoreEvent::Confirm { conn: new },
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
    let new = accept(&mut core, addr(5));
    core.handle_established(new, key(4), t0);
    events(&mut core);
    // A third one while the probe runs is closed at once.
    let third = accept(&mut core, addr(6));
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
    let new = accept(&mut core, addr(5));
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
            CoreEvent::Confirm { conn: new },
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
    let i = accept(&mut core, addr(1));
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
    let i = accept(&mut core, addr(3));
    core.handle_established(i, key(60), t0);
    events(&mut core);
    assert_eq!(
        core.handle_dial(addr(4), None, t0),
        Err(DialError::Refused(RefuseReason::TooManyPeers(2)))
    );
    let third = accept(&mut core, addr(5));
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
    let dup = accept(&mut core, addr(6));
    core.handle_established(dup, key(60), t0);
    assert_eq!(events(&mut core), vec![CoreEvent::Probe { conn: i }]);
}

#[test]
fn bans_close_refuse_and_expire() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), config());
    let i = accept(&mut core, addr(1));
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
    let again = accept(&mut core, addr(1));
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
    let after = accept(&mut core, addr(1));
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
        let i = accept(&mut core, addr(port));
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
    let i = accept(&mut core, addr(1));
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
    let i = accept(&mut core, addr(1));
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
    assert!(core.handle_incoming(addr(3), true).is_err());
}

#[test]
fn dial_closed_as_duplicate_in_its_handshake_waits_for_the_peers_connection() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(1), config());
    let d = dial(&mut core, 1, None, t0);
    core.handle_handshake_duplicate(d, Some(key(2)), dup_close(), t0);
    assert_eq!(events(&mut core), vec![]);
    assert_eq!(core.backoff.len(), 0, "a duplicate is not a failure");
    let i = accept(&mut core, addr(1));
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
    let i = accept(&mut core, addr(1));
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

// ---- Confirmation by the greater key: the two cores of a pair, every interleaving ----

/// One side of the simulated pair: the smaller key or the greater key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Small,
    Great,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Small => Side::Great,
            Side::Great => Side::Small,
        }
    }
    fn ix(self) -> usize {
        self as usize
    }
}

/// What travels between the two cores (in any order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// A close of connection `p` (`dup`: as a duplicate) reaches `to`.
    Close { p: usize, to: Side, dup: bool },
    /// The greater side's confirmation of `p` reaches the smaller side.
    Confirm { p: usize },
    /// `side`'s probe of `p`, on its way to the peer.
    Probe { p: usize, side: Side },
    /// The answer to `side`'s probe of `p`: `alive` is what the peer's end of `p` was when
    /// the probe reached it (ACKed, or not: closed there).
    ProbeAnswer { p: usize, side: Side, alive: bool },
}

/// A planned `Dial` (issued at any point of the interleaving).
#[derive(Clone, Copy, Debug)]
struct Plan {
    from: Side,
    port: u16,
    pinned: bool,
}

/// One physical connection: its id on each side, who initiated it, how far it got.
#[derive(Clone, Debug)]
struct Phys {
    initiator: Side,
    ids: [ConnId; 2],
    established: [bool; 2],
    /// Gone on that side (closed, or its handshake ended).
    gone: [bool; 2],
    /// Closed by this side (its close is on the wire or delivered).
    closed_by: Option<Side>,
}

#[derive(Clone)]
struct World {
    cores: [ConnCore; 2],
    keys: [PeerKey; 2],
    phys: Vec<Phys>,
    wire: Vec<Wire>,
    plans: Vec<Option<Plan>>,
    ups: Vec<(Side, usize)>,
    downs: Vec<(Side, usize)>,
    timed_out: bool,
    /// Lossy mode: a settle window may end at any point, and confirmation datagrams may
    /// be lost.
    lossy: bool,
    /// Both sides were up before any settle window ended.
    fast: bool,
    now: Instant,
    trace: Vec<String>,
}

/// The port each side listens on (one socket per node); the greater side has a second
/// address, `GREAT_OTHER`.
fn port_of(side: Side) -> u16 {
    match side {
        Side::Small => 1,
        Side::Great => 2,
    }
}
const GREAT_OTHER: u16 = 3;

impl World {
    fn new(plans: &[Plan], lossy: bool) -> World {
        let keys = [key(1), key(2)];
        World {
            cores: [
                ConnCore::new(keys[0], config()),
                ConnCore::new(keys[1], config()),
            ],
            keys,
            phys: Vec::new(),
            wire: Vec::new(),
            plans: plans.iter().copied().map(Some).collect(),
            ups: Vec::new(),
            downs: Vec::new(),
            timed_out: false,
            lossy,
            fast: false,
            now: Instant::now(),
            trace: Vec::new(),
        }
    }

    fn phys_of(&self, side: Side, id: ConnId) -> usize {
        self.phys
            .iter()
            .position(|p| p.ids[side.ix()] == id)
            .unwrap_or_else(|| panic!("no connection {id} on {side:?}: {:?}", self.trace))
    }

    /// Every action possible now: (description, action).
    fn actions(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for (i, plan) in self.plans.iter().enumerate() {
            if plan.is_some() {
                out.push(Action::Dial(i));
            }
        }
        for (p, phys) in self.phys.iter().enumerate() {
            for side in [Side::Small, Side::Great] {
                // The client finishes its handshake first; the server after it.
                let client_first = side == phys.initiator || phys.established[phys.initiator.ix()];
                if !phys.established[side.ix()] && !phys.gone[side.ix()] && client_first {
                    out.push(Action::Establish(p, side));
                }
            }
        }
        for (i, wire) in self.wire.iter().enumerate() {
            let ready = match *wire {
                // A datagram is read once the handshake is done on the smaller side.
                Wire::Confirm { p } => self.phys[p].established[Side::Small.ix()],
                _ => true,
            };
            if ready {
                out.push(Action::Deliver(i));
            }
            if self.lossy && matches!(wire, Wire::Confirm { .. }) {
                // Datagrams are unreliable.
                out.push(Action::Lose(i));
            }
        }
        if self.lossy {
            // A loaded machine or a slow network: a settle window may end at any point.
            // (Only settle windows: the dial waits are far longer.)
            let window_end = self.now + config().settle_window;
            for side in [Side::Small, Side::Great] {
                if self.cores[side.ix()]
                    .poll_timeout()
                    .is_some_and(|t| t <= window_end)
                {
                    out.push(Action::TimeoutOf(side));
                }
            }
        } else if out.is_empty() && !self.timed_out {
            // The network is faster than the settle window: the windows end only when
            // nothing else can happen.
            out.push(Action::Timeout);
        }
        out
    }

    fn apply(&mut self, action: Action) {
        self.trace.push(format!("{action:?}"));
        match action {
            Action::Dial(i) => {
                let plan = self.plans[i].take().expect("planned");
                let to = if plan.from == Side::Small {
                    Side::Great
                } else {
                    Side::Small
                };
                let pin = plan.pinned.then_some(self.keys[to.ix()]);
                let now = self.now;
                match self.cores[plan.from.ix()].handle_dial(addr(plan.port), pin, now) {
                    Ok(DialStart::Dial(id)) => {
                        let accept = accept(&mut self.cores[to.ix()], addr(port_of(plan.from)));
                        let mut ids = [id, id];
                        ids[to.ix()] = accept;
                        self.phys.push(Phys {
                            initiator: plan.from,
                            ids,
                            established: [false; 2],
                            gone: [false; 2],
                            closed_by: None,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => panic!("dial refused: {e} in {:?}", self.trace),
                }
                self.drain(plan.from);
            }
            Action::Establish(p, side) => {
                self.phys[p].established[side.ix()] = true;
                let (id, remote) = (self.phys[p].ids[side.ix()], self.keys[side.other().ix()]);
                let now = self.now;
                self.cores[side.ix()].handle_established(id, remote, now);
                self.drain(side);
            }
            Action::Deliver(i) => {
                let wire = self.wire.remove(i);
                let now = self.now;
                match wire {
                    Wire::Close { p, to, dup } => {
                        if self.phys[p].gone[to.ix()] {
                            return;
                        }
                        self.phys[p].gone[to.ix()] = true;
                        let id = self.phys[p].ids[to.ix()];
                        let error = if dup {
                            dup_close()
                        } else {
                            ConnectionError::ApplicationClosed(ApplicationClose {
                                error_code: crate::error::CLOSE_REPLACED,
                                reason: b"replaced".to_vec().into(),
                            })
                        };
                        let core = &mut self.cores[to.ix()];
                        if self.phys[p].established[to.ix()] {
                            core.handle_closed(id, error, now);
                        } else if to == self.phys[p].initiator && dup {
                            let remote = self.keys[to.other().ix()];
                            core.handle_handshake_duplicate(id, Some(remote), error, now);
                        } else {
                            core.handle_handshake_failed(id, DialError::Connection(error), now);
                        }
                        self.drain(to);
                    }
                    Wire::Confirm { p } => {
                        let id = self.phys[p].ids[Side::Small.ix()];
                        self.cores[Side::Small.ix()].handle_confirmed(id, now);
                        self.drain(Side::Small);
                    }
                    Wire::Probe { p, side } => {
                        // The peer ACKs it unless its end is closed already.
                        let alive = !self.phys[p].gone[side.other().ix()];
                        self.wire.push(Wire::ProbeAnswer { p, side, alive });
                    }
                    Wire::ProbeAnswer { p, side, alive } => {
                        let id = self.phys[p].ids[side.ix()];
                        self.cores[side.ix()].handle_probe_result(id, alive, now);
                        self.drain(side);
                    }
                }
            }
            Action::Lose(i) => {
                self.wire.remove(i);
            }
            Action::TimeoutOf(side) => {
                // The windows open on this side end (virtual time stands still otherwise).
                let later = self.now + config().settle_window;
                self.cores[side.ix()].handle_timeout(later);
                self.drain(side);
            }
            Action::Timeout => {
                self.timed_out = true;
                let k = self.keys;
                self.fast = self.cores[0].up(&k[1]).is_some() && self.cores[1].up(&k[0]).is_some();
                let later = self.now + config().settle_window;
                for side in [Side::Small, Side::Great] {
                    self.cores[side.ix()].handle_timeout(later);
                    self.drain(side);
                }
            }
        }
    }

    fn drain(&mut self, side: Side) {
        while let Some(ev) = self.cores[side.ix()].poll_event() {
            match ev {
                CoreEvent::PeerUp { conn, .. } => {
                    let p = self.phys_of(side, conn);
                    self.ups.push((side, p));
                }
                CoreEvent::PeerDown { conn, .. } => {
                    let p = self.phys_of(side, conn);
                    self.downs.push((side, p));
                }
                CoreEvent::Close { conn, reason } => {
                    let p = self.phys_of(side, conn);
                    self.phys[p].gone[side.ix()] = true;
                    self.phys[p].closed_by.get_or_insert(side);
                    let dup = reason == CloseReason::Duplicate;
                    self.wire.push(Wire::Close {
                        p,
                        to: side.other(),
                        dup,
                    });
                }
                CoreEvent::Confirm { conn } => {
                    assert_eq!(side, Side::Great, "only the greater key confirms");
                    let p = self.phys_of(side, conn);
                    assert_eq!(self.phys[p].initiator, Side::Small);
                    self.wire.push(Wire::Confirm { p });
                }
                CoreEvent::Probe { conn } => {
                    let p = self.phys_of(side, conn);
                    self.wire.push(Wire::Probe { p, side });
                }
                CoreEvent::Refused { .. } => panic!("refused in {:?}", self.trace),
                CoreEvent::DialDone { result, .. } => {
                    assert!(result.is_ok(), "dial failed {result:?} in {:?}", self.trace);
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Dial(usize),
    Establish(usize, Side),
    Deliver(usize),
    /// A confirmation datagram on the wire is lost (lossy mode).
    Lose(usize),
    /// One side's settle windows end (lossy mode).
    TimeoutOf(Side),
    Timeout,
}

/// Runs every interleaving of `plans` (dials issued at any moment, handshakes finishing,
/// closes, confirmations and probe answers arriving in any order; settle windows ending
/// only when nothing else can happen, no datagram lost: the confirmation path; see
/// `check_converges_when_lossy` for the rest) and checks each end state: both sides have the same
/// one connection up, no other connection was ever up on either side, no `PeerDown`, and,
/// when `fast`, both were up before any settle window ended. Returns how many end states
/// were checked.
fn check_every_order(plans: &[Plan], fast: bool) -> usize {
    fn walk(world: World, fast: bool, ends: &mut usize) {
        let actions = world.actions();
        if actions.is_empty() {
            *ends += 1;
            let (s, g) = (&world.cores[0], &world.cores[1]);
            let up_s = s.up(&world.keys[1]).expect("small side up");
            let up_g = g.up(&world.keys[0]).expect("great side up");
            let p = world.phys_of(Side::Small, up_s);
            assert_eq!(world.phys_of(Side::Great, up_g), p, "{:?}", world.trace);
            assert!(
                world.ups.iter().all(|(_, q)| *q == p),
                "a loser went up: {:?} in {:?}",
                world.ups,
                world.trace
            );
            assert_eq!(world.ups.len(), 2, "{:?}", world.trace);
            assert_eq!(world.downs, vec![], "{:?}", world.trace);
            if fast {
                assert!(
                    world.fast,
                    "waited for the settle window: {:?}",
                    world.trace
                );
            }
            return;
        }
        for action in actions {
            let mut next = world.clone();
            next.apply(action);
            walk(next, fast, ends);
        }
    }
    let mut ends = 0;
    walk(World::new(plans, false), fast, &mut ends);
    ends
}

/// Like `check_every_order`, on a lossy, slow world: any confirmation datagram may be
/// lost, and a settle window may end at any point (before or after any delivery), with
/// each probe answered by what the peer's end was when the probe reached it. Checks only
/// convergence: at every end state both sides are up on the same one connection (a loser
/// may have gone up for a while, with its `PeerDown` followed by the survivor's `PeerUp`).
/// Returns how many end states were checked.
fn check_converges_when_lossy(plans: &[Plan]) -> usize {
    fn walk(world: World, ends: &mut usize) {
        let actions = world.actions();
        if actions.is_empty() {
            *ends += 1;
            let (s, g) = (&world.cores[0], &world.cores[1]);
            let up_s = s.up(&world.keys[1]);
            let up_g = g.up(&world.keys[0]);
            let (Some(up_s), Some(up_g)) = (up_s, up_g) else {
                panic!(
                    "not up on both sides (small {up_s:?}, great {up_g:?}): {:?}",
                    world.trace
                );
            };
            let p = world.phys_of(Side::Small, up_s);
            assert_eq!(world.phys_of(Side::Great, up_g), p, "{:?}", world.trace);
            // Nothing else is left on either side.
            assert_eq!(s.conns.len(), 1, "{:?}", world.trace);
            assert_eq!(g.conns.len(), 1, "{:?}", world.trace);
            return;
        }
        for action in actions {
            let mut next = world.clone();
            next.apply(action);
            walk(next, ends);
        }
    }
    let mut ends = 0;
    walk(World::new(plans, true), &mut ends);
    ends
}

/// Every plan of the tests above, with lost confirmations and settle windows that end at
/// any point: both sides still end on the same one connection (review finding: a lost
/// confirmation left both sides without a connection).
#[test]
fn lost_confirmations_and_early_windows_still_converge() {
    let s = |port, pinned| Plan {
        from: Side::Small,
        port,
        pinned,
    };
    let g = |pinned| Plan {
        from: Side::Great,
        port: 1,
        pinned,
    };
    let sets: Vec<Vec<Plan>> = vec![
        vec![s(2, false)],
        vec![g(false)],
        vec![s(2, false), g(false)],
        vec![s(2, true), g(true)],
        vec![s(2, false), g(true)],
        vec![s(2, true), g(false)],
        vec![s(2, false), s(GREAT_OTHER, false)],
        vec![s(2, true), s(GREAT_OTHER, false)],
    ];
    for plans in sets {
        let ends = check_converges_when_lossy(&plans);
        assert!(ends > 0, "{plans:?}");
    }
}

#[test]
fn smaller_key_dialing_alone_is_confirmed_without_the_settle_window() {
    let ends = check_every_order(
        &[Plan {
            from: Side::Small,
            port: 2,
            pinned: false,
        }],
        true,
    );
    assert!(ends > 0);
}

#[test]
fn greater_key_dialing_alone_is_up_at_once() {
    check_every_order(
        &[Plan {
            from: Side::Great,
            port: 1,
            pinned: false,
        }],
        true,
    );
}

/// Both sides dial (the greater side's dial issued before, during or after the smaller
/// side's handshake), pinned or not: one connection, the same on both sides, never a
/// loser up, and no settle window waited for.
#[test]
fn both_dialing_converge_without_the_settle_window_in_every_order() {
    for (pin_s, pin_g) in [(false, false), (true, true), (false, true), (true, false)] {
        let ends = check_every_order(
            &[
                Plan {
                    from: Side::Small,
                    port: 2,
                    pinned: pin_s,
                },
                Plan {
                    from: Side::Great,
                    port: 1,
                    pinned: pin_g,
                },
            ],
            true,
        );
        assert!(ends > 24, "{ends} end states");
    }
}

/// The smaller side dials two addresses of the greater one at once: the greater side
/// keeps the first it sees and confirms it; the smaller keeps that one too.
#[test]
fn two_dials_of_the_smaller_key_keep_the_one_the_greater_confirmed() {
    check_every_order(
        &[
            Plan {
                from: Side::Small,
                port: 2,
                pinned: false,
            },
            Plan {
                from: Side::Small,
                port: GREAT_OTHER,
                pinned: false,
            },
        ],
        true,
    );
}

#[test]
fn greater_side_commits_and_confirms_only_without_a_dial_of_its_own() {
    let t0 = Instant::now();
    let mut g = ConnCore::new(key(9), config());
    // 4 dials us; we dial nobody: committed, confirmed, up.
    let i = accept(&mut g, addr(1));
    g.handle_established(i, key(4), t0);
    assert_eq!(
        events(&mut g),
        vec![
            CoreEvent::Confirm { conn: i },
            CoreEvent::PeerUp {
                conn: i,
                key: key(4)
            }
        ]
    );
    // Committed: a later dial to its key or address uses it.
    assert_eq!(
        g.handle_dial(addr(1), None, t0),
        Ok(DialStart::Connected(key(4)))
    );
    assert_eq!(
        g.handle_dial(addr(7), Some(key(4)), t0),
        Ok(DialStart::Connected(key(4)))
    );
    // 5 dials us while our dial to its address is in flight: held, no confirmation.
    let d = dial(&mut g, 2, None, t0);
    let j = accept(&mut g, addr(2));
    g.handle_established(j, key(5), t0);
    assert_eq!(events(&mut g), vec![]);
    // Our dial fails: nothing of ours can win any more, so we commit at once.
    g.handle_handshake_failed(d, DialError::Timeout, t0);
    let evs = events(&mut g);
    assert!(evs.contains(&CoreEvent::Confirm { conn: j }), "{evs:?}");
    assert!(
        evs.contains(&CoreEvent::PeerUp {
            conn: j,
            key: key(5)
        }),
        "{evs:?}"
    );
    // 6 dials us while our dial pinned to 6 (another address) is in flight: held.
    let _pinned = dial(&mut g, 8, Some(key(6)), t0);
    let k = accept(&mut g, addr(3));
    g.handle_established(k, key(6), t0);
    assert_eq!(events(&mut g), vec![]);
    // The settle window ends first: up, and confirmed (the peer may still be holding).
    g.handle_timeout(t0 + config().settle_window);
    let evs = events(&mut g);
    assert_eq!(
        &evs[..2],
        &[
            CoreEvent::Confirm { conn: k },
            CoreEvent::PeerUp {
                conn: k,
                key: key(6)
            }
        ]
    );
}

#[test]
fn smaller_side_falls_back_to_the_settle_window_without_confirmation() {
    let t0 = Instant::now();
    let mut s = ConnCore::new(key(1), config());
    let d = dial(&mut s, 2, None, t0);
    s.handle_established(d, key(2), t0);
    assert_eq!(events(&mut s), vec![]);
    // A peer without the rule (or a lost datagram): up when the window ends.
    let settle = config().settle_window;
    assert_eq!(s.poll_timeout(), Some(t0 + settle));
    s.handle_timeout(t0 + settle);
    assert_eq!(
        events(&mut s),
        vec![
            CoreEvent::PeerUp {
                conn: d,
                key: key(2)
            },
            CoreEvent::DialDone {
                dial: d,
                result: Ok(key(2))
            },
        ]
    );
    // A confirmation that arrives late changes nothing.
    s.handle_confirmed(d, t0 + settle * 2);
    assert_eq!(events(&mut s), vec![]);
}

#[test]
fn confirmations_that_do_not_apply_are_ignored() {
    let t0 = Instant::now();
    // From a smaller key: it is not the one that decides.
    let mut g = ConnCore::new(key(9), config());
    let d = dial(&mut g, 1, None, t0);
    g.handle_established(d, key(4), t0);
    events(&mut g);
    g.handle_confirmed(d, t0);
    assert_eq!(events(&mut g), vec![]);
    // On a connection the greater key initiated (up already) or still in its handshake.
    let mut s = ConnCore::new(key(1), config());
    let i = accept(&mut s, addr(2));
    s.handle_established(i, key(2), t0);
    events(&mut s);
    s.handle_confirmed(i, t0);
    let h = dial(&mut s, 3, None, t0);
    s.handle_confirmed(h, t0);
    s.handle_confirmed(ConnId(999), t0);
    assert_eq!(events(&mut s), vec![]);
    assert_eq!(s.up(&key(2)), Some(i));
}

/// The greater peer restarted: we (smaller) still hold the old connection up and dial
/// its new address; the new one waits as a candidate (the greater side decides between
/// two of ours, no probe of ours); the restarted peer has no connection to us, commits
/// to the new one and confirms it, which replaces the old one at once.
#[test]
fn confirmation_of_a_challenger_replaces_the_old_connection_at_once() {
    let t0 = Instant::now();
    let mut s = ConnCore::new(key(1), config());
    let old = dial(&mut s, 2, None, t0);
    s.handle_established(old, key(2), t0);
    s.handle_confirmed(old, t0);
    events(&mut s);
    let new = dial(&mut s, 5, None, t0);
    s.handle_established(new, key(2), t0);
    assert_eq!(
        events(&mut s),
        vec![
            // The key is up: the dial has its answer.
            CoreEvent::DialDone {
                dial: new,
                result: Ok(key(2))
            },
        ]
    );
    s.handle_confirmed(new, t0);
    assert_eq!(
        events(&mut s),
        vec![
            CoreEvent::PeerDown {
                conn: old,
                key: key(2),
                reason: DownReason::Replaced
            },
            CoreEvent::Close {
                conn: old,
                reason: CloseReason::Replaced
            },
            CoreEvent::PeerUp {
                conn: new,
                key: key(2)
            },
        ]
    );
    // A repeat of the confirmation changes nothing.
    s.handle_confirmed(new, t0);
    assert_eq!(events(&mut s), vec![]);
    assert_eq!(s.up(&key(2)), Some(new));
}

/// Our settle window ends without a confirmation while a second dial of ours waits as a
/// candidate: the held one goes up and the candidate stays; when the peer closes the one
/// that is up (it had committed to the candidate, its confirmation lost), we end on the
/// candidate; a candidate the peer neither confirms nor closes goes after `dial_wait`.
#[test]
fn unconfirmed_window_keeps_the_candidate_until_the_peer_decides() {
    let t0 = Instant::now();
    let settle = config().settle_window;
    let mut s = ConnCore::new(key(1), config());
    let held = dial(&mut s, 2, None, t0);
    let cand = dial(&mut s, 3, None, t0);
    s.handle_established(held, key(2), t0);
    s.handle_established(cand, key(2), t0);
    assert_eq!(events(&mut s), vec![]);
    s.handle_timeout(t0 + settle);
    let evs = events(&mut s);
    assert!(
        evs.contains(&CoreEvent::PeerUp {
            conn: held,
            key: key(2)
        }),
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, CoreEvent::Close { conn, .. } if *conn == cand)),
        "{evs:?}"
    );
    s.handle_closed(held, dup_close(), t0 + settle);
    assert_eq!(
        events(&mut s),
        vec![
            CoreEvent::PeerDown {
                conn: held,
                key: key(2),
                reason: DownReason::Duplicate
            },
            CoreEvent::PeerUp {
                conn: cand,
                key: key(2)
            },
        ]
    );
    assert_eq!(s.up(&key(2)), Some(cand));
    assert_eq!(s.poll_timeout(), None);

    // Neither confirmed nor closed: the candidate is closed at `dial_wait`.
    let mut s = ConnCore::new(key(1), config());
    let held = dial(&mut s, 2, None, t0);
    let cand = dial(&mut s, 3, None, t0);
    s.handle_established(held, key(2), t0);
    s.handle_established(cand, key(2), t0);
    s.handle_timeout(t0 + settle);
    events(&mut s);
    let wait = config().dial_wait;
    assert_eq!(s.poll_timeout(), Some(t0 + wait));
    s.handle_timeout(t0 + wait);
    assert_eq!(
        events(&mut s),
        vec![CoreEvent::Close {
            conn: cand,
            reason: CloseReason::Duplicate
        }]
    );
    assert_eq!(s.up(&key(2)), Some(held));
    assert_eq!(s.poll_timeout(), None);
}

// Slot exhaustion on the open network: address validation, per-address caps, slots
// reserved for our dials, eviction of idle inbound peers.

fn at(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn at6(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ipv6"), port)
}

/// An inbound peer `key` from `from`, accepted and established at `now`: up at once
/// (every test key of an inbound peer is greater than ours, `key(50)`).
fn inbound_up(core: &mut ConnCore, from: SocketAddr, peer: PeerKey, now: Instant) -> ConnId {
    let id = accept(core, from);
    core.handle_established(id, peer, now);
    assert_eq!(
        events(core),
        vec![CoreEvent::PeerUp {
            conn: id,
            key: peer
        }],
        "inbound {} from {from}",
        peer.fmt_short()
    );
    id
}

fn evicted(conn: ConnId, peer: PeerKey) -> [CoreEvent; 2] {
    [
        CoreEvent::PeerDown {
            conn,
            key: peer,
            reason: DownReason::Evicted,
        },
        CoreEvent::Close {
            conn,
            reason: CloseReason::Evicted,
        },
    ]
}

fn slots(max_peers: usize, reserved_outbound: usize) -> PolicyConfig {
    PolicyConfig {
        max_peers,
        reserved_outbound,
        eviction_grace: Duration::from_secs(10),
        ..config()
    }
}

#[test]
fn unvalidated_handshakes_are_retried_only_above_the_threshold() {
    let mut core = ConnCore::new(
        key(50),
        PolicyConfig {
            retry_above: 2,
            max_pending_accepts: 4,
            ..config()
        },
    );
    // Below the threshold no retry: it would cost an honest peer a round trip.
    for port in 1..=2 {
        assert!(matches!(
            core.handle_incoming(at([10, 0, 0, port as u8], port), false),
            Ok(IncomingStart::Accept(_))
        ));
    }
    // At the threshold: retried, and nothing is kept for it.
    assert_eq!(
        core.handle_incoming(at([10, 0, 0, 3], 3), false),
        Ok(IncomingStart::Retry)
    );
    // The same peer back with its retry token (validated) is accepted, up to the cap.
    accept(&mut core, at([10, 0, 0, 3], 3));
    accept(&mut core, at([10, 0, 0, 4], 4));
    assert_eq!(
        core.handle_incoming(at([10, 0, 0, 5], 5), true),
        Err(RefuseReason::TooManyPending(4))
    );
    // An unvalidated one is still only retried (a retry holds nothing).
    assert_eq!(
        core.handle_incoming(at([10, 0, 0, 5], 5), false),
        Ok(IncomingStart::Retry)
    );
}

#[test]
fn pending_handshakes_are_capped_per_address_and_ipv6_per_64() {
    let mut core = ConnCore::new(
        key(50),
        PolicyConfig {
            max_pending_per_ip: 2,
            ..config()
        },
    );
    let a = [192, 0, 2, 1];
    accept(&mut core, at(a, 1));
    accept(&mut core, at(a, 2));
    assert_eq!(
        core.handle_incoming(at(a, 3), true),
        Err(RefuseReason::TooManyPendingFromIp(2))
    );
    // Not validated: the address may be spoofed, so it is asked to prove it instead of
    // being refused in the name of whoever holds it.
    assert_eq!(
        core.handle_incoming(at(a, 3), false),
        Ok(IncomingStart::Retry)
    );
    // Another address is not affected.
    accept(&mut core, at([192, 0, 2, 2], 1));
    // IPv6: one /64 is one group; the next /64 is another; a v4-mapped address is its
    // IPv4 address.
    accept(&mut core, at6("2001:db8:0:1::1", 1));
    accept(&mut core, at6("2001:db8:0:1:ffff::2", 1));
    assert_eq!(
        core.handle_incoming(at6("2001:db8:0:1:1:2:3:4", 1), true),
        Err(RefuseReason::TooManyPendingFromIp(2))
    );
    accept(&mut core, at6("2001:db8:0:2::1", 1));
    assert_eq!(
        core.handle_incoming(at6("::ffff:192.0.2.1", 9), true),
        Err(RefuseReason::TooManyPendingFromIp(2))
    );
    // Unvalidated handshakes from one address count too, and past the cap are retried:
    // validated ones are refused only for validated ones.
    let b = [198, 51, 100, 7];
    assert!(matches!(
        core.handle_incoming(at(b, 1), false),
        Ok(IncomingStart::Accept(_))
    ));
    assert!(matches!(
        core.handle_incoming(at(b, 2), false),
        Ok(IncomingStart::Accept(_))
    ));
    assert_eq!(
        core.handle_incoming(at(b, 3), false),
        Ok(IncomingStart::Retry)
    );
    accept(&mut core, at(b, 3));
}

#[test]
fn inbound_peers_are_capped_per_address_our_dials_are_not() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(
        key(50),
        PolicyConfig {
            max_peers_per_ip: 2,
            ..config()
        },
    );
    let a = [192, 0, 2, 1];
    inbound_up(&mut core, at(a, 1), key(60), t0);
    inbound_up(&mut core, at(a, 2), key(61), t0);
    let third = accept(&mut core, at(a, 3));
    core.handle_established(third, key(62), t0);
    let reason = RefuseReason::TooManyPeersFromIp(2);
    assert_eq!(
        events(&mut core),
        vec![
            CoreEvent::Refused {
                conn: third,
                key: key(62),
                reason: reason.clone()
            },
            CoreEvent::Close {
                conn: third,
                reason: CloseReason::Refused(reason)
            },
        ]
    );
    assert_eq!(
        reason_text(&RefuseReason::TooManyPeersFromIp(2)),
        "too many peers from address"
    );
    // Another address is not affected, and neither is our dial to the full one.
    inbound_up(&mut core, at([192, 0, 2, 2], 1), key(63), t0);
    let d = match core.handle_dial(at(a, 4), None, t0) {
        Ok(DialStart::Dial(id)) => id,
        other => panic!("dial refused: {other:?}"),
    };
    core.handle_established(d, key(1), t0);
    assert!(core.up(&key(1)).is_some());
}

fn reason_text(reason: &RefuseReason) -> String {
    let (_, text) = CloseReason::Refused(reason.clone()).code_and_text();
    String::from_utf8_lossy(text).into_owned()
}

#[test]
fn inbound_peers_leave_the_reserved_slots_to_our_dials() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), slots(4, 2));
    inbound_up(&mut core, addr(1), key(60), t0);
    inbound_up(&mut core, addr(2), key(61), t0);
    // Within the grace period nobody is evictable: the third inbound peer is refused.
    let third = accept(&mut core, addr(3));
    core.handle_established(third, key(62), t0);
    assert_eq!(
        events(&mut core)[0],
        CoreEvent::Refused {
            conn: third,
            key: key(62),
            reason: RefuseReason::TooManyInbound(2)
        }
    );
    assert_eq!(
        reason_text(&RefuseReason::TooManyInbound(2)),
        "too many peers"
    );
    // Our dials take the two reserved slots; a third finds the table full.
    for (port, peer) in [(10, key(1)), (11, key(2))] {
        let d = dial(&mut core, port, None, t0);
        core.handle_established(d, peer, t0);
        assert!(core.up(&peer).is_some());
    }
    events(&mut core);
    assert_eq!(
        core.handle_dial(addr(12), None, t0),
        Err(DialError::Refused(RefuseReason::TooManyPeers(4)))
    );
    // At most half the table is reserved, whatever the configuration says.
    let mut small = ConnCore::new(key(50), slots(4, 100));
    inbound_up(&mut small, addr(1), key(60), t0);
    inbound_up(&mut small, addr(2), key(61), t0);
    let third = accept(&mut small, addr(3));
    small.handle_established(third, key(62), t0);
    assert!(matches!(
        events(&mut small)[0],
        CoreEvent::Refused {
            reason: RefuseReason::TooManyInbound(2),
            ..
        }
    ));
}

#[test]
fn idle_inbound_peers_are_evicted_after_the_grace_period_longest_idle_first() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    // Three inbound slots (one reserved of four).
    let mut core = ConnCore::new(key(50), slots(4, 1));
    let a = inbound_up(&mut core, addr(1), key(60), t0);
    let b = inbound_up(&mut core, addr(2), key(61), t0 + s);
    let c = inbound_up(&mut core, addr(3), key(62), t0 + 2 * s);
    assert!(core.handle_activity(key(60), true, t0 + 3 * s));
    // Within everyone's grace period: a newcomer is refused, nobody is evicted.
    let d = accept(&mut core, addr(4));
    core.handle_established(d, key(63), t0 + 5 * s);
    assert!(matches!(
        events(&mut core)[0],
        CoreEvent::Refused {
            reason: RefuseReason::TooManyInbound(3),
            ..
        }
    ));
    // b's grace ends at 11 s, c's at 12 s; a is active. At 11 s only b may go.
    let d = accept(&mut core, addr(4));
    core.handle_established(d, key(63), t0 + 11 * s);
    let mut want = evicted(b, key(61)).to_vec();
    want.push(CoreEvent::PeerUp {
        conn: d,
        key: key(63),
    });
    assert_eq!(events(&mut core), want);
    assert_eq!(core.up(&key(61)), None);
    // a marked idle at 13 s has been idle for less time than c (idle since 2 s): c goes.
    assert!(core.handle_activity(key(60), false, t0 + 13 * s));
    let e = accept(&mut core, addr(5));
    core.handle_established(e, key(64), t0 + 14 * s);
    assert_eq!(events(&mut core)[..2], evicted(c, key(62)));
    // Then a (d and e are in their grace period).
    let f = accept(&mut core, addr(6));
    core.handle_established(f, key(65), t0 + 15 * s);
    assert_eq!(events(&mut core)[..2], evicted(a, key(60)));
    assert!(core.up(&key(63)).is_some() && core.up(&key(64)).is_some());
    // Marking a peer that is not connected says so.
    assert!(!core.handle_activity(key(60), true, t0 + 16 * s));
}

#[test]
fn our_dial_evicts_an_idle_inbound_peer_when_the_table_is_full() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let mut core = ConnCore::new(key(50), slots(3, 1));
    let a = inbound_up(&mut core, addr(1), key(60), t0);
    inbound_up(&mut core, addr(2), key(61), t0 + s);
    let x = dial(&mut core, 10, None, t0);
    core.handle_established(x, key(1), t0);
    events(&mut core);
    // Full, and nobody past the grace period: our dial is refused before any packet.
    assert_eq!(
        core.handle_dial(addr(11), None, t0 + 2 * s),
        Err(DialError::Refused(RefuseReason::TooManyPeers(3)))
    );
    // b is active; a is idle past its grace period: one dial may go, not two.
    assert!(core.handle_activity(key(61), true, t0 + 2 * s));
    let y = dial(&mut core, 11, None, t0 + 11 * s);
    assert_eq!(
        core.handle_dial(addr(12), None, t0 + 11 * s),
        Err(DialError::Refused(RefuseReason::TooManyPeers(3)))
    );
    core.handle_established(y, key(2), t0 + 11 * s);
    let mut want = evicted(a, key(60)).to_vec();
    want.extend([
        CoreEvent::PeerUp {
            conn: y,
            key: key(2),
        },
        CoreEvent::DialDone {
            dial: y,
            result: Ok(key(2)),
        },
    ]);
    assert_eq!(events(&mut core), want);
    // Our own connections are never evicted: the table is full of them and an active
    // peer, and the next dial is refused.
    assert_eq!(
        core.handle_dial(addr(12), None, t0 + 100 * s),
        Err(DialError::Refused(RefuseReason::TooManyPeers(3)))
    );
}

#[test]
fn a_reconnected_peer_starts_idle() {
    let t0 = Instant::now();
    let s = Duration::from_secs(1);
    let mut core = ConnCore::new(key(50), slots(2, 1));
    let a = inbound_up(&mut core, addr(1), key(60), t0);
    assert!(core.handle_activity(key(60), true, t0));
    core.handle_closed(a, ConnectionError::TimedOut, t0 + s);
    events(&mut core);
    // Back on a new connection: not active until the layer above says so again.
    inbound_up(&mut core, addr(1), key(60), t0 + 2 * s);
    let b = accept(&mut core, addr(2));
    core.handle_established(b, key(61), t0 + 13 * s);
    let evicted_a = events(&mut core);
    assert!(
        matches!(
            evicted_a[0],
            CoreEvent::PeerDown {
                reason: DownReason::Evicted,
                key: k,
                ..
            } if k == key(60)
        ),
        "{evicted_a:?}"
    );
}

#[test]
fn an_evicted_peer_sees_a_refusal_and_backs_off() {
    let t0 = Instant::now();
    let mut core = ConnCore::new(key(50), config());
    // We (50) dial 40: we initiated with the greater key, up at once.
    let d = dial(&mut core, 1, None, t0);
    core.handle_established(d, key(40), t0);
    events(&mut core);
    let (code, text) = CloseReason::Evicted.code_and_text();
    assert_eq!(text, b"evicted: peer table full");
    core.handle_closed(
        d,
        ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: code,
            reason: text.to_vec().into(),
        }),
        t0,
    );
    assert_eq!(
        events(&mut core),
        vec![CoreEvent::PeerDown {
            conn: d,
            key: key(40),
            reason: DownReason::RefusedByPeer("evicted: peer table full".into()),
        }]
    );
    assert!(matches!(
        core.handle_dial(addr(1), None, t0),
        Err(DialError::Backoff { .. })
    ));
}
