//! Tests of the relay table and the circuit ends with virtual time.

use std::time::{Duration, Instant};

use super::circuit::{CircuitEnds, EndAction};
use super::relay::{CircuitEnd, RelayAction, RelayConfig, RelayTable, WireIds};
use crate::key::PeerKey;

fn key(n: u8) -> PeerKey {
    PeerKey::from_bytes([n; 32])
}

fn on() -> RelayConfig {
    RelayConfig {
        enabled: true,
        ..RelayConfig::default()
    }
}

const A: u8 = 1;
const B: u8 = 2;
const R: u8 = 5;

#[test]
fn a_circuit_opens_through_the_relay_and_is_spliced() {
    let now = Instant::now();
    let (mut a_ids, mut r_ids, mut b_ids) = (
        WireIds::new(key(A)),
        WireIds::new(key(R)),
        WireIds::new(key(B)),
    );
    let mut a = CircuitEnds::new(RelayConfig::default());
    let mut b = CircuitEnds::new(RelayConfig::default());
    let mut r = RelayTable::new(key(R), on());
    let mut a_out = Vec::new();
    let local_a = a.open(key(R), key(B), &mut a_ids, now, &mut a_out).unwrap();
    let [EndAction::Open {
        relay,
        wire,
        target,
    }] = a_out[..]
    else {
        panic!("{a_out:?}");
    };
    assert_eq!((relay, target), (key(R), key(B)));
    assert_eq!(wire % 2, 0, "a has the smaller key: even ids");
    let mut r_out = Vec::new();
    r.handle_open(
        (key(A), wire),
        key(B),
        true,
        true,
        &mut r_ids,
        now,
        &mut r_out,
    );
    let [RelayAction::Incoming {
        target: leg_b,
        from,
    }] = r_out[..]
    else {
        panic!("{r_out:?}");
    };
    assert_eq!(from, key(A));
    assert_eq!(leg_b.1 % 2, 1, "r has the greater key than b: odd ids");
    let mut b_out = Vec::new();
    b.handle_incoming(key(R), leg_b.1, key(A), &mut b_out);
    assert_eq!(
        b_out[0],
        EndAction::Accept {
            relay: key(R),
            wire: leg_b.1
        }
    );
    assert!(matches!(b_out[1], EndAction::Up { peer, opener: false, .. } if peer == key(A)));
    let mut r_out = Vec::new();
    r.handle_accept(leg_b, now, &mut r_out);
    assert_eq!(
        r_out,
        vec![
            RelayAction::Accepted {
                opener: (key(A), wire)
            },
            RelayAction::Splice {
                opener: (key(A), wire),
                target: leg_b,
                budget: on().max_circuit_bytes
            }
        ]
    );
    let mut a_out = Vec::new();
    a.handle_accept(key(R), wire, &mut a_out);
    assert_eq!(
        a_out,
        vec![EndAction::Up {
            local: local_a,
            relay: key(R),
            wire,
            peer: key(B),
            opener: true
        }]
    );
    assert_eq!(r.relayed, 1);
    // b closes: a is told, the splice ends.
    let mut r_out = Vec::new();
    r.handle_close(leg_b, CircuitEnd::Closed, &mut r_out);
    assert_eq!(
        r_out,
        vec![
            RelayAction::Close {
                leg: (key(A), wire),
                reason: CircuitEnd::Closed
            },
            RelayAction::Unsplice {
                opener: (key(A), wire),
                target: leg_b
            }
        ]
    );
    let _ = b_ids.allocate(key(R));
    assert!(r.is_empty());
}

