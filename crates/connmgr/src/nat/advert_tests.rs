//! Tests of advertising through relays (`advert`) with virtual time: offers,
//! registrations, `Locate` and their limits, on `NatCore`s whose messages the test
//! carries.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::advert::{Registry, MAX_LOCATE_RELAYS};
use super::relay::RelayConfig;
use super::wire::MAX_LOCATED;
use super::{NatConfig, NatCore, NatEvent, NatMessage, NatOutput};
use crate::key::PeerKey;

fn key(n: u8) -> PeerKey {
    PeerKey::from_bytes([n; 32])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn relay_config() -> NatConfig {
    NatConfig {
        dial_back: false,
        relay: RelayConfig {
            enabled: true,
            ..RelayConfig::default()
        },
        ..NatConfig::default()
    }
}

fn plain_config() -> NatConfig {
    NatConfig {
        dial_back: false,
        ..NatConfig::default()
    }
}

/// Every output of `core`.
fn drain(core: &mut NatCore) -> Vec<NatOutput> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// The messages `core` sends to `to`.
fn sent(outputs: &[NatOutput], to: PeerKey) -> Vec<NatMessage> {
    outputs
        .iter()
        .filter_map(|o| match o {
            NatOutput::Send { to: t, message } if *t == to => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// Hands `from`'s messages for `to` to `to`; what `to` then output.
fn carry(from: (PeerKey, &[NatOutput]), to: &mut NatCore, me: PeerKey) -> Vec<NatOutput> {
    let now = Instant::now();
    for message in sent(from.1, me) {
        to.handle_message(from.0, message, now);
    }
    drain(to)
}

const R: u8 = 9;
const A: u8 = 1;
const B: u8 = 2;

#[test]
fn a_node_not_known_reachable_registers_with_the_relay_that_offers() {
    let now = Instant::now();
    let mut r = NatCore::new(key(R), relay_config(), 0);
    let mut a = NatCore::new(key(A), plain_config(), 0);
    r.handle_peer_up(key(A), addr("198.51.100.7:4433"), now);
    a.handle_peer_up(key(R), addr("203.0.113.2:4433"), now);
    let r_out = drain(&mut r);
    drain(&mut a);
    assert!(sent(&r_out, key(A)).contains(&NatMessage::RelayOffer { relaying: true }));
    // The offer makes a (reachability unknown) register.
    let a_out = carry((key(R), &r_out), &mut a, key(A));
    assert_eq!(sent(&a_out, key(R)), vec![NatMessage::Register]);
    let r_out = carry((key(A), &a_out), &mut r, key(R));
    assert_eq!(
        sent(&r_out, key(A)),
        vec![NatMessage::Registered { accepted: true }]
    );
    let a_out = carry((key(R), &r_out), &mut a, key(A));
    assert!(a_out.contains(&NatOutput::Event(NatEvent::RelayRegistered {
        relay: key(R),
        accepted: true
    })));
    assert_eq!(a.status().relays, 1);
    assert_eq!(a.status().registered_with, 1);
    assert_eq!(r.status().registered_here, 1);
    // A node without relaying offers nothing.
    assert!(!sent(&a_out, key(R))
        .iter()
        .any(|m| matches!(m, NatMessage::RelayOffer { .. })));
    // The registration ends with the connection.
    r.handle_peer_down(key(A), now);
    assert_eq!(r.status().registered_here, 0);
}

#[test]
fn a_relay_locates_registered_peers_by_address_then_by_ip_and_only_them() {
    let now = Instant::now();
    let mut reg = Registry::new(16, 30);
    let a_at = addr("198.51.100.7:4433");
    assert!(reg.register(key(A), a_at));
    // B is behind a NAT that maps each destination anew: the asker found it at another
    // port of the same IP.
    assert!(reg.register(key(B), addr("198.51.100.9:50001")));
    assert_eq!(reg.locate(key(7), a_at, now), vec![key(A)]);
    assert_eq!(
        reg.locate(key(7), addr("198.51.100.9:6881"), now),
        vec![key(B)]
    );
    // Never the asker itself, nothing for an address no registered peer is at.
    assert_eq!(reg.locate(key(A), a_at, now), Vec::<PeerKey>::new());
    assert!(reg.locate(key(7), addr("192.0.2.1:4433"), now).is_empty());
    // Unregistered: not found any more.
    reg.unregister(&key(A));
    assert!(reg.locate(key(7), a_at, now).is_empty());
}

#[test]
fn registrations_queries_and_answers_are_bounded() {
    let now = Instant::now();
    let mut reg = Registry::new(3, 5);
    let ip = "198.51.100.7";
    for n in 1..=3 {
        assert!(reg.register(key(n), addr(&format!("{ip}:{n}"))));
    }
    assert!(!reg.register(key(4), addr(&format!("{ip}:4"))), "the limit");
    assert!(
        reg.register(key(2), addr(&format!("{ip}:22"))),
        "an update fits"
    );
    assert_eq!(reg.len(), 3);
    // Five queries a minute per asker; the sixth gets nothing; a minute later, again.
    let somewhere = addr(&format!("{ip}:9"));
    for _ in 0..5 {
        assert_eq!(reg.locate(key(50), somewhere, now).len(), 3);
    }
    assert!(reg.locate(key(50), somewhere, now).is_empty());
    assert_eq!(reg.locate(key(51), somewhere, now).len(), 3, "per asker");
    let later = now + Duration::from_secs(60);
    assert_eq!(reg.locate(key(50), somewhere, later).len(), 3);
    // An answer holds at most `MAX_LOCATED` keys.
    let mut big = Registry::new(100, 100);
    for n in 1..=20 {
        big.register(key(n), addr(&format!("{ip}:{n}")));
    }
    let elsewhere = addr(&format!("{ip}:999"));
    assert_eq!(big.locate(key(99), elsewhere, now).len(), MAX_LOCATED);
}

#[test]
fn a_locate_is_answered_by_the_relay_asked_or_counted_empty_when_late() {
    let now = Instant::now();
    let mut a = NatCore::new(key(A), plain_config(), 0);
    for n in 10..10 + MAX_LOCATE_RELAYS as u8 + 2 {
        a.handle_peer_up(key(n), addr(&format!("203.0.113.{n}:4433")), now);
        a.handle_message(key(n), NatMessage::RelayOffer { relaying: true }, now);
    }
    drain(&mut a);
    let target = addr("198.51.100.7:4433");
    let asked = a.locate(target, None, now);
    assert_eq!(asked.len(), MAX_LOCATE_RELAYS, "a few relays, not all");
    let out = drain(&mut a);
    let (first, query) = asked[0];
    assert!(sent(&out, first).contains(&NatMessage::Locate {
        query,
        addr: target
    }));
    // An answer from a relay we did not ask this, or to another query, is ignored.
    let answer = NatMessage::Located {
        query,
        keys: vec![*key(B).as_bytes()],
    };
    a.handle_message(asked[1].0, answer.clone(), now);
    assert!(drain(&mut a).is_empty());
    a.handle_message(first, answer.clone(), now);
    let out = drain(&mut a);
    assert!(out.contains(&NatOutput::Located {
        query,
        relay: first,
        keys: vec![key(B)]
    }));
    // Answered once only.
    a.handle_message(first, answer, now);
    assert!(drain(&mut a).is_empty());
    // The others, never answered, are reported empty once overdue.
    let due = a.poll_timeout().unwrap();
    assert!(due <= now + NatConfig::default().locate_timeout);
    a.handle_timeout(due);
    let late: Vec<_> = drain(&mut a)
        .into_iter()
        .filter(|o| matches!(o, NatOutput::Located { keys, .. } if keys.is_empty()))
        .collect();
    assert_eq!(late.len(), MAX_LOCATE_RELAYS - 1);
}

#[test]
fn a_relay_that_stops_relaying_says_so_and_a_reachable_node_unregisters() {
    let now = Instant::now();
    let mut r = NatCore::new(key(R), relay_config(), 0);
    let mut a = NatCore::new(key(A), plain_config(), 0);
    r.handle_peer_up(key(A), addr("198.51.100.7:4433"), now);
    a.handle_peer_up(key(R), addr("203.0.113.2:4433"), now);
    let a_out = carry((key(R), &drain(&mut r)), &mut a, key(A));
    let r_out = carry((key(A), &a_out), &mut r, key(R));
    carry((key(R), &r_out), &mut a, key(A));
    assert_eq!(r.status().registered_here, 1);
    // The relay learns it is unreachable: it withdraws its offer and its registrations.
    r.conclude(key(A), false, now);
    let r_out = drain(&mut r);
    assert!(sent(&r_out, key(A)).contains(&NatMessage::RelayOffer { relaying: false }));
    assert_eq!(r.status().registered_here, 0);
    carry((key(R), &r_out), &mut a, key(A));
    assert_eq!(a.status().relays, 0);
    assert_eq!(a.status().registered_with, 0);
    // A relay that relays again is offered again; a node found reachable unregisters.
    r.conclude(key(A), true, now);
    let a_out = carry((key(R), &drain(&mut r)), &mut a, key(A));
    assert_eq!(sent(&a_out, key(R)), vec![NatMessage::Register]);
    a.conclude(key(R), true, now);
    let a_out = drain(&mut a);
    assert_eq!(sent(&a_out, key(R)), vec![NatMessage::Unregister]);
    let mut r_again = NatCore::new(key(R), relay_config(), 0);
    r_again.handle_peer_up(key(A), addr("198.51.100.7:4433"), now);
    r_again.handle_message(key(A), NatMessage::Register, now);
    assert_eq!(r_again.status().registered_here, 1);
    r_again.handle_message(key(A), NatMessage::Unregister, now);
    assert_eq!(r_again.status().registered_here, 0);
}
