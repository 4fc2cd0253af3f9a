//! Tests of `NatCore` with virtual time: no sockets, no clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

fn key(n: u8) -> PeerKey {
    PeerKey::from_bytes([n; 32])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn outputs(core: &mut NatCore) -> Vec<NatOutput> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn sent_to(outs: &[NatOutput], peer: PeerKey) -> Vec<NatMessage> {
    outs.iter()
        .filter_map(|o| match o {
            NatOutput::Send { to, message } if *to == peer => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn events(outs: &[NatOutput]) -> Vec<NatEvent> {
    outs.iter()
        .filter_map(|o| match o {
            NatOutput::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn observe_only() -> NatConfig {
    NatConfig {
        dial_back: false,
        ..NatConfig::default()
    }
}

#[test]
fn each_side_reports_where_it_sees_the_other_when_a_connection_comes_up() {
    let now = Instant::now();
    let mut core = NatCore::new(key(1), observe_only(), 0);
    core.handle_peer_up(key(2), addr("198.51.100.2:5000"), now);
    let outs = outputs(&mut core);
    assert_eq!(
        sent_to(&outs, key(2)),
        vec![NatMessage::Observed {
            addr: addr("198.51.100.2:5000")
        }]
    );
    let off = NatConfig {
        observe: false,
        ..observe_only()
    };
    let mut core = NatCore::new(key(1), off, 0);
    core.handle_peer_up(key(2), addr("198.51.100.2:5000"), now);
    assert!(
        outputs(&mut core).is_empty(),
        "observe = false sends nothing"
    );
}

#[test]
fn the_mapping_type_needs_two_reporters_at_distinct_addresses() {
    let now = Instant::now();
    let mut core = NatCore::new(key(1), observe_only(), 0);
    // Two peers behind the same address: still unknown.
    core.handle_peer_up(key(2), addr("198.51.100.2:5000"), now);
    core.handle_peer_up(key(3), addr("198.51.100.2:5001"), now);
    outputs(&mut core);
    let me = addr("203.0.113.9:40000");
    core.handle_message(key(2), NatMessage::Observed { addr: me }, now);
    core.handle_message(key(3), NatMessage::Observed { addr: me }, now);
    let outs = outputs(&mut core);
    assert_eq!(
        events(&outs),
        vec![NatEvent::PublicAddrs { addrs: vec![me] }]
    );
    assert_eq!(core.status().nat_type, NatType::Unknown);
    // A third at another address sees the same port: endpoint-independent.
    core.handle_peer_up(key(4), addr("192.0.2.4:6000"), now);
    core.handle_message(key(4), NatMessage::Observed { addr: me }, now);
    let outs = outputs(&mut core);
    assert_eq!(
        events(&outs),
        vec![NatEvent::NatType {
            nat_type: NatType::EndpointIndependent
        }]
    );
    let status = core.status();
    assert_eq!(status.public_addrs, vec![me]);
    assert_eq!(status.reporters, 3);
}

#[test]
fn different_ports_seen_from_different_addresses_is_endpoint_dependent() {
    let now = Instant::now();
    let mut core = NatCore::new(key(1), observe_only(), 0);
    core.handle_peer_up(key(2), addr("198.51.100.2:5000"), now);
    core.handle_peer_up(key(4), addr("192.0.2.4:6000"), now);
    core.handle_message(
        key(2),
        NatMessage::Observed {
            addr: addr("203.0.113.9:40000"),
        },
        now,
    );
    core.handle_message(
        key(4),
        NatMessage::Observed {
            addr: addr("203.0.113.9:40017"),
        },
        now,
    );
    assert_eq!(core.status().nat_type, NatType::EndpointDependent);
    assert_eq!(core.status().public_addrs.len(), 2);
}

#[test]
fn reports_from_strangers_are_ignored_and_reporters_are_bounded() {
    let now = Instant::now();
    let mut core = NatCore::new(key(1), observe_only(), 0);
    core.handle_message(
        key(9),
        NatMessage::Observed {
            addr: addr("203.0.113.9:1"),
        },
        now,
    );
    assert_eq!(core.status().reporters, 0, "not connected: ignored");
    for n in 0..(MAX_REPORTERS as u8 + 10) {
        let at = now + Duration::from_millis(n as u64);
        core.handle_peer_up(key(n), addr("198.51.100.2:5000"), at);
        core.handle_message(
            key(n),
            NatMessage::Observed {
                addr: SocketAddr::from(([203, 0, 113, 9], 1000 + n as u16)),
            },
            at,
        );
    }
    let status = core.status();
    assert_eq!(status.reporters, MAX_REPORTERS);
    assert!(status.public_addrs.len() <= MAX_PUBLIC_ADDRS);
}

/// Two cores that forward their messages to each other; `reachable` says whether a
/// dial-back to each one gets through its NAT.
struct Pair {
    a: NatCore,
    b: NatCore,
    a_reachable: bool,
    b_reachable: bool,
    log: Vec<(char, NatEvent)>,
}

const A: u8 = 1;
const B: u8 = 2;

impl Pair {
    fn new(a_reachable: bool, b_reachable: bool) -> Self {
        Self {
            a: NatCore::new(key(A), NatConfig::default(), 100),
            b: NatCore::new(key(B), NatConfig::default(), 200),
            a_reachable,
            b_reachable,
            log: Vec::new(),
        }
    }

    fn connect(&mut self, now: Instant) {
        self.a
            .handle_peer_up(key(B), addr("198.51.100.2:5000"), now);
        self.b.handle_peer_up(key(A), addr("203.0.113.1:7000"), now);
        self.drive(now);
    }

    /// Delivers every message and carries out every dial-back at `now` until quiet.
    fn drive(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            for side in ['a', 'b'] {
                let (from, to, me_key, reachable_peer) = match side {
                    'a' => (&mut self.a, &mut self.b, key(A), self.b_reachable),
                    _ => (&mut self.b, &mut self.a, key(B), self.a_reachable),
                };
                while let Some(out) = from.poll_output() {
                    moved = true;
                    match out {
                        NatOutput::Send { message, .. } => to.handle_message(me_key, message, now),
                        NatOutput::DialBack {
                            to: peer,
                            addr,
                            nonce,
                        } => {
                            if reachable_peer {
                                to.handle_dial_back_arrived(me_key, now);
                            }
                            from.handle_dial_back_done(peer, addr, nonce, reachable_peer, now);
                        }
                        NatOutput::Event(e) => self.log.push((side, e)),
                        other => panic!("no circuits here: {other:?}"),
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}

#[test]
fn a_dial_back_tells_each_side_whether_it_is_reachable() {
    let now = Instant::now();
    let mut pair = Pair::new(true, false);
    pair.connect(now);
    assert_eq!(pair.a.status().reachability, Reachability::Reachable);
    assert_eq!(pair.b.status().reachability, Reachability::Unreachable);
    assert!(pair.log.contains(&(
        'b',
        NatEvent::DialBackServed {
            peer: key(A),
            addr: addr("203.0.113.1:7000"),
            reached: true
        }
    )));
    // Nothing more until the recheck.
    let next = pair.a.poll_timeout().unwrap();
    assert_eq!(next, now + NatConfig::default().recheck_after);
}

#[test]
fn a_silent_peer_is_skipped_after_the_timeout_and_the_next_one_asked() {
    let now = Instant::now();
    let mut core = NatCore::new(key(1), NatConfig::default(), 5);
    core.handle_peer_up(key(2), addr("198.51.100.2:5000"), now);
    core.handle_peer_up(key(3), addr("192.0.2.3:5000"), now);
    core.handle_message(
        key(2),
        NatMessage::Observed {
            addr: addr("203.0.113.1:7000"),
        },
        now,
    );
    core.handle_message(
        key(3),
        NatMessage::Observed {
            addr: addr("203.0.113.1:7000"),
        },
        now,
    );
    let outs = outputs(&mut core);
    assert!(sent_to(&outs, key(2)).contains(&NatMessage::DialBack { nonce: 5 }));
    assert!(
        !sent_to(&outs, key(3))
            .iter()
            .any(|m| matches!(m, NatMessage::DialBack { .. })),
        "one request at a time"
    );
    let later = core.poll_timeout().unwrap();
    core.handle_timeout(later);
    let outs = outputs(&mut core);
    assert_eq!(
        sent_to(&outs, key(3)),
        vec![NatMessage::DialBack { nonce: 6 }]
    );
    // A result with a wrong nonce or from another peer changes nothing.
    core.handle_message(
        key(2),
        NatMessage::DialBackResult {
            nonce: 6,
            addr: addr("203.0.113.1:7000"),
            reached: true,
        },
        later,
    );
    assert_eq!(core.status().reachability, Reachability::Unknown);
    core.handle_message(
        key(3),
        NatMessage::DialBackResult {
            nonce: 6,
            addr: addr("203.0.113.1:7000"),
            reached: false,
        },
        later,
    );
    assert_eq!(core.status().reachability, Reachability::Unreachable);
}

#[test]
fn dial_backs_go_only_to_the_requester_and_are_rate_limited() {
    let now = Instant::now();
    let config = NatConfig {
        max_dial_backs_per_minute: 2,
        ..NatConfig::default()
    };
    let interval = config.dial_back_peer_interval;
    let mut core = NatCore::new(key(1), config, 0);
    for n in 2..=4 {
        core.handle_peer_up(key(n), SocketAddr::from(([192, 0, 2, n], 5000)), now);
    }
    outputs(&mut core);
    let ask = |core: &mut NatCore, n: u8, at: Instant| {
        core.handle_message(key(n), NatMessage::DialBack { nonce: n as u64 }, at);
        outputs(core)
    };
    let outs = ask(&mut core, 2, now);
    assert_eq!(
        outs,
        vec![NatOutput::DialBack {
            to: key(2),
            addr: SocketAddr::from(([192, 0, 2, 2], 5000)),
            nonce: 2
        }],
        "dials only where we see the requester"
    );
    let outs = ask(&mut core, 2, now);
    assert_eq!(
        sent_to(&outs, key(2)),
        vec![NatMessage::DialBackRefused { nonce: 2 }],
        "once per peer interval"
    );
    assert!(matches!(
        ask(&mut core, 3, now)[..],
        [NatOutput::DialBack { .. }]
    ));
    assert_eq!(
        sent_to(&ask(&mut core, 4, now), key(4)),
        vec![NatMessage::DialBackRefused { nonce: 4 }],
        "the per-minute budget is spent"
    );
    let later = now + interval.max(Duration::from_secs(60));
    assert!(matches!(
        ask(&mut core, 2, later)[..],
        [NatOutput::DialBack { .. }]
    ));
    // A stranger's request is ignored.
    assert!(ask(&mut core, 9, later).is_empty());
}

#[test]
fn a_new_public_address_checks_reachability_again() {
    let now = Instant::now();
    let mut pair = Pair::new(false, true);
    pair.connect(now);
    assert_eq!(pair.a.status().reachability, Reachability::Unreachable);
    pair.log.clear();
    // B now sees A at another address (A's NAT renumbered it), and A's reachability
    // is checked again although `recheck_after` has not passed (once b's per-peer
    // interval allows another dial-back).
    pair.a_reachable = true;
    let t = now + NatConfig::default().dial_back_peer_interval;
    pair.a.handle_message(
        key(B),
        NatMessage::Observed {
            addr: addr("203.0.113.1:7999"),
        },
        t,
    );
    pair.drive(t);
    assert_eq!(pair.a.status().reachability, Reachability::Reachable);
    assert!(pair
        .log
        .contains(&('a', NatEvent::DialBackAsked { peer: key(B) })));
}

#[test]
fn over_a_relayed_connection_the_greater_key_offers_a_punch_and_both_dial() {
    let now = Instant::now();
    let virt = crate::socket::VirtualPaths::address(3);
    let mut great = NatCore::new(key(9), NatConfig::default(), 0);
    let mut small = NatCore::new(key(1), NatConfig::default(), 0);
    // Each learned its public address from a direct peer first.
    for (core, public) in [
        (&mut great, "203.0.113.9:9000"),
        (&mut small, "198.51.100.1:1000"),
    ] {
        core.handle_peer_up(key(5), addr("192.0.2.5:5000"), now);
        core.handle_message(key(5), NatMessage::Observed { addr: addr(public) }, now);
        outputs(core);
    }
    great.handle_peer_up(key(1), virt, now);
    small.handle_peer_up(key(9), virt, now);
    let from_great = outputs(&mut great);
    assert_eq!(
        sent_to(&from_great, key(1)),
        vec![NatMessage::PunchOffer {
            addrs: vec![addr("203.0.113.9:9000")]
        }],
        "no Observed on a relayed connection, one offer"
    );
    assert!(
        sent_to(&outputs(&mut small), key(9)).is_empty(),
        "the smaller key waits"
    );
    small.handle_message(
        key(9),
        NatMessage::PunchOffer {
            addrs: vec![addr("203.0.113.9:9000"), virt],
        },
        now,
    );
    let outs = outputs(&mut small);
    assert!(outs.contains(&NatOutput::Send {
        to: key(9),
        message: NatMessage::PunchAnswer {
            addrs: vec![addr("198.51.100.1:1000")]
        }
    }));
    assert!(
        outs.contains(&NatOutput::Punch {
            peer: key(9),
            addrs: vec![addr("203.0.113.9:9000")],
            wait_half_rtt: true
        }),
        "virtual addresses are never dialed: {outs:?}"
    );
    great.handle_message(
        key(1),
        NatMessage::PunchAnswer {
            addrs: vec![addr("198.51.100.1:1000")],
        },
        now,
    );
    assert_eq!(
        outputs(&mut great),
        vec![NatOutput::Punch {
            peer: key(1),
            addrs: vec![addr("198.51.100.1:1000")],
            wait_half_rtt: false
        }]
    );
    // A relayed peer's report of our address is ignored, and it gets no dial-back.
    great.handle_message(key(1), NatMessage::Observed { addr: virt }, now);
    great.handle_message(key(1), NatMessage::DialBack { nonce: 4 }, now);
    let outs = outputs(&mut great);
    assert_eq!(
        sent_to(&outs, key(1)),
        vec![NatMessage::DialBackRefused { nonce: 4 }]
    );
    assert_eq!(great.status().reporters, 1);
}