#[test]
fn a_relay_refuses_when_off_unconnected_or_at_its_limits() {
    let now = Instant::now();
    let mut ids = WireIds::new(key(R));
    let refused = |r: &mut RelayTable,
                   ids: &mut WireIds,
                   opener: u8,
                   id: u64,
                   target: u8,
                   willing,
                   connected| {
        let mut out = Vec::new();
        r.handle_open(
            (key(opener), id),
            key(target),
            willing,
            connected,
            ids,
            now,
            &mut out,
        );
        match out[..] {
            [RelayAction::Close { reason, .. }] => Some(reason),
            _ => None,
        }
    };
    let mut off = RelayTable::new(key(R), RelayConfig::default());
    assert_eq!(
        refused(&mut off, &mut ids, A, 0, B, true, true),
        Some(CircuitEnd::NotRelaying)
    );
    let mut r = RelayTable::new(
        key(R),
        RelayConfig {
            max_circuits: 3,
            max_circuits_per_peer: 2,
            ..on()
        },
    );
    assert_eq!(
        refused(&mut r, &mut ids, A, 0, B, false, true),
        Some(CircuitEnd::NotRelaying)
    );
    assert_eq!(
        refused(&mut r, &mut ids, A, 0, B, true, false),
        Some(CircuitEnd::NotConnected)
    );
    assert_eq!(
        refused(&mut r, &mut ids, A, 0, A, true, true),
        Some(CircuitEnd::NotConnected)
    );
    assert_eq!(refused(&mut r, &mut ids, A, 0, B, true, true), None);
    assert_eq!(
        refused(&mut r, &mut ids, A, 0, B, true, true),
        Some(CircuitEnd::Refused),
        "same id"
    );
    assert_eq!(refused(&mut r, &mut ids, A, 2, B, true, true), None);
    assert_eq!(
        refused(&mut r, &mut ids, A, 4, 3, true, true),
        Some(CircuitEnd::Limit),
        "per peer"
    );
    assert_eq!(refused(&mut r, &mut ids, 6, 0, 3, true, true), None);
    assert_eq!(
        refused(&mut r, &mut ids, 7, 0, 8, true, true),
        Some(CircuitEnd::Limit),
        "in all"
    );
    assert_eq!(r.len(), 3);
}

#[test]
fn unanswered_and_expired_circuits_end_and_a_lost_peer_ends_its_circuits() {
    let now = Instant::now();
    let config = on();
    let (accept, lifetime) = (config.accept_timeout, config.circuit_lifetime);
    let mut ids = WireIds::new(key(R));
    let mut r = RelayTable::new(key(R), config);
    let mut out = Vec::new();
    r.handle_open((key(A), 0), key(B), true, true, &mut ids, now, &mut out);
    r.handle_open((key(A), 2), key(3), true, true, &mut ids, now, &mut out);
    let legs: Vec<_> = out
        .iter()
        .filter_map(|x| match x {
            RelayAction::Incoming { target, .. } => Some(*target),
            _ => None,
        })
        .collect();
    out.clear();
    r.handle_accept(legs[0], now, &mut out);
    out.clear();
    assert_eq!(r.poll_timeout(), Some(now + accept));
    r.handle_timeout(now + accept, &mut out);
    assert!(out.contains(&RelayAction::Close {
        leg: (key(A), 2),
        reason: CircuitEnd::Timeout
    }));
    out.clear();
    r.handle_timeout(now + lifetime, &mut out);
    assert!(out.contains(&RelayAction::Close {
        leg: (key(A), 0),
        reason: CircuitEnd::Expired
    }));
    assert!(out.contains(&RelayAction::Unsplice {
        opener: (key(A), 0),
        target: legs[0]
    }));
    assert!(r.is_empty());
    // A lost peer takes its circuits along; the byte budget ends one too.
    out.clear();
    r.handle_open((key(A), 4), key(B), true, true, &mut ids, now, &mut out);
    r.handle_open((key(6), 0), key(B), true, true, &mut ids, now, &mut out);
    assert_eq!(r.len(), 2);
    r.handle_peer_down(key(A), &mut out);
    assert_eq!(r.len(), 1);
    r.handle_exhausted((key(6), 0), &mut out);
    assert!(out.contains(&RelayAction::Close {
        leg: (key(6), 0),
        reason: CircuitEnd::ByteLimit
    }));
    assert!(r.is_empty());
}

#[test]
fn ends_refuse_when_told_to_and_give_up_unanswered_opens() {
    let now = Instant::now();
    let config = RelayConfig {
        accept_circuits: false,
        max_end_circuits: 1,
        ..RelayConfig::default()
    };
    let wait = config.accept_timeout;
    let mut ids = WireIds::new(key(A));
    let mut ends = CircuitEnds::new(config);
    let mut out = Vec::new();
    ends.handle_incoming(key(R), 1, key(B), &mut out);
    assert_eq!(
        out,
        vec![EndAction::Close {
            relay: key(R),
            wire: 1,
            reason: CircuitEnd::Refused
        }]
    );
    out.clear();
    let local = ends.open(key(R), key(B), &mut ids, now, &mut out).unwrap();
    assert!(
        ends.open(key(R), key(3), &mut ids, now, &mut out).is_none(),
        "max_end_circuits"
    );
    assert_eq!(ends.leg(local), Some((key(R), 0)));
    out.clear();
    ends.handle_timeout(now + wait + Duration::from_millis(1), &mut out);
    assert!(out.contains(&EndAction::Down {
        local,
        peer: key(B),
        reason: CircuitEnd::Timeout
    }));
    assert_eq!(ends.leg(local), None);
}
