//! The path rule with virtual time: a direct connection beats a relayed one on both sides,
//! whoever dialed either.

use std::net::SocketAddr;
use std::time::Instant;

use super::*;
use crate::socket::VirtualPaths;

fn key(n: u8) -> PeerKey {
    PeerKey::from_bytes([n; 32])
}

fn real(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
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

fn accept(core: &mut ConnCore, from: SocketAddr) -> ConnId {
    match core.handle_incoming(from, true) {
        Ok(IncomingStart::Accept(id)) => id,
        other => panic!("expected {from} to be accepted, got {other:?}"),
    }
}

fn dial(core: &mut ConnCore, to: SocketAddr, expected: PeerKey, now: Instant) -> ConnId {
    match core.handle_dial(to, Some(expected), now) {
        Ok(DialStart::Dial(id)) => id,
        other => panic!("expected a new dial to {to}, got {other:?}"),
    }
}

fn closed_as_duplicate(events: &[CoreEvent], conn: ConnId) -> bool {
    events.contains(&CoreEvent::Close {
        conn,
        reason: CloseReason::Duplicate,
    })
}

/// `small` and `great` are connected through a relay (initiated by `relay_dialer`), then
/// one of them dials the other directly: both end on the direct connection, and both
/// close the relayed one.
fn direct_replaces_relayed(relay_dialer_is_great: bool, direct_dialer_is_great: bool) {
    let now = Instant::now();
    let (small, great) = (key(1), key(2));
    let mut s = ConnCore::new(small, config());
    let mut g = ConnCore::new(great, config());
    // The relayed connection: each side sees the other at a virtual address of its own.
    let (vs, vg) = (VirtualPaths::address(7), VirtualPaths::address(9));
    let (rs, rg) = if relay_dialer_is_great {
        (accept(&mut s, vs), dial(&mut g, vg, small, now))
    } else {
        (dial(&mut s, vs, great, now), accept(&mut g, vg))
    };
    s.handle_established(rs, great, now);
    g.handle_established(rg, small, now);
    if !relay_dialer_is_great {
        // The greater side committed and confirmed: the smaller side uses it.
        s.handle_confirmed(rs, now);
    }
    assert_eq!(s.up(&great), Some(rs));
    assert_eq!(g.up(&small), Some(rg));
    events(&mut s);
    events(&mut g);
    // A direct dial is not answered with the relayed connection.
    let (ds, dg) = if direct_dialer_is_great {
        (accept(&mut s, real(1)), dial(&mut g, real(2), small, now))
    } else {
        (dial(&mut s, real(2), great, now), accept(&mut g, real(1)))
    };
    g.handle_established(dg, small, now);
    s.handle_established(ds, great, now);
    let (es, eg) = (events(&mut s), events(&mut g));
    assert!(closed_as_duplicate(&es, rs), "small: {es:?}");
    assert!(closed_as_duplicate(&eg, rg), "great: {eg:?}");
    if !direct_dialer_is_great {
        assert!(
            eg.contains(&CoreEvent::Confirm { conn: dg }),
            "great: {eg:?}"
        );
        s.handle_confirmed(ds, now);
    }
    assert_eq!(s.up(&great), Some(ds));
    assert_eq!(g.up(&small), Some(dg));
    // A relayed newcomer now loses to the direct one, even initiated by the greater key.
    let late = accept(&mut s, VirtualPaths::address(11));
    s.handle_established(late, great, now);
    let es = events(&mut s);
    assert!(closed_as_duplicate(&es, late), "small: {es:?}");
    assert_eq!(s.up(&great), Some(ds));
}

#[test]
fn a_direct_connection_replaces_a_relayed_one_whoever_dialed() {
    for relay_dialer_is_great in [false, true] {
        for direct_dialer_is_great in [false, true] {
            direct_replaces_relayed(relay_dialer_is_great, direct_dialer_is_great);
        }
    }
}

#[test]
fn a_relayed_dial_to_a_directly_connected_peer_is_answered_with_that_connection() {
    let now = Instant::now();
    let mut core = ConnCore::new(key(5), config());
    let d = dial(&mut core, real(1), key(3), now);
    core.handle_established(d, key(3), now);
    events(&mut core);
    assert_eq!(
        core.handle_dial(VirtualPaths::address(1), Some(key(3)), now),
        Ok(DialStart::Connected(key(3)))
    );
}
