//! The session core, two or three cores wired together in one process under virtual time.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

use crate::util;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use replic8::frame::MAX_FRAME_LEN;
use replic8::keys::{ExporterSecret, FeedKey, NamespaceKey, NamespaceSecret, Role};
use replic8::message::{self, CloseCode, FeedStreamHeader, KnownFeed, Message, OfferedFeed};
use replic8::session::{
    Mode, Session, SessionConfig, SessionEvent, Side, StoreCall, StreamCommand, StreamId,
    MAX_PEER_FEEDS, MAX_PENDING_PEER_OFFERS, MAX_PUMPED_CONTROL_BYTES, MAX_QUEUED_CONTROL_BYTES,
    MAX_UNMATCHED_HAVE, MAX_UNMATCHED_TAGS,
};
use util::*;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn two(policy_b: Policy) -> Net {
    let mut net = Net::new(live());
    net.add_store("a", accept_all());
    net.add_store("b", policy_b);
    net.connect(A, B, [1; 32]);
    net
}

fn offers_sent(end: &End) -> Vec<(u32, Vec<OfferedFeed>)> {
    end.sent
        .iter()
        .filter_map(|m| match m {
            Message::Offer {
                namespace, feeds, ..
            } => Some((*namespace, feeds.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn headers_arrive_intact_and_only_the_accepted_subset_is_streamed() {
    // B accepts feeds whose header `want` is `yes`, in both namespaces.
    let mut net = two(Box::new(|_, feeds| {
        Ok(feeds
            .iter()
            .filter(|(_, h)| h.get("want") == Some(b"yes"))
            .map(|(k, _)| *k)
            .collect())
    }));
    let feeds = [
        (
            feed(1),
            5,
            headers(&[("want", b"yes"), ("title", "café".as_bytes())]),
        ),
        (feed(2), 7, headers(&[("want", b"no")])),
        (
            feed(3),
            2,
            headers(&[("want", b"yes"), ("blob", &[0, 255, 1])]),
        ),
        (feed(4), 9, headers(&[])),
        (feed(5), 1, headers(&[("want", b"yes")])),
    ];
    net.create(A, &feeds);
    for node in [A, B] {
        net.register(0, node, "", None);
        net.register(0, node, "photos", None);
    }
    assert_eq!(net.share(0, A, "", &[feed(1), feed(2), feed(3)]), 3);
    assert_eq!(net.share(0, A, "photos", &[feed(4), feed(5)]), 2);
    net.drive();

    // Headers arrived byte for byte, in the right namespace.
    let seen = &net.stores[B].offers_seen;
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (_, ns, list) in seen {
        for (key, h) in list {
            let (_, _, original) = feeds.iter().find(|(k, _, _)| k == key).unwrap();
            assert_eq!(h, original, "headers of {key:?}");
            let expected_ns = if [feed(4), feed(5)].contains(key) {
                "photos"
            } else {
                ""
            };
            assert_eq!(ns, expected_ns);
        }
    }
    // A hears which were accepted; exactly those were streamed, on both ends.
    let accepted: Vec<FeedKey> = net.links[0].ends[0]
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Accepted { feeds, .. } => Some(feeds.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut accepted_sorted = accepted.clone();
    accepted_sorted.sort();
    assert_eq!(accepted_sorted, vec![feed(1), feed(3), feed(5)]);
    for end in &net.links[0].ends {
        let mut attached: Vec<_> = end.ever_attached.iter().copied().collect();
        attached.sort();
        assert_eq!(attached, accepted_sorted, "streams of node {}", end.node);
        assert!(end.attached.is_empty(), "streams close once in sync");
    }
    // Rejected feeds never reached B's store; accepted ones synced to A's lengths.
    assert_eq!(net.stores[B].lengths.get(&feed(1)), Some(&5));
    assert_eq!(net.stores[B].lengths.get(&feed(3)), Some(&2));
    assert_eq!(net.stores[B].lengths.get(&feed(5)), Some(&1));
    assert!(!net.stores[B].lengths.contains_key(&feed(2)));
    assert!(!net.stores[B].lengths.contains_key(&feed(4)));
    let synced: Vec<_> = net.links[0].ends[1]
        .events
        .iter()
        .filter(|e| matches!(e, SessionEvent::FeedSynced { .. }))
        .collect();
    assert_eq!(synced.len(), 3);
    assert!(net.links[0].ends[1]
        .events
        .contains(&SessionEvent::FeedSynced {
            feed: feed(1),
            length: 5
        }));
    assert!(
        net.ended(0, 0).is_none() && net.ended(0, 1).is_none(),
        "live sessions stay up"
    );
    let (a, b) = (
        net.links[0].ends[0].session.stats(),
        net.links[0].ends[1].session.stats(),
    );
    assert_eq!((a.feeds_offered, b.feeds_offered_to_us), (5, 5));
    assert_eq!((a.feeds_replicated, b.feeds_replicated), (3, 3));
    assert_eq!((a.streams_opened, b.streams_opened), (3, 3));
    assert_eq!(a.bytes_out, b.bytes_in);
    assert_eq!(a.messages_out, b.messages_in);
}

#[test]
fn a_share_after_the_start_is_exchanged_live_and_never_twice() {
    let mut net = two(accept_all());
    net.create(A, &[(feed(1), 3, headers(&[])), (feed(2), 4, headers(&[]))]);
    net.register(0, A, "", None);
    net.register(0, B, "", None);
    net.share(0, A, "", &[feed(1)]);
    net.drive();
    assert_eq!(net.stores[B].lengths.get(&feed(1)), Some(&3));
    // Sharing again offers only what is new.
    assert_eq!(net.share(0, A, "", &[feed(1), feed(2)]), 1);
    net.drive();
    assert_eq!(net.stores[B].lengths.get(&feed(2)), Some(&4));
    // B knows A has both: B sharing them back offers nothing.
    assert_eq!(net.share(0, B, "", &[feed(1), feed(2)]), 0);
    assert_eq!(offers_sent(&net.links[0].ends[0]).len(), 2);
}

#[test]
fn a_secret_namespace_sends_zero_keys_to_a_peer_without_the_secret() {
    let secret = [42; 32];
    let mut net = Net::new(live());
    net.add_store("a", accept_all());
    net.add_store("b", accept_all());
    net.add_store("c", accept_all());
    let with_c = net.connect(A, C, [2; 32]);
    let without_b = net.connect(A, B, [3; 32]);
    net.create(
        A,
        &[
            (feed(1), 4, headers(&[("x", b"y")])),
            (feed(2), 1, headers(&[])),
        ],
    );
    // B has the namespace as public (no secret); C has the secret.
    net.register(without_b, A, "team", Some(secret));
    net.register(without_b, B, "team", None);
    net.register(with_c, A, "team", Some(secret));
    net.register(with_c, C, "team", Some(secret));
    net.share(without_b, A, "team", &[feed(1), feed(2)]);
    net.share(with_c, A, "team", &[feed(1), feed(2)]);
    net.drive();

    let to_b = &net.links[without_b].ends[0];
    assert!(offers_sent(to_b).is_empty(), "no offer went to B");
    for key in [feed(1), feed(2)] {
        assert!(
            !contains_key(&to_b.wire, &key),
            "key {key:?} crossed the wire to B"
        );
    }
    assert!(net.stores[B].offers_seen.is_empty());
    assert!(
        net.ended(without_b, 0).is_none(),
        "B lacking the secret is not an error"
    );
    // C proved the secret and got both feeds.
    assert!(net.links[with_c].ends[0]
        .events
        .contains(&SessionEvent::NamespaceProven {
            namespace: "team".into()
        }));
    assert_eq!(net.stores[C].lengths.get(&feed(1)), Some(&4));
    assert_eq!(net.stores[C].lengths.get(&feed(2)), Some(&1));
}

#[test]
fn a_wrong_secret_gets_no_answer_no_keys_and_no_end() {
    // Fails on the old code: a mismatching proof ended the session with `bad proof`
    // (naming the namespace) and the node banned the peer.
    let mut net = two(accept_all());
    net.create(A, &[(feed(1), 4, headers(&[]))]);
    net.register(0, A, "team", Some([1; 32]));
    net.register(0, B, "team", Some([2; 32]));
    net.share(0, A, "team", &[feed(1)]);
    net.share(0, B, "team", &[]);
    net.drive();
    for side in 0..2 {
        assert!(net.ended(0, side).is_none(), "{:?}", net.ended(0, side));
        let end = &net.links[0].ends[side];
        assert!(!end
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::NamespaceProven { .. })));
    }
    // The dialer sent its tag; the acceptor, whose key differs, answered nothing.
    let tags = |side: usize| {
        net.links[0].ends[side]
            .sent
            .iter()
            .filter(|m| matches!(m, Message::Tag { .. }))
            .count()
    };
    assert_eq!((tags(0), tags(1)), (1, 0));
    assert!(!contains_key(&net.links[0].ends[0].wire, &feed(1)));
    assert!(!contains_key(&net.links[0].ends[1].wire, &feed(1)));
}

fn hello_frame() -> Vec<u8> {
    let mut wire = Vec::new();
    message::encode(
        &Message::Hello {
            version: message::PROTOCOL_VERSION,
            dialect: message::DIALECT.into(),
            max_streams: 8,
        },
        &mut wire,
    )
    .unwrap();
    wire
}

fn frames(messages: &[Message]) -> Vec<u8> {
    let mut wire = Vec::new();
    for m in messages {
        message::encode(m, &mut wire).unwrap();
    }
    wire
}

/// Everything `s` has to send, decoded.
fn take_sent(s: &mut Session) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(frame) = s.poll_transmit() {
        s.handle_control_written(frame.len());
        let mut rest = &frame[..];
        while let Some((payload, used)) = replic8::frame::parse(rest, MAX_FRAME_LEN).unwrap() {
            out.push(message::decode(payload).unwrap());
            rest = &rest[used..];
        }
    }
    out
}

fn acceptor_with(exporter: [u8; 32], namespaces: &[(&str, Option<[u8; 32]>)]) -> Session {
    let mut s = Session::new(
        live(),
        Role::Acceptor,
        ExporterSecret(exporter),
        std::time::Instant::now(),
    );
    for (name, secret) in namespaces {
        s.handle_register_namespace(name, secret.map(NamespaceSecret))
            .unwrap();
    }
    s
}

#[test]
fn a_tag_replayed_from_another_connection_gets_no_answer_no_keys_and_no_end() {
    // Fails on the old code: the victim sent its proof and the stable namespace id to
    // anyone, before the peer proved anything, and a replayed proof ended the session
    // with a reason naming the namespace.
    let secret = [9; 32];
    let key = NamespaceKey::new("team", Some(&NamespaceSecret(secret)));
    // Connection 1: the honest peer's tag; the attacker records it.
    let recorded = key.tag(&ExporterSecret([1; 32]), Role::Dialer);
    // Connection 2, another exporter value: the attacker dials and replays it.
    let mut victim = acceptor_with([2; 32], &[("team", Some(secret))]);
    victim
        .handle_share("team", vec![(feed(1), headers(&[]))])
        .unwrap();
    victim.handle_control_bytes(&hello_frame());
    victim.handle_control_bytes(&frames(&[Message::Tag {
        handle: 1,
        tag: recorded,
    }]));
    // Our own tag reflected back at us matches nothing either (it is bound to our role).
    let own = key.tag(&ExporterSecret([2; 32]), Role::Acceptor);
    victim.handle_control_bytes(&frames(&[Message::Tag {
        handle: 2,
        tag: own,
    }]));
    assert!(victim.end_reason().is_none(), "{:?}", victim.end_reason());
    let sent = take_sent(&mut victim);
    assert!(
        sent.iter().all(|m| matches!(m, Message::Hello { .. })),
        "the victim revealed something: {sent:?}"
    );
    let wire = frames(&sent);
    assert!(!contains_key(&wire, &feed(1)), "the victim sent the key");

    // The honest tag for this connection is answered, and the offer follows.
    let honest = key.tag(&ExporterSecret([2; 32]), Role::Dialer);
    victim.handle_control_bytes(&frames(&[Message::Tag {
        handle: 3,
        tag: honest,
    }]));
    let sent = take_sent(&mut victim);
    let answer = key.tag(&ExporterSecret([2; 32]), Role::Acceptor);
    assert_eq!(
        sent[0],
        Message::Tag {
            handle: 3,
            tag: answer
        }
    );
    assert!(
        matches!(&sent[1], Message::Offer { namespace: 3, feeds, .. } if feeds[0].key == feed(1)),
        "{sent:?}"
    );
}

#[test]
fn a_dialer_tag_for_a_namespace_registered_later_is_answered_then() {
    let secret = [4; 32];
    let key = NamespaceKey::new("x", Some(&NamespaceSecret(secret)));
    let mut acceptor = acceptor_with([6; 32], &[]);
    acceptor.handle_control_bytes(&hello_frame());
    let tag = key.tag(&ExporterSecret([6; 32]), Role::Dialer);
    acceptor.handle_control_bytes(&frames(&[Message::Tag { handle: 7, tag }]));
    assert!(take_sent(&mut acceptor)
        .iter()
        .all(|m| matches!(m, Message::Hello { .. })));
    // Registered under another local name: only the secret counts.
    acceptor
        .handle_register_namespace("local-name", Some(NamespaceSecret(secret)))
        .unwrap();
    assert_eq!(
        take_sent(&mut acceptor),
        vec![Message::Tag {
            handle: 7,
            tag: key.tag(&ExporterSecret([6; 32]), Role::Acceptor)
        }]
    );
    assert!(acceptor
        .poll_event()
        .into_iter()
        .chain(std::iter::from_fn(|| acceptor.poll_event()))
        .any(|e| e
            == SessionEvent::NamespaceProven {
                namespace: "local-name".into()
            }));
}

#[test]
fn unmatched_tags_past_the_bound_are_dropped_without_ending_the_session() {
    // Fails on the old code: more than 1,024 proofs for unknown namespaces ended the
    // session as a protocol error (an honest dialer in many namespaces could do that).
    let mut acceptor = acceptor_with([6; 32], &[]);
    acceptor.handle_control_bytes(&hello_frame());
    let many: Vec<Message> = (1..=(MAX_UNMATCHED_TAGS as u32 + 500))
        .map(|handle| Message::Tag {
            handle,
            tag: [handle as u8; 32],
        })
        .collect();
    acceptor.handle_control_bytes(&frames(&many));
    assert!(
        acceptor.end_reason().is_none(),
        "{:?}",
        acceptor.end_reason()
    );
}

#[test]
fn an_acceptor_tag_that_answers_none_of_ours_or_does_not_check_is_misbehaviour() {
    let make = || {
        let mut dialer = Session::new(
            live(),
            Role::Dialer,
            ExporterSecret([3; 32]),
            std::time::Instant::now(),
        );
        dialer
            .handle_register_namespace("team", Some(NamespaceSecret([5; 32])))
            .unwrap();
        dialer.handle_control_bytes(&hello_frame());
        let sent = take_sent(&mut dialer);
        let handle = sent
            .iter()
            .find_map(|m| match m {
                Message::Tag { handle, .. } => Some(*handle),
                _ => None,
            })
            .unwrap();
        (dialer, handle)
    };
    // A tag for a handle we never sent.
    let (mut dialer, handle) = make();
    dialer.handle_control_bytes(&frames(&[Message::Tag {
        handle: handle + 1,
        tag: [0; 32],
    }]));
    let reason = dialer.end_reason().unwrap();
    assert_eq!(reason.code, CloseCode::PROTOCOL, "{reason}");
    assert!(reason.is_misbehaviour());
    assert!(!reason.reason.contains("team"), "{reason}");
    // A tag for our handle that does not check.
    let (mut dialer, handle) = make();
    dialer.handle_control_bytes(&frames(&[Message::Tag {
        handle,
        tag: [0; 32],
    }]));
    let reason = dialer.end_reason().unwrap();
    assert_eq!(reason.code, CloseCode::BAD_PROOF, "{reason}");
    assert!(reason.is_misbehaviour());
    assert!(!reason.reason.contains("team"), "{reason}");
}

#[test]
fn two_connections_of_the_same_members_show_unrelated_tags() {
    let tags = |exporter: [u8; 32]| {
        let mut net = Net::new(live());
        net.add_store("a", accept_all());
        net.add_store("b", accept_all());
        net.connect(A, B, exporter);
        net.register(0, A, "team", Some([8; 32]));
        net.register(0, B, "team", Some([8; 32]));
        net.share(0, A, "team", &[]);
        net.share(0, B, "team", &[]);
        net.drive();
        let tag = |side: usize| {
            net.links[0].ends[side]
                .sent
                .iter()
                .find_map(|m| match m {
                    Message::Tag { tag, .. } => Some(*tag),
                    _ => None,
                })
                .unwrap()
        };
        (tag(0), tag(1))
    };
    let (d1, a1) = tags([1; 32]);
    let (d2, a2) = tags([2; 32]);
    assert_ne!(d1, d2);
    assert_ne!(a1, a2);
    assert_ne!(d1, a1, "the roles' tags differ");
}

#[test]
fn all_to_all_replicates_known_feeds_without_sending_keys() {
    let mut net = Net::new(live());
    net.add_store("a", accept_all());
    net.add_store("b", accept_all());
    let l = net.connect(A, B, [5; 32]);
    net.create(
        A,
        &[
            (feed(1), 10, headers(&[])),
            (feed(2), 0, headers(&[])),
            (feed(3), 3, headers(&[])),
        ],
    );
    net.create(
        B,
        &[
            (feed(1), 4, headers(&[])),
            (feed(2), 6, headers(&[])),
            (feed(4), 1, headers(&[])),
        ],
    );
    for node in [A, B] {
        net.register(l, node, "", None);
    }
    let known_a = vec![feed(1), feed(2), feed(3)];
    let known_b = vec![feed(1), feed(2), feed(4)];
    net.end(l, A)
        .session
        .handle_known_feeds("", known_a)
        .unwrap();
    net.end(l, B)
        .session
        .handle_known_feeds("", known_b)
        .unwrap();
    net.drive();
    // Both directions: A had more of feed 1, B more of feed 2.
    assert_eq!(net.stores[B].lengths[&feed(1)], 10);
    assert_eq!(net.stores[A].lengths[&feed(2)], 6);
    // Feeds only one side holds are not replicated and not revealed.
    assert!(!net.stores[B].lengths.contains_key(&feed(3)));
    assert!(!net.stores[A].lengths.contains_key(&feed(4)));
    for end in &net.links[l].ends {
        for n in 1..=4 {
            assert!(
                !contains_key(&end.wire, &feed(n)),
                "public key {n} crossed the wire"
            );
        }
        assert_eq!(end.ever_attached.len(), 2);
    }
}

fn established_acceptor(exporter: [u8; 32]) -> (Session, Vec<u8>) {
    let mut s = Session::new(
        live(),
        Role::Acceptor,
        ExporterSecret(exporter),
        std::time::Instant::now(),
    );
    s.handle_register_namespace("", None).unwrap();
    let mut wire = Vec::new();
    message::encode(
        &Message::Hello {
            version: message::PROTOCOL_VERSION,
            dialect: message::DIALECT.into(),
            max_streams: 8,
        },
        &mut wire,
    )
    .unwrap();
    s.handle_control_bytes(&wire);
    assert!(s.is_established());
    (s, wire)
}

fn close_sent(s: &mut Session) -> Option<(CloseCode, String)> {
    let mut last = None;
    while let Some(frame) = s.poll_transmit() {
        let (payload, _) = replic8::frame::parse(&frame, MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        if let Message::Close { code, reason } = message::decode(payload).unwrap() {
            last = Some((code, reason));
        }
    }
    last
}

fn ended_event(s: &mut Session) -> replic8::session::EndReason {
    let mut found = None;
    while let Some(e) = s.poll_event() {
        if let SessionEvent::SessionEnded { reason } = e {
            found = Some(reason);
        }
    }
    found.expect("no SessionEnded event")
}

#[test]
fn a_wrong_capability_ends_the_session() {
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_known_feeds("", vec![feed(1)]).unwrap();
    // A stream naming a feed we hold, with a capability made for another connection.
    let cap = replic8::keys::capability(&feed(1), &ExporterSecret([8; 32]), Role::Dialer);
    let refused = s.handle_incoming_stream(FeedStreamHeader::Known {
        discovery_key: feed(1).discovery_key(),
        capability: cap,
    });
    assert_eq!(refused.unwrap_err().0.code, CloseCode::BAD_CAPABILITY);
    assert_eq!(close_sent(&mut s).unwrap().0, CloseCode::BAD_CAPABILITY);
    assert_eq!(ended_event(&mut s).by, Side::Local);

    // The same in a have list.
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_known_feeds("", vec![feed(1)]).unwrap();
    s.handle_message(Message::Have {
        namespace: message::PUBLIC_HANDLE,
        feeds: vec![KnownFeed {
            discovery_key: feed(1).discovery_key(),
            capability: [0; 32],
        }],
    });
    assert_eq!(s.end_reason().unwrap().code, CloseCode::BAD_CAPABILITY);
}

#[test]
fn hostile_inputs_end_the_session_with_a_reason() {
    type Attack = Box<dyn Fn(&mut Session)>;
    let hello = |version: u32| Message::Hello {
        version,
        dialect: message::DIALECT.into(),
        max_streams: 8,
    };
    let bytes = |m: Message| {
        let mut w = Vec::new();
        message::encode(&m, &mut w).unwrap();
        w
    };
    let cases: Vec<(&str, bool, Attack, CloseCode, &str)> = vec![
        (
            "unasked stream",
            true,
            Box::new(|s| {
                let _ = s.handle_incoming_stream(FeedStreamHeader::Offered {
                    by: Role::Acceptor,
                    id: 99,
                });
            }),
            CloseCode::REFUSED_STREAM,
            "not offered and accepted",
        ),
        (
            "stream for a feed offered but not yet accepted by our store",
            true,
            Box::new(move |s| {
                s.handle_message(Message::Offer {
                    namespace: message::PUBLIC_HANDLE,
                    offer: 0,
                    feeds: vec![OfferedFeed {
                        id: 0,
                        key: feed(1),
                        headers: headers(&[]),
                    }],
                });
                let _ = s.handle_incoming_stream(FeedStreamHeader::Offered {
                    by: Role::Dialer,
                    id: 0,
                });
            }),
            CloseCode::REFUSED_STREAM,
            "not offered and accepted",
        ),
        (
            "oversize frame",
            true,
            Box::new(|s| s.handle_control_bytes(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes())),
            CloseCode::FRAME_TOO_LARGE,
            "over the limit",
        ),
        (
            "garbage",
            true,
            Box::new(|s| s.handle_control_bytes(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])),
            CloseCode::PROTOCOL,
            "bad message encoding",
        ),
        (
            "message before hello",
            false,
            Box::new(move |s| s.handle_control_bytes(&bytes(Message::Ready))),
            CloseCode::PROTOCOL,
            "expected hello, got ready",
        ),
        (
            "version mismatch",
            false,
            Box::new(move |s| s.handle_message(hello(6))),
            CloseCode::VERSION_MISMATCH,
            "we speak replic8/5 dialect \"bincode1-varint\", the peer speaks replic8/6",
        ),
        (
            "answer to an offer never made",
            true,
            Box::new(|s| {
                s.handle_message(Message::Answer {
                    offer: 3,
                    accepted: vec![],
                })
            }),
            CloseCode::PROTOCOL,
            "answer to offer 3",
        ),
        (
            "feed offered twice",
            true,
            Box::new(|s| {
                for offer in 0..2 {
                    s.handle_message(Message::Offer {
                        namespace: 77,
                        offer,
                        feeds: vec![OfferedFeed {
                            id: offer,
                            key: feed(1),
                            headers: headers(&[]),
                        }],
                    });
                }
            }),
            CloseCode::PROTOCOL,
            "offered twice",
        ),
        (
            "headers over the bound",
            true,
            Box::new(|s| {
                // Built by hand: `Headers` refuses to hold this, the peer encodes it raw.
                #[derive(serde::Serialize)]
                enum Raw {
                    _Hello,
                    _Tag,
                    Offer {
                        namespace: u32,
                        offer: u64,
                        feeds: Vec<(u64, [u8; 32], Vec<(String, Vec<u8>)>)>,
                    },
                }
                use bincode::Options;
                let payload = message::options()
                    .serialize(&Raw::Offer {
                        namespace: 0u32,
                        offer: 0,
                        feeds: vec![(
                            0,
                            feed(1).0,
                            (0..65).map(|i| (format!("{i}"), vec![])).collect(),
                        )],
                    })
                    .unwrap();
                let mut w = (payload.len() as u32).to_be_bytes().to_vec();
                w.extend(payload);
                s.handle_control_bytes(&w);
            }),
            CloseCode::PROTOCOL,
            "65 entries",
        ),
        (
            "empty offer",
            true,
            Box::new(|s| {
                s.handle_message(Message::Offer {
                    namespace: message::PUBLIC_HANDLE,
                    offer: 0,
                    feeds: vec![],
                })
            }),
            CloseCode::PROTOCOL,
            "offer 0 has no feeds",
        ),
        (
            "notice for a feed not replicated",
            true,
            Box::new(|s| {
                s.handle_message(Message::Notice {
                    feed: feed(1).discovery_key(),
                    length: 1,
                })
            }),
            CloseCode::PROTOCOL,
            "not replicated",
        ),
        (
            "control stream ends inside a frame",
            true,
            Box::new(|s| {
                s.handle_control_bytes(&[0, 0, 0, 10, 1]);
                s.handle_control_end();
            }),
            CloseCode::PROTOCOL,
            "stream ended inside a frame",
        ),
    ];
    for (name, hello_first, attack, code, words) in cases {
        let mut s = if hello_first {
            established_acceptor([3; 32]).0
        } else {
            Session::new(
                live(),
                Role::Acceptor,
                ExporterSecret([3; 32]),
                std::time::Instant::now(),
            )
        };
        attack(&mut s);
        let reason = s
            .end_reason()
            .cloned()
            .unwrap_or_else(|| panic!("{name}: session did not end"));
        assert_eq!(reason.code, code, "{name}: {reason}");
        assert!(reason.reason.contains(words), "{name}: {reason}");
        let (sent_code, sent_reason) =
            close_sent(&mut s).unwrap_or_else(|| panic!("{name}: no close sent"));
        assert_eq!(
            (sent_code, sent_reason.as_str()),
            (code, reason.reason.as_str()),
            "{name}"
        );
        assert_eq!(ended_event(&mut s).code, code, "{name}");
        // Once ended, nothing more happens.
        s.handle_message(Message::Ready);
        assert!(
            s.poll_transmit().is_none() && s.poll_event().is_none(),
            "{name}"
        );
    }
}

#[test]
fn a_store_error_ends_the_session_and_the_peer_learns_which_offer() {
    let mut net = two(Box::new(|_, _| Err("disk full".into())));
    net.create(A, &[(feed(1), 1, headers(&[]))]);
    net.register(0, A, "", None);
    net.register(0, B, "", None);
    net.share(0, A, "", &[feed(1)]);
    net.drive();
    let at_a = net.ended(0, 0).unwrap();
    assert_eq!(
        (at_a.code, at_a.by),
        (CloseCode::ACCEPT_FAILED, Side::Remote)
    );
    // The store's words stay local (they may name the namespace); the peer learns
    // which offer failed.
    assert!(at_a.reason.contains("store refused offer 0"), "{at_a}");
    assert!(!at_a.reason.contains("disk full"), "{at_a}");
    let at_b = net.ended(0, 1).unwrap();
    assert_eq!(at_b.by, Side::Local);
    assert!(at_b.reason.contains("disk full"), "{at_b}");
    assert!(!at_b.is_misbehaviour());
    assert!(net.links[0].ends[0].ever_attached.is_empty());
}

#[test]
fn no_hello_in_time_ends_the_session_under_virtual_time() {
    let mut s = Session::new(
        live(),
        Role::Dialer,
        ExporterSecret([0; 32]),
        std::time::Instant::now(),
    );
    let deadline = s.poll_timeout().unwrap();
    s.handle_timeout(deadline - Duration::from_millis(1));
    assert!(s.end_reason().is_none());
    s.handle_timeout(deadline);
    assert_eq!(s.end_reason().unwrap().code, CloseCode::TIMEOUT);
    assert!(s.poll_timeout().is_none());
}

#[test]
fn ten_thousand_feeds_never_hold_more_streams_than_the_limit() {
    let small = SessionConfig {
        max_streams: 32,
        ..live()
    };
    let mut net = Net::new(live());
    net.add_store("a", accept_all());
    net.add_store("b", accept_all());
    // The acceptor allows 32 streams; the dialer would open 128.
    let l = net.connect_with(A, live(), B, small, [4; 32]);
    let feeds: Vec<_> = (0..10_000).map(|n| (feed(n), 2, headers(&[]))).collect();
    net.create(B, &feeds);
    net.register(l, A, "", None);
    net.register(l, B, "", None);
    let keys: Vec<FeedKey> = feeds.iter().map(|f| f.0).collect();
    net.share(l, B, "", &keys);
    net.drive();
    let dialer = &net.links[l].ends[0];
    assert_eq!(dialer.max_open, 32);
    assert_eq!(dialer.ever_attached.len(), 10_000);
    assert!(dialer.attached.is_empty());
    assert_eq!(dialer.session.open_streams(), 0);
    assert_eq!(net.stores[A].lengths.len(), 10_000);
    assert!(net.stores[A].lengths.values().all(|l| *l == 2));
    // Offers were split to fit the frame and message bounds.
    assert_eq!(offers_sent(&net.links[l].ends[1]).len(), 3);

    // An append on the acceptor reopens just that feed, by a notice.
    net.append(B, feed(77), 5);
    net.drive();
    assert_eq!(net.stores[A].lengths[&feed(77)], 7);
    assert!(net.links[l].ends[1]
        .sent
        .iter()
        .any(|m| matches!(m, Message::Notice { .. })));
    // An append on the dialer reopens it without a notice.
    net.append(A, feed(78), 1);
    net.drive();
    assert_eq!(net.stores[B].lengths[&feed(78)], 3);
    assert_eq!(net.links[l].ends[0].session.open_streams(), 0);
}

#[test]
fn the_acceptor_never_opens_feed_streams_and_refuses_those_opened_by_it() {
    let mut net = two(accept_all());
    net.create(A, &[(feed(1), 1, headers(&[]))]);
    net.register(0, A, "", None);
    net.register(0, B, "", None);
    net.share(0, A, "", &[feed(1)]);
    net.drive();
    assert!(net.links[0].ends[1].ever_attached.contains(&feed(1)));
    // A stream the acceptor opens is refused by the dialer.
    let dialer = &mut net.links[0].ends[0].session;
    let refused = dialer.handle_incoming_stream(FeedStreamHeader::Offered {
        by: Role::Dialer,
        id: 0,
    });
    assert_eq!(refused.unwrap_err().0.code, CloseCode::REFUSED_STREAM);
}

#[test]
fn offers_do_not_loop_in_a_triangle() {
    let mut net = Net::new(live());
    for name in ["a", "b", "c"] {
        let n = net.add_store(name, accept_all());
        net.stores[n].forward = true;
    }
    let ab = net.connect(A, B, [10; 32]);
    let bc = net.connect(B, C, [11; 32]);
    let ca = net.connect(C, A, [12; 32]);
    for (l, x, y) in [(ab, A, B), (bc, B, C), (ca, C, A)] {
        net.register(l, x, "", None);
        net.register(l, y, "", None);
    }
    net.create(A, &[(feed(1), 8, headers(&[("k", b"v")]))]);
    net.share(ab, A, "", &[feed(1)]);
    net.drive();
    // Every node has the feed, headers intact.
    for node in [B, C] {
        assert_eq!(net.stores[node].lengths[&feed(1)], 8);
        assert_eq!(net.stores[node].headers[&feed(1)], headers(&[("k", b"v")]));
    }
    // Each direction of each link carried the feed in at most one offer, and it never
    // went back to the node it came from on that link.
    let mut total = 0;
    for link in &net.links {
        for (side, end) in link.ends.iter().enumerate() {
            let n = offers_sent(end)
                .iter()
                .flat_map(|(_, f)| f)
                .filter(|f| f.key == feed(1))
                .count();
            assert!(n <= 1, "node {} offered the feed {n} times", end.node);
            total += n;
            let other = &link.ends[1 - side];
            let back = offers_sent(other)
                .iter()
                .flat_map(|(_, f)| f)
                .any(|f| f.key == feed(1));
            assert!(!(n == 1 && back), "the feed went both ways on one link");
        }
    }
    // A offered to B; B forwarded to C; C knows A had it (A's offer never went to C,
    // but C learned nothing of A) — at most one more offer on C–A.
    assert!((2..=3).contains(&total), "{total} offers");
    // And a second share of the same feed anywhere sends nothing.
    assert_eq!(net.share(ab, A, "", &[feed(1)]), 0);
    assert_eq!(net.share(bc, B, "", &[feed(1)]), 0);
}

#[test]
fn one_shot_sessions_end_when_everything_is_in_sync_both_ways() {
    let mut net = Net::new(one_shot());
    net.add_store("a", accept_all());
    net.add_store("b", accept_all());
    let l = net.connect(A, B, [6; 32]);
    net.create(A, &[(feed(1), 3, headers(&[]))]);
    net.create(B, &[(feed(2), 4, headers(&[]))]);
    for (node, f) in [(A, feed(1)), (B, feed(2))] {
        net.register(l, node, "", None);
        net.share(l, node, "", &[f]);
    }
    net.drive();
    assert!(net.ended(l, 0).is_none(), "not before both sides are ready");
    net.end(l, A).session.handle_ready().unwrap();
    net.drive();
    assert!(net.ended(l, 0).is_none(), "not before both sides are ready");
    net.end(l, B).session.handle_ready().unwrap();
    net.drive();
    for side in 0..2 {
        let reason = net.ended(l, side).unwrap();
        assert_eq!(reason.code, CloseCode::DONE, "{reason}");
    }
    assert_eq!(net.stores[A].lengths[&feed(2)], 4);
    assert_eq!(net.stores[B].lengths[&feed(1)], 3);
    assert!(net.links[l].ends[0]
        .events
        .contains(&SessionEvent::FeedSynced {
            feed: feed(2),
            length: 4
        }));
}

#[test]
fn a_one_shot_session_with_nothing_to_share_ends_at_once() {
    let mut net = Net::new(one_shot());
    net.add_store("a", accept_all());
    net.add_store("b", accept_all());
    let l = net.connect(A, B, [6; 32]);
    for node in [A, B] {
        net.end(l, node).session.handle_ready().unwrap();
    }
    net.drive();
    assert_eq!(net.ended(l, 0).unwrap().code, CloseCode::DONE);
    assert_eq!(net.ended(l, 1).unwrap().code, CloseCode::DONE);
}

#[test]
fn stream_commands_name_the_namespace_store() {
    let mut net = two(accept_all());
    net.create(B, &[(feed(1), 1, headers(&[]))]);
    net.register(0, A, "photos", None);
    net.register(0, B, "photos", None);
    net.share(0, B, "photos", &[feed(1)]);
    // Drive by hand until the dialer wants a stream.
    for _ in 0..10 {
        for side in 0..2 {
            let [a, b] = &mut net.links[0].ends;
            let (from, to) = if side == 0 { (a, b) } else { (b, a) };
            while let Some(f) = from.session.poll_transmit() {
                from.session.handle_control_written(f.len());
                to.session.handle_control_bytes(&f);
            }
            while let Some(e) = from.session.poll_event() {
                if let SessionEvent::Offered { offer, .. } = e {
                    from.session
                        .handle_offer_answer(offer, Ok(vec![feed(1)]))
                        .unwrap();
                }
            }
            answer_heads(&mut from.session);
        }
    }
    match net.links[0].ends[0].session.poll_stream() {
        Some(StreamCommand::Open {
            feed: f,
            namespace,
            header,
            ..
        }) => {
            assert_eq!((f, namespace.as_str()), (feed(1), "photos"));
            assert_eq!(
                header,
                FeedStreamHeader::Offered {
                    by: Role::Acceptor,
                    id: 0
                }
            );
        }
        other => panic!("expected an open, got {other:?}"),
    }
    let _ = Mode::Live;
}

/// Two nodes share, announce and append in random schedules: feed streams race the
/// control stream and each other. Every schedule must end with both copies equal, no
/// session error, and no stream left open.
#[test]
fn random_schedules_converge_without_protocol_errors() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    for seed in 0..150 {
        let mut rng = StdRng::seed_from_u64(seed);
        let limit = rng.gen_range(1..5);
        let small = SessionConfig {
            max_streams: limit,
            ..live()
        };
        let mut net = Net::new(live());
        net.add_store("a", accept_all());
        net.add_store(
            "b",
            Box::new(|_, feeds| {
                Ok(feeds
                    .iter()
                    .map(|(k, _)| *k)
                    .filter(|k| k.0[0] % 3 != 0 || k.0[3] % 2 == 0)
                    .collect())
            }),
        );
        let l = net.connect_with(A, live(), B, small, [seed as u8; 32]);
        let secret = Some([77; 32]);
        for node in [A, B] {
            net.register(l, node, "", None);
            net.register(l, node, "team", secret);
        }
        // A: feeds 0..12, B: feeds 100..112; both hold 200..204 (all-to-all).
        let a_feeds: Vec<_> = (0..12)
            .map(|n| (feed(n), rng.gen_range(0..5), headers(&[("n", &[n as u8])])))
            .collect();
        let b_feeds: Vec<_> = (100..112)
            .map(|n| (feed(n), rng.gen_range(0..5), headers(&[])))
            .collect();
        let both: Vec<_> = (200..204).map(feed).collect();
        net.create(A, &a_feeds);
        net.create(B, &b_feeds);
        for (i, f) in both.iter().enumerate() {
            net.create(A, &[(*f, i as u64, headers(&[]))]);
            net.create(B, &[(*f, 3 - i as u64, headers(&[]))]);
        }
        let a_keys: Vec<FeedKey> = a_feeds.iter().map(|f| f.0).collect();
        let b_keys: Vec<FeedKey> = b_feeds.iter().map(|f| f.0).collect();
        net.share(l, A, "", &a_keys[..6]);
        net.share(l, A, "team", &a_keys[6..]);
        net.share(l, B, "team", &b_keys);
        // A also offers one feed both already hold: the routes may differ per side.
        net.share(l, A, "team", &both[..1]);
        net.end(l, A)
            .session
            .handle_known_feeds("team", both.clone())
            .unwrap();
        net.end(l, B)
            .session
            .handle_known_feeds("team", both.clone())
            .unwrap();
        net.drive_random(&mut rng, 25);
        net.drive();

        for side in 0..2 {
            assert!(
                net.ended(l, side).is_none(),
                "seed {seed}: {:?}",
                net.ended(l, side)
            );
        }
        let dialer = &net.links[l].ends[0];
        assert!(
            dialer.max_open <= limit as usize,
            "seed {seed}: {} open",
            dialer.max_open
        );
        assert_eq!(
            dialer.session.open_streams(),
            0,
            "seed {seed}: streams left open"
        );
        assert!(net.links[l].ends[1].attached.is_empty(), "seed {seed}");
        let mut replicated = 0;
        for (key, la) in &net.stores[A].lengths {
            if let Some(lb) = net.stores[B].lengths.get(key) {
                replicated += 1;
                assert_eq!(la, lb, "seed {seed}: feed {key:?} differs");
                // The last FeedSynced each side reported is the final length.
                for end in &net.links[l].ends {
                    let last = end.events.iter().rev().find_map(|e| match e {
                        SessionEvent::FeedSynced { feed: f, length } if f == key => Some(*length),
                        _ => None,
                    });
                    assert_eq!(last, Some(*la), "seed {seed}: {key:?} at node {}", end.node);
                }
            }
        }
        assert!(
            replicated >= 4 + 12,
            "seed {seed}: only {replicated} feeds replicated"
        );
    }
}

#[test]
fn random_one_shot_schedules_end_done_with_equal_copies() {
    use rand::{rngs::StdRng, SeedableRng};
    for seed in 0..100 {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let mut net = Net::new(one_shot());
        net.add_store("a", accept_all());
        net.add_store("b", accept_all());
        let l = net.connect(A, B, [seed as u8; 32]);
        net.create(
            A,
            &(0..5)
                .map(|n| (feed(n), n as u64 + 1, headers(&[])))
                .collect::<Vec<_>>(),
        );
        net.create(
            B,
            &(10..15)
                .map(|n| (feed(n), 2, headers(&[])))
                .collect::<Vec<_>>(),
        );
        for (node, range) in [(A, 0..5), (B, 10..15)] {
            net.register(l, node, "s", Some([5; 32]));
            let keys: Vec<FeedKey> = range.map(feed).collect();
            net.share(l, node, "s", &keys);
            net.end(l, node).session.handle_ready().unwrap();
        }
        net.drive_random(&mut rng, 0);
        for side in 0..2 {
            let reason = net
                .ended(l, side)
                .unwrap_or_else(|| panic!("seed {seed}: side {side} still up"));
            assert_eq!(reason.code, CloseCode::DONE, "seed {seed}: {reason}");
        }
        assert_eq!(net.stores[A].lengths, net.stores[B].lengths, "seed {seed}");
        assert_eq!(net.stores[A].lengths.len(), 10);
    }
}

#[test]
fn random_triangle_schedules_forward_without_loops() {
    use rand::{rngs::StdRng, SeedableRng};
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(2000 + seed);
        let mut net = Net::new(live());
        for name in ["a", "b", "c"] {
            let n = net.add_store(name, accept_all());
            net.stores[n].forward = true;
        }
        let links = [
            net.connect(A, B, [1; 32]),
            net.connect(B, C, [2; 32]),
            net.connect(C, A, [3; 32]),
        ];
        for l in links {
            for side in 0..2 {
                let node = net.links[l].ends[side].node;
                net.register(l, node, "", None);
            }
        }
        net.create(A, &[(feed(1), 4, headers(&[("from", b"a")]))]);
        net.create(C, &[(feed(2), 2, headers(&[("from", b"c")]))]);
        net.share(links[0], A, "", &[feed(1)]);
        net.share(links[1], C, "", &[feed(2)]);
        net.drive_random(&mut rng, 10);
        net.drive();
        for node in [A, B, C] {
            assert_eq!(
                net.stores[node].lengths.len(),
                2,
                "seed {seed}: node {node}"
            );
            assert_eq!(
                net.stores[node].headers[&feed(1)],
                headers(&[("from", b"a")])
            );
        }
        for link in &net.links {
            for end in &link.ends {
                assert!(end.session.end_reason().is_none(), "seed {seed}");
                for f in [feed(1), feed(2)] {
                    let n = offers_sent(end)
                        .iter()
                        .flat_map(|(_, x)| x)
                        .filter(|o| o.key == f)
                        .count();
                    assert!(
                        n <= 1,
                        "seed {seed}: node {} offered {f:?} {n} times",
                        end.node
                    );
                }
            }
        }
        let (a, b, c) = (
            &net.stores[A].lengths,
            &net.stores[B].lengths,
            &net.stores[C].lengths,
        );
        assert!(a == b && b == c, "seed {seed}: {a:?} {b:?} {c:?}");
    }
}

#[test]
fn a_proof_that_arrives_before_the_namespace_is_registered_still_counts() {
    let mut net = two(accept_all());
    net.create(A, &[(feed(1), 2, headers(&[]))]);
    net.register(0, B, "team", Some([3; 32]));
    net.register(0, A, "", None);
    net.drive();
    // B's proof reached A before A knew "team"; A registers it now and shares.
    net.register(0, A, "team", Some([3; 32]));
    net.share(0, A, "team", &[feed(1)]);
    net.drive();
    assert_eq!(net.stores[B].lengths.get(&feed(1)), Some(&2));
    assert!(net.ended(0, 0).is_none());
}

#[test]
fn have_lists_of_a_secret_namespace_wait_for_the_proof() {
    let mut net = two(accept_all());
    net.create(A, &[(feed(1), 2, headers(&[]))]);
    net.create(B, &[(feed(1), 5, headers(&[]))]);
    net.register(0, A, "team", Some([3; 32]));
    net.register(0, B, "team", None);
    net.end(0, A)
        .session
        .handle_known_feeds("team", vec![feed(1)])
        .unwrap();
    net.end(0, B)
        .session
        .handle_known_feeds("team", vec![feed(1)])
        .unwrap();
    net.drive();
    // B never proved: A sent no have list, nothing replicated.
    assert!(!net.links[0].ends[0]
        .sent
        .iter()
        .any(|m| matches!(m, Message::Have { .. })));
    assert!(net.links[0].ends[0].ever_attached.is_empty());
    assert_eq!(net.stores[A].lengths[&feed(1)], 2);
}

#[test]
fn an_offer_in_a_secret_namespace_from_a_peer_that_did_not_prove_it_is_not_accepted() {
    let (mut s, _) = established_acceptor([4; 32]);
    s.handle_register_namespace("team", Some(NamespaceSecret([1; 32])))
        .unwrap();
    s.handle_message(Message::Offer {
        namespace: 1,
        offer: 0,
        feeds: vec![OfferedFeed {
            id: 0,
            key: feed(1),
            headers: headers(&[]),
        }],
    });
    assert!(s.end_reason().is_none());
    let mut answers = Vec::new();
    while let Some(frame) = s.poll_transmit() {
        let (payload, _) = replic8::frame::parse(&frame, MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        if let Message::Answer { offer, accepted } = message::decode(payload).unwrap() {
            answers.push((offer, accepted));
        }
    }
    assert_eq!(answers, vec![(0, vec![])]);
    while let Some(e) = s.poll_event() {
        assert!(
            !matches!(e, SessionEvent::Offered { .. }),
            "the store was asked"
        );
    }
}

/// Regression: feed ids were given at share time, so an offer that waited for a proof
/// went out with smaller ids than a later public one, and the peer ended the session.
#[test]
fn an_offer_that_waited_for_a_proof_still_has_increasing_ids() {
    let mut net = two(accept_all());
    net.create(A, &[(feed(1), 1, headers(&[])), (feed(2), 1, headers(&[]))]);
    net.register(0, A, "team", Some([8; 32]));
    net.register(0, A, "", None);
    net.register(0, B, "", None);
    net.share(0, A, "team", &[feed(1)]);
    net.share(0, A, "", &[feed(2)]);
    net.drive();
    // B registers the secret namespace late: A's waiting offer goes out now.
    net.register(0, B, "team", Some([8; 32]));
    net.drive();
    assert!(
        net.ended(0, 0).is_none() && net.ended(0, 1).is_none(),
        "{:?}",
        net.ended(0, 1)
    );
    assert_eq!(net.stores[B].lengths.len(), 2);
}

/// Namespaces registered, feeds shared and feeds announced at random moments while
/// everything else is in flight: the session never breaks and ends with equal copies.
#[test]
fn random_late_registrations_and_shares_converge() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    for seed in 0..150 {
        let mut rng = StdRng::seed_from_u64(5000 + seed);
        let mut net = Net::new(live());
        net.add_store("a", accept_all());
        net.add_store("b", accept_all());
        let l = net.connect(A, B, [seed as u8; 32]);
        let secret = Some([3; 32]);
        net.create(
            A,
            &(0..6)
                .map(|n| (feed(n), n as u64, headers(&[])))
                .collect::<Vec<_>>(),
        );
        net.create(
            B,
            &(10..16)
                .map(|n| (feed(n), 1, headers(&[])))
                .collect::<Vec<_>>(),
        );
        net.create(A, &[(feed(99), 4, headers(&[]))]);
        net.create(B, &[(feed(99), 9, headers(&[]))]);
        // Steps, in a random order, with random traffic in between.
        let mut steps: Vec<u8> = (0..8).collect();
        for i in (1..steps.len()).rev() {
            steps.swap(i, rng.gen_range(0..=i));
        }
        let mut registered = [[false; 2]; 2]; // [node][0: public, 1: team]
        let mut announced = false;
        for step in steps {
            match step {
                0 => {
                    net.register(l, A, "", None);
                    registered[0][0] = true;
                }
                1 => {
                    net.register(l, B, "", None);
                    registered[1][0] = true;
                }
                2 => {
                    net.register(l, A, "team", secret);
                    registered[0][1] = true;
                }
                3 => {
                    net.register(l, B, "team", secret);
                    registered[1][1] = true;
                }
                4 if registered[0][0] => {
                    net.share(l, A, "", &[feed(0), feed(1), feed(2)]);
                }
                5 if registered[0][1] => {
                    net.share(l, A, "team", &[feed(3), feed(4), feed(5)]);
                }
                6 if registered[1][1] => {
                    net.share(l, B, "team", &(10..16).map(feed).collect::<Vec<_>>());
                }
                7 if registered[0][1] && registered[1][1] => {
                    net.end(l, A)
                        .session
                        .handle_known_feeds("team", vec![feed(99)])
                        .unwrap();
                    net.end(l, B)
                        .session
                        .handle_known_feeds("team", vec![feed(99)])
                        .unwrap();
                    announced = true;
                }
                _ => {}
            }
            let n = rng.gen_range(0..20);
            net.drive_random_steps(&mut rng, n);
        }
        net.drive_random(&mut rng, 0);
        for side in 0..2 {
            assert!(
                net.ended(l, side).is_none(),
                "seed {seed}: {:?}",
                net.ended(l, side)
            );
        }
        for (key, la) in &net.stores[A].lengths {
            if *key == feed(99) && !announced {
                continue; // held by both, never announced: not replicated
            }
            if let Some(lb) = net.stores[B].lengths.get(key) {
                assert_eq!(la, lb, "seed {seed}: {key:?}");
            }
        }
        if announced {
            assert_eq!(net.stores[A].lengths[&feed(99)], 9, "seed {seed}");
        }
        assert_eq!(
            net.links[l].ends[0].session.open_streams(),
            0,
            "seed {seed}"
        );
    }
}

fn encoded(message: &Message) -> Vec<u8> {
    let mut wire = Vec::new();
    message::encode(message, &mut wire).unwrap();
    wire
}

#[test]
fn a_control_frame_that_never_completes_ends_the_session_after_the_stall_timeout() {
    let t0 = std::time::Instant::now();
    let stall = live().stall_timeout;
    let (mut s, _) = established_acceptor([7; 32]);
    // The session read the clock while being set up, between `t0` and `t1`.
    let t1 = std::time::Instant::now();
    while s.poll_event().is_some() {}
    assert_eq!(s.poll_timeout(), None, "an idle session has no timer");
    // Half a `Ready` frame, then a byte at a time, each within the timeout: the frame
    // as a whole still may not take longer than one stall timeout.
    let frame = encoded(&Message::Ready);
    s.handle_control_bytes(&frame[..2]);
    let asked = s.poll_timeout().expect("a partial frame arms a timer");
    assert!(asked <= t1, "the start is learned at once");
    s.handle_timeout(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + stall));
    s.handle_control_bytes(&frame[2..3]);
    s.handle_timeout(t0 + stall / 2);
    assert_eq!(s.end_reason(), None);
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + stall),
        "the same frame keeps its start"
    );
    s.handle_timeout(t0 + stall);
    let reason = ended_event(&mut s);
    assert_eq!(reason.code, CloseCode::TIMEOUT);
    assert!(reason.reason.contains("stalled"), "{reason}");
    assert!(!reason.is_misbehaviour(), "a stall is a timeout, not a ban");
    assert_eq!(close_sent(&mut s).map(|c| c.0), Some(CloseCode::TIMEOUT));
}

#[test]
fn frames_that_complete_keep_the_session_and_disarm_the_stall_timer() {
    let t0 = std::time::Instant::now();
    let stall = live().stall_timeout;
    let (mut s, _) = established_acceptor([7; 32]);
    let frame = encoded(&Message::Ready);
    // The frame completes just within the timeout.
    s.handle_control_bytes(&frame[..1]);
    s.handle_timeout(t0);
    s.handle_timeout(t0 + stall - Duration::from_millis(1));
    s.handle_control_bytes(&frame[1..]);
    assert_eq!(s.end_reason(), None);
    assert_eq!(s.poll_timeout(), None);
    let ready_then_partial = [encoded(&Message::Ready), frame[..1].to_vec()].concat();
    s.handle_control_bytes(&ready_then_partial);
    // (A second ready is a protocol error: the peer misbehaved.)
    let reason = s.end_reason().cloned().unwrap();
    assert_eq!(reason.code, CloseCode::PROTOCOL);
    assert!(reason.is_misbehaviour());
    assert_eq!(s.poll_timeout(), None, "an ended session has no timer");
}

#[test]
fn only_the_peers_protocol_violations_count_as_misbehaviour() {
    use replic8::session::EndReason;
    let reason = |code, by, peer_at_fault| EndReason {
        code,
        by,
        reason: "x".into(),
        peer_at_fault,
    };
    // Only our own end, set as the peer's fault, counts; the peer closing with any code
    // says it thinks *we* misbehaved.
    for code in [CloseCode::PROTOCOL, CloseCode::BAD_PROOF] {
        assert!(reason(code, Side::Local, true).is_misbehaviour(), "{code}");
        assert!(
            !reason(code, Side::Local, false).is_misbehaviour(),
            "{code}"
        );
        assert!(
            !reason(code, Side::Remote, true).is_misbehaviour(),
            "{code}"
        );
    }
    // Real ends: the peer's violations are its fault, timeouts and closes are not.
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_control_bytes(&[0xff; 8]);
    let end = ended_event(&mut s);
    assert_eq!(end.code, CloseCode::FRAME_TOO_LARGE);
    assert!(end.is_misbehaviour(), "{end}");
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_close("bye");
    assert!(!ended_event(&mut s).is_misbehaviour());
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_connection_lost(Some(CloseCode::PROTOCOL), "you broke it".into());
    let end = ended_event(&mut s);
    assert_eq!(end.by, Side::Remote);
    assert!(!end.is_misbehaviour(), "{end}");
    // A version mismatch from a real hello: no ban.
    let mut s = Session::new(
        live(),
        Role::Acceptor,
        ExporterSecret([7; 32]),
        std::time::Instant::now(),
    );
    s.handle_control_bytes(&encoded(&Message::Hello {
        version: message::PROTOCOL_VERSION + 1,
        dialect: message::DIALECT.into(),
        max_streams: 8,
    }));
    let reason = ended_event(&mut s);
    assert_eq!(reason.code, CloseCode::VERSION_MISMATCH);
    assert!(!reason.is_misbehaviour());
    // A control stream that ends without a close: no ban (a peer cut short does this).
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_control_end();
    let reason = ended_event(&mut s);
    assert_eq!(reason.code, CloseCode::PROTOCOL);
    assert!(!reason.is_misbehaviour(), "{reason}");
    // A frame that ends with the stream: misbehaviour.
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_control_bytes(&encoded(&Message::Ready)[..2]);
    s.handle_control_end();
    let reason = ended_event(&mut s);
    assert!(reason.is_misbehaviour(), "{reason}");
}

#[test]
fn a_stalled_feed_or_stream_header_ends_the_session_without_a_ban() {
    let feed = FeedKey([3; 32]);
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_feed_stalled(&feed, "request for blocks 0..64 timed out");
    let reason = ended_event(&mut s);
    assert_eq!(reason.code, CloseCode::TIMEOUT);
    assert!(reason.reason.contains("timed out"), "{reason}");
    assert!(!reason.is_misbehaviour(), "a slow peer is not banned");

    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_stream_header_stalled();
    let reason = ended_event(&mut s);
    assert_eq!(reason.code, CloseCode::TIMEOUT);
    assert!(reason.reason.contains("header stalled"), "{reason}");
    assert!(!reason.is_misbehaviour());

    // A fault in a feed the session does not replicate ends nothing.
    let (mut s, _) = established_acceptor([7; 32]);
    s.handle_feed_failed(&feed, "block 3 does not verify");
    assert!(s.end_reason().is_none());
}

// ---- issue 12: honest limits, feed faults, bounded output ----

fn offer(
    handle: u32,
    offer: u64,
    first_id: u64,
    keys: &[FeedKey],
    h: &message::Headers,
) -> Message {
    Message::Offer {
        namespace: handle,
        offer,
        feeds: keys
            .iter()
            .enumerate()
            .map(|(i, key)| OfferedFeed {
                id: first_id + i as u64,
                key: *key,
                headers: h.clone(),
            })
            .collect(),
    }
}

fn fresh_key(n: u64) -> FeedKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&n.to_le_bytes());
    k[8] = 0xfe;
    FeedKey(k)
}

#[test]
fn haves_past_the_unmatched_bound_are_dropped_not_misbehaviour() {
    // Fails on the old code: more than 100,000 unmatched `have` entries ended the
    // session as a protocol error, and an honest peer holding many feeds we lack
    // sends that many.
    let (mut s, _) = established_acceptor([7; 32]);
    let total = MAX_UNMATCHED_HAVE + 5_000;
    let mut n = 0u64;
    while (n as usize) < total {
        let feeds = (0..message::MAX_FEEDS_PER_MESSAGE)
            .map(|i| KnownFeed {
                discovery_key: fresh_key(n + i as u64).discovery_key(),
                capability: [1; 32],
            })
            .collect();
        s.handle_message(Message::Have {
            namespace: message::PUBLIC_HANDLE,
            feeds,
        });
        n += message::MAX_FEEDS_PER_MESSAGE as u64;
    }
    assert!(s.end_reason().is_none(), "{:?}", s.end_reason());
}

#[test]
fn offers_past_the_peer_feed_bound_are_refused_at_once_not_misbehaviour() {
    // Fails on the old code: more than 1M offered feeds ended the session as a
    // protocol error; an honest forwarding peer can offer that many.
    let (mut s, _) = established_acceptor([7; 32]);
    take_sent(&mut s);
    let per = message::MAX_FEEDS_PER_MESSAGE;
    let offers = MAX_PEER_FEEDS / per + 2;
    let none = headers(&[]);
    for o in 0..offers as u64 {
        let keys: Vec<FeedKey> = (0..per as u64)
            .map(|i| fresh_key(o * per as u64 + i))
            .collect();
        // A namespace we do not have: answered at once, but the feeds count.
        s.handle_message(offer(77, o, o * per as u64, &keys, &none));
    }
    assert!(s.end_reason().is_none(), "{:?}", s.end_reason());
    let answers: Vec<Message> = take_sent(&mut s);
    assert_eq!(answers.len(), offers, "every offer is answered");
    assert!(answers
        .iter()
        .all(|m| matches!(m, Message::Answer { accepted, .. } if accepted.is_empty())));
    assert_eq!(s.stats().feeds_offered_to_us, (offers * per) as u64);
}

#[test]
fn an_offer_over_the_pending_bytes_budget_is_refused_at_once_not_misbehaviour() {
    // Fails on the old code: every offer went to the store, without a byte budget.
    let (mut s, _) = established_acceptor([7; 32]);
    take_sent(&mut s);
    let big = headers(&[("blob", &[7u8; 4000])]);
    // About 1 MiB per offer: four fit in the budget, the fifth does not.
    let per = 250u64;
    for o in 0..5u64 {
        let keys: Vec<FeedKey> = (0..per).map(|i| fresh_key(o * per + i)).collect();
        s.handle_message(offer(message::PUBLIC_HANDLE, o, o * per, &keys, &big));
    }
    assert!(s.end_reason().is_none(), "{:?}", s.end_reason());
    let mut offered = Vec::new();
    while let Some(e) = s.poll_event() {
        if let SessionEvent::Offered { offer, .. } = e {
            offered.push(offer);
        }
    }
    assert_eq!(offered, vec![0, 1, 2, 3], "held for the store");
    assert_eq!(
        take_sent(&mut s),
        vec![Message::Answer {
            offer: 4,
            accepted: vec![]
        }],
        "the fifth is refused at once"
    );
    // Once the store answers, room is made again.
    s.handle_offer_answer(0, Ok(vec![])).unwrap();
    let keys: Vec<FeedKey> = (0..per).map(|i| fresh_key(5 * per + i)).collect();
    s.handle_message(offer(message::PUBLIC_HANDLE, 5, 5 * per, &keys, &big));
    assert!(std::iter::from_fn(|| s.poll_event())
        .any(|e| matches!(e, SessionEvent::Offered { offer: 5, .. })));
}

#[test]
fn our_sender_never_has_more_offers_unanswered_than_the_peer_allows() {
    // Fails on the old code: 300 shares sent 300 offers at once, and the peer ended
    // the session as misbehaviour past 256.
    let mut s = Session::new(
        live(),
        Role::Dialer,
        ExporterSecret([1; 32]),
        std::time::Instant::now(),
    );
    s.handle_register_namespace("", None).unwrap();
    s.handle_control_bytes(&hello_frame());
    for n in 0..300u64 {
        s.handle_share("", vec![(fresh_key(n), headers(&[]))])
            .unwrap();
    }
    let offers = |sent: &[Message]| {
        sent.iter()
            .filter_map(|m| match m {
                Message::Offer { offer, feeds, .. } => Some((*offer, feeds.len())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let first = offers(&take_sent(&mut s));
    assert_eq!(first.len(), MAX_PENDING_PEER_OFFERS);
    // An answer makes room: the 44 waiting feeds go out in one offer.
    s.handle_message(Message::Answer {
        offer: 0,
        accepted: vec![],
    });
    assert_eq!(offers(&take_sent(&mut s)), vec![(256, 44)]);
    assert!(s.end_reason().is_none());
}

/// Offers in a namespace we do not have, each answered at once (a few bytes), until we
/// stop reading; returns how many were read.
fn offers_until_we_stop_reading(s: &mut Session) -> u64 {
    let none = headers(&[]);
    let mut n = 0u64;
    while s.wants_control_bytes() {
        let mut wire = Vec::new();
        for _ in 0..1000 {
            let id = (1 << 60) + n;
            message::encode(
                &offer(77, id, id, &[fresh_key(200_000 + n)], &none),
                &mut wire,
            )
            .unwrap();
            n += 1;
        }
        s.handle_control_bytes(&wire);
        assert!(n < 1_000_000, "our reading never stopped");
    }
    n
}

#[test]
fn our_own_output_never_stops_our_reading() {
    // Fails on the old code: our own `have` lists filled the queue to the bound at which
    // we stop reading, so two peers with 100,000 feeds each both stopped reading with
    // full queues and waited for each other until the stall timeout, at every reconnect.
    let start = std::time::Instant::now();
    let mut s = Session::new(live(), Role::Acceptor, ExporterSecret([1; 32]), start);
    s.handle_register_namespace("", None).unwrap();
    s.handle_control_bytes(&hello_frame());
    // Our own output: 40,000 `have` entries, about 2.6 MB, none of it written yet.
    s.handle_known_feeds("", (0..40_000).map(fresh_key).collect())
        .unwrap();
    while s.poll_transmit().is_some() {}
    let queued = s.queued_bytes();
    assert!(queued >= MAX_PUMPED_CONTROL_BYTES, "{queued}");
    assert!(queued < MAX_QUEUED_CONTROL_BYTES, "{queued}");
    assert!(
        s.wants_control_bytes(),
        "our own output stopped our reading"
    );
    // The peer's messages are still read and answered.
    let none = headers(&[]);
    let mut wire = Vec::new();
    message::encode(&offer(77, 1, 1, &[fresh_key(100_000)], &none), &mut wire).unwrap();
    s.handle_control_bytes(&wire);
    assert!(s.poll_transmit().is_some(), "the offer was not answered");
}

#[test]
fn a_peer_that_does_not_read_stops_our_reading_then_ends_with_a_timeout_not_a_ban() {
    // Fails on the old code: nothing bounded our queued output and nothing stopped
    // reading (the driver's queue grew without limit).
    let start = std::time::Instant::now();
    let mut s = Session::new(live(), Role::Acceptor, ExporterSecret([1; 32]), start);
    s.handle_register_namespace("", None).unwrap();
    s.handle_control_bytes(&hello_frame());
    // Our own output (20,000 `have` entries, about 1.3 MB) then our answers to the
    // peer's offers, none of it written: at the bound we stop reading.
    let keys: Vec<FeedKey> = (0..20_000).map(fresh_key).collect();
    s.handle_known_feeds("", keys).unwrap();
    offers_until_we_stop_reading(&mut s);
    let mut given = Vec::new();
    while let Some(frame) = s.poll_transmit() {
        given.push(frame);
    }
    let queued = s.queued_bytes();
    assert!(queued >= MAX_QUEUED_CONTROL_BYTES, "{queued}");
    assert_eq!(s.stats().queued_bytes, queued as u64);
    assert!(!s.wants_control_bytes());
    // The peer keeps sending offers: none is read, so nothing more is queued.
    let none = headers(&[]);
    let mut wire = Vec::new();
    for o in 0..1000u64 {
        message::encode(
            &offer(77, o, o, &[fresh_key(100_000 + o)], &none),
            &mut wire,
        )
        .unwrap();
    }
    s.handle_control_bytes(&wire);
    assert!(s.poll_transmit().is_none(), "an offer was answered");
    assert_eq!(s.queued_bytes(), queued);
    // The writer gets some of it out: below the bound, the buffered offers are read.
    let mut written = 0;
    for frame in &given {
        if s.queued_bytes() < MAX_QUEUED_CONTROL_BYTES {
            break;
        }
        s.handle_control_written(frame.len());
        written += 1;
    }
    assert!(written > 0);
    assert!(
        s.poll_transmit().is_some(),
        "the offers are read and answered"
    );
    assert!(s.stats().peak_queued_bytes <= (MAX_QUEUED_CONTROL_BYTES + MAX_FRAME_LEN) as u64);

    // A peer that keeps us blocked past the stall timeout: `timeout`, no ban.
    let mut s = Session::new(live(), Role::Acceptor, ExporterSecret([1; 32]), start);
    s.handle_register_namespace("", None).unwrap();
    s.handle_control_bytes(&hello_frame());
    s.handle_known_feeds("", (0..20_000).map(fresh_key).collect())
        .unwrap();
    offers_until_we_stop_reading(&mut s);
    let at = s.poll_timeout().unwrap();
    s.handle_timeout(at);
    let stall = SessionConfig::default().stall_timeout;
    s.handle_timeout(at + stall - Duration::from_millis(1));
    assert!(s.end_reason().is_none());
    // A write (the peer took a little) restarts the wait.
    let first = s.poll_transmit().unwrap();
    s.handle_control_written(first.len());
    assert!(!s.wants_control_bytes());
    let at = at + stall - Duration::from_millis(1);
    s.handle_timeout(at);
    s.handle_timeout(at + stall - Duration::from_millis(1));
    assert!(s.end_reason().is_none());
    s.handle_timeout(at + stall);
    let reason = s.end_reason().unwrap();
    assert_eq!(reason.code, CloseCode::TIMEOUT, "{reason}");
    assert!(!reason.is_misbehaviour());
    assert!(reason.reason.contains("read none"), "{reason}");
}

#[test]
fn a_fault_in_one_feed_stops_that_feed_on_both_sides_and_the_others_go_on() {
    // Fails on the old code: a store's `FeedFailed` ended the whole session with
    // `protocol error`, and the node banned the peer (an honest relay of a fork).
    let mut net = two(accept_all());
    net.create(A, &[(feed(1), 4, headers(&[])), (feed(2), 3, headers(&[]))]);
    net.register(0, A, "", None);
    net.register(0, B, "", None);
    net.share(0, A, "", &[feed(1), feed(2)]);
    net.drive();
    assert_eq!(net.stores[B].lengths[&feed(1)], 4);
    // B's store finds a fork in feed 1.
    net.end(0, B)
        .session
        .handle_feed_failed(&feed(1), "fork at length 4");
    net.drive();
    net.append(A, feed(1), 2);
    net.append(A, feed(2), 2);
    net.drive();
    for side in 0..2 {
        assert!(net.ended(0, side).is_none(), "{:?}", net.ended(0, side));
        let stops: Vec<&SessionEvent> = net.links[0].ends[side]
            .events
            .iter()
            .filter(|e| matches!(e, SessionEvent::FeedStopped { feed: f, .. } if *f == feed(1)))
            .collect();
        assert_eq!(stops.len(), 1, "side {side}: {stops:?}");
    }
    assert!(matches!(
        &net.links[0].ends[1].events.iter().find(|e| matches!(e, SessionEvent::FeedStopped { .. })),
        Some(SessionEvent::FeedStopped { reason, .. }) if reason.contains("fault: fork")
    ));
    assert_eq!(net.stores[B].lengths[&feed(2)], 5, "the other feed goes on");
    assert_eq!(
        net.stores[B].lengths[&feed(1)],
        4,
        "the stopped feed is not reopened"
    );
    assert_eq!(net.end(0, B).session.stats().feeds_faulted, 1);
}

// ---- the driver's bookkeeping, held by the core: readiness and the streams stores hold ----

fn session(role: Role) -> Session {
    Session::new(
        live(),
        role,
        ExporterSecret([3; 32]),
        std::time::Instant::now(),
    )
}

fn store_calls(s: &mut Session) -> Vec<StoreCall> {
    std::iter::from_fn(|| s.poll_store()).collect()
}

fn shares(namespace: &str) -> StoreCall {
    StoreCall::Shares {
        namespace: namespace.into(),
    }
}

fn known(namespace: &str) -> StoreCall {
    StoreCall::Known {
        namespace: namespace.into(),
    }
}

/// Moves control frames both ways and accepts every offer, until nothing moves.
fn exchange(dialer: &mut Session, acceptor: &mut Session) {
    loop {
        let mut moved = false;
        for side in 0..2 {
            let (from, to) = if side == 0 {
                (&mut *dialer, &mut *acceptor)
            } else {
                (&mut *acceptor, &mut *dialer)
            };
            while let Some(frame) = from.poll_transmit() {
                moved = true;
                from.handle_control_written(frame.len());
                to.handle_control_bytes(&frame);
            }
            while let Some(event) = from.poll_event() {
                if let SessionEvent::Offered { offer, feeds, .. } = event {
                    moved = true;
                    let keys = feeds.into_iter().map(|(key, _)| key).collect();
                    from.handle_offer_answer(offer, Ok(keys)).unwrap();
                }
            }
            moved |= answer_heads(from);
        }
        if !moved {
            return;
        }
    }
}

/// Answers the session's store calls, all `Heads` here, with "not complete": every
/// replicated feed then gets a stream. Returns whether there was any.
fn answer_heads(s: &mut Session) -> bool {
    let mut any = false;
    while let Some(call) = s.poll_store() {
        let StoreCall::Heads { feeds, .. } = call else {
            panic!("expected a heads call, got {call:?}");
        };
        s.handle_heads(&feeds, Ok(vec![None; feeds.len()]));
        any = true;
    }
    any
}

/// A dialer with `n` feed streams open (the acceptor took them all), from the
/// acceptor's share of `feed(1)..=feed(n)`: (dialer, acceptor, opens as (feed, header,
/// dialer's stream id, acceptor's stream id)).
fn streams_open(
    n: u32,
) -> (
    Session,
    Session,
    Vec<(FeedKey, FeedStreamHeader, StreamId, StreamId)>,
) {
    let (mut dialer, mut acceptor) = (session(Role::Dialer), session(Role::Acceptor));
    for s in [&mut dialer, &mut acceptor] {
        s.handle_register_namespace("", None).unwrap();
    }
    let list = (1..=n).map(|i| (feed(i), headers(&[]))).collect();
    acceptor.handle_share("", list).unwrap();
    exchange(&mut dialer, &mut acceptor);
    let mut opens = Vec::new();
    while let Some(command) = dialer.poll_stream() {
        let StreamCommand::Open {
            feed,
            header,
            stream,
            ..
        } = command
        else {
            panic!("expected opens only, got {command:?}");
        };
        let incoming = acceptor.handle_incoming_stream(header.clone()).unwrap();
        assert_eq!(incoming.replaces, None);
        opens.push((feed, header, stream, incoming.stream));
    }
    assert_eq!(opens.len(), n as usize, "{opens:?}");
    (dialer, acceptor, opens)
}

fn detached(s: &mut Session) -> Vec<(FeedKey, StreamId)> {
    store_calls(s)
        .into_iter()
        .map(|call| match call {
            StoreCall::Detach {
                feed,
                namespace,
                stream,
            } => {
                assert_eq!(namespace, "");
                (feed, stream)
            }
            other => panic!("expected only detaches after the end, got {other:?}"),
        })
        .collect()
}

#[test]
fn ready_waits_until_every_served_store_said_what_it_shares_and_holds() {
    let mut s = session(Role::Acceptor);
    s.handle_control_bytes(&hello_frame());
    s.handle_serve_namespace("", None).unwrap();
    s.handle_serve_namespace("photos", None).unwrap();
    // A namespace that cannot be registered asks no store and holds nothing up.
    let taken = s.handle_serve_namespace("photos", Some(NamespaceSecret([1; 32])));
    assert!(taken.is_err());
    s.handle_ready().unwrap();
    assert_eq!(store_calls(&mut s), vec![shares(""), shares("photos")]);

    // Each store is asked what it holds only once it said what it shares.
    s.handle_shares("", Ok(vec![(feed(1), headers(&[]))]));
    assert_eq!(store_calls(&mut s), vec![known("")]);
    s.handle_known("", Ok(vec![feed(2)]));
    let sent = take_sent(&mut s);
    assert!(sent.iter().any(|m| matches!(m, Message::Offer { .. })));
    assert!(
        !sent.contains(&Message::Ready),
        "ready before photos answered: {sent:?}"
    );

    // A store that cannot answer shares and holds nothing, and still counts as answered.
    s.handle_shares("photos", Err("disk gone".into()));
    assert_eq!(store_calls(&mut s), vec![known("photos")]);
    assert!(!take_sent(&mut s).contains(&Message::Ready));
    s.handle_known("photos", Err("disk gone".into()));
    assert_eq!(take_sent(&mut s), vec![Message::Ready]);
    assert!(store_calls(&mut s).is_empty());
    assert_eq!(s.end_reason(), None);

    // A namespace served after the start asks its store; `Ready` is not sent again.
    s.handle_serve_namespace("music", None).unwrap();
    s.handle_shares("music", Ok(Vec::new()));
    s.handle_known("music", Ok(Vec::new()));
    assert_eq!(store_calls(&mut s), vec![shares("music"), known("music")]);
    assert!(!take_sent(&mut s).contains(&Message::Ready));
}

#[test]
fn with_no_served_namespace_ready_goes_out_at_once() {
    let mut s = session(Role::Dialer);
    s.handle_ready().unwrap();
    s.handle_control_bytes(&hello_frame());
    let sent = take_sent(&mut s);
    assert_eq!(sent.last(), Some(&Message::Ready), "{sent:?}");
    assert!(store_calls(&mut s).is_empty());
}

#[test]
fn the_end_detaches_exactly_the_streams_stores_still_hold() {
    let (mut dialer, mut acceptor, opens) = streams_open(4);
    let [one, two, three, four] = [0, 1, 2, 3].map(|i| opens[i].clone());

    // Feed 1's stream ended (its store reported it): taken back already, on both sides.
    dialer.handle_stream_closed(&one.0, one.2);
    acceptor.handle_stream_closed(&one.0, one.3);
    // Feed 2's stream is replaced on the acceptor by a new one (the old end not seen yet).
    let again = acceptor.handle_incoming_stream(two.1.clone()).unwrap();
    assert_eq!(again.replaces, Some(two.3));
    // Feed 3 stops on a fault: the dialer closes its stream, but the session ends
    // before that close is carried out, so the store still holds the stream.
    dialer.handle_feed_failed(&three.0, "bad block");
    assert!(
        store_calls(&mut dialer).is_empty(),
        "no detach before the end"
    );

    dialer.handle_close("bye");
    assert_eq!(
        dialer.poll_stream(),
        None,
        "nothing is opened or closed after the end"
    );
    assert_eq!(
        detached(&mut dialer),
        vec![(two.0, two.2), (three.0, three.2), (four.0, four.2)]
    );
    assert!(
        store_calls(&mut dialer).is_empty(),
        "each stream is detached once"
    );

    acceptor.handle_connection_lost(None, "gone".into());
    assert_eq!(
        detached(&mut acceptor),
        vec![(three.0, three.3), (four.0, four.3), (two.0, again.stream)]
    );
}

#[test]
fn streams_closed_in_sync_or_refused_by_the_driver_are_not_detached_at_the_end() {
    let (mut dialer, mut acceptor, opens) = streams_open(2);
    let (one, two) = (opens[0].clone(), opens[1].clone());
    // Feed 1 is in sync both ways: the dialer closes its stream (carried out here).
    for s in [&mut dialer, &mut acceptor] {
        s.handle_feed_synced(&one.0, 0);
    }
    exchange(&mut dialer, &mut acceptor);
    match dialer.poll_stream() {
        Some(StreamCommand::Close { feed, stream, .. }) => {
            assert_eq!((feed, stream), (one.0, one.2))
        }
        other => panic!("expected feed 1's close, got {other:?}"),
    }
    // The acceptor's store no longer serves the namespace: the driver drops feed 2's
    // stream at once and tells the core.
    acceptor.handle_stream_closed(&two.0, two.3);

    dialer.handle_close("bye");
    assert_eq!(detached(&mut dialer), vec![(two.0, two.2)]);
    acceptor.handle_connection_lost(None, "gone".into());
    assert_eq!(detached(&mut acceptor), vec![(one.0, one.3)]);
}

#[test]
fn a_namespace_unregistered_then_registered_with_another_secret_starts_over() {
    let exporter = ExporterSecret([3; 32]);
    let (old, new) = (NamespaceSecret([5; 32]), NamespaceSecret([6; 32]));
    let mut dialer = Session::new(live(), Role::Dialer, exporter, std::time::Instant::now());
    dialer
        .handle_register_namespace("team", Some(old.clone()))
        .unwrap();
    dialer.handle_control_bytes(&hello_frame());
    let tags = |sent: &[Message]| -> Vec<u32> {
        sent.iter()
            .filter_map(|m| match m {
                Message::Tag { handle, .. } => Some(*handle),
                _ => None,
            })
            .collect()
    };
    let first = tags(&take_sent(&mut dialer));
    assert_eq!(first.len(), 1);
    // Another secret on a running session: unregister, then register again.
    dialer.handle_unregister_namespace("team").unwrap();
    dialer
        .handle_register_namespace("team", Some(new.clone()))
        .unwrap();
    let sent = take_sent(&mut dialer);
    let second = tags(&sent);
    assert_eq!(second.len(), 1);
    assert!(second[0] > first[0], "a new handle: {first:?} {second:?}");
    let key = NamespaceKey::new("team", Some(&new));
    assert!(sent.contains(&Message::Tag {
        handle: second[0],
        tag: key.tag(&exporter, Role::Dialer)
    }));
    // The acceptor's late answer to the old tag is ignored, not misbehaviour.
    let old_key = NamespaceKey::new("team", Some(&old));
    dialer.handle_control_bytes(&frames(&[Message::Tag {
        handle: first[0],
        tag: old_key.tag(&exporter, Role::Acceptor),
    }]));
    assert!(dialer.end_reason().is_none(), "{:?}", dialer.end_reason());
    // The answer under the new handle proves the namespace with the new secret.
    dialer.handle_control_bytes(&frames(&[Message::Tag {
        handle: second[0],
        tag: key.tag(&exporter, Role::Acceptor),
    }]));
    assert!(dialer.end_reason().is_none(), "{:?}", dialer.end_reason());
    assert!(std::iter::from_fn(|| dialer.poll_event()).any(|e| e
        == SessionEvent::NamespaceProven {
            namespace: "team".into()
        }));
    // Unregistered once proven: the peer's offers under its handle get nothing accepted.
    dialer.handle_unregister_namespace("team").unwrap();
    dialer.handle_control_bytes(&frames(&[Message::Offer {
        namespace: second[0],
        offer: 0,
        feeds: vec![OfferedFeed {
            id: 0,
            key: feed(1),
            headers: headers(&[]),
        }],
    }]));
    assert!(dialer.end_reason().is_none(), "{:?}", dialer.end_reason());
    assert!(take_sent(&mut dialer).contains(&Message::Answer {
        offer: 0,
        accepted: vec![]
    }));
}

/// Two nodes holding `feeds` each (feed, dialer's length, acceptor's length), every
/// feed known to both, toy heads on; the link is driven until it settles. The node that
/// announces first alternates with `dialer_first`.
fn first_words_net(
    config: SessionConfig,
    feeds: &[(FeedKey, u64, u64)],
    dialer_first: bool,
    setup: impl FnOnce(&mut Net),
) -> (Net, usize) {
    let mut net = Net::new(config);
    net.add_store("a", accept_all());
    net.add_store("b", accept_all());
    let l = net.connect(A, B, [6; 32]);
    let a: Vec<_> = feeds.iter().map(|f| (f.0, f.1, headers(&[]))).collect();
    let b: Vec<_> = feeds.iter().map(|f| (f.0, f.2, headers(&[]))).collect();
    net.create(A, &a);
    net.create(B, &b);
    for node in [A, B] {
        net.stores[node].heads = true;
        net.register(l, node, "", None);
    }
    setup(&mut net);
    let keys: Vec<FeedKey> = feeds.iter().map(|f| f.0).collect();
    let order = if dialer_first { [A, B] } else { [B, A] };
    // A session ended by a bad head takes no more commands.
    for node in order {
        if net.ended(l, node).is_none() {
            net.end(l, node)
                .session
                .handle_known_feeds("", keys.clone())
                .unwrap();
        }
        net.drive();
    }
    for node in [A, B] {
        if net.ended(l, node).is_none() {
            net.end(l, node).session.handle_ready().unwrap();
        }
    }
    net.drive();
    (net, l)
}

#[test]
/// Feeds whose verified heads are equal on both sides get no stream: 100 in sync open
/// none, and one feed ahead among them opens exactly one, which syncs. The one-shot
/// session still ends once every feed is in sync both ways.
fn feeds_with_equal_verified_heads_get_no_stream() {
    for (ahead, dialer_first) in [(false, true), (false, false), (true, true), (true, false)] {
        let mut feeds: Vec<(FeedKey, u64, u64)> = (1..=100).map(|n| (feed(n), 5, 5)).collect();
        if ahead {
            // Ahead on the acceptor, or on the dialer.
            feeds[40].2 = 9;
            feeds[41].1 = 8;
        }
        let (net, l) = first_words_net(one_shot(), &feeds, dialer_first, |_| {});
        let case = format!("ahead: {ahead}, dialer first: {dialer_first}");
        let streamed = &net.links[l].ends[0].ever_attached;
        let expected: HashSet<FeedKey> = if ahead {
            [feed(41), feed(42)].into()
        } else {
            HashSet::new()
        };
        assert_eq!(streamed, &expected, "{case}");
        let dialer = net.links[l].ends[0].session.stats();
        assert_eq!(dialer.streams_opened, expected.len() as u64, "{case}");
        for side in [A, B] {
            let stats = net.links[l].ends[side].session.stats();
            assert_eq!(stats.heads_verified, 100, "{case}, side {side}");
            assert_eq!(
                stats.streams_skipped,
                100 - expected.len() as u64,
                "{case}, side {side}"
            );
            let synced = net.links[l].ends[side]
                .events
                .iter()
                .filter(|e| matches!(e, SessionEvent::FeedSynced { .. }))
                .count();
            assert_eq!(
                synced, 100,
                "{case}, side {side}: every feed in sync both ways"
            );
            let reason = net.ended(l, side).expect("the one-shot session ended");
            assert_eq!(
                reason.code,
                CloseCode::DONE,
                "{case}, side {side}: {reason}"
            );
        }
        if ahead {
            assert_eq!(net.stores[A].lengths[&feed(41)], 9, "{case}");
            assert_eq!(net.stores[B].lengths[&feed(42)], 8, "{case}");
        }
        // Each stream carries the peer's verified first-word head to the store, whose
        // sync core then does not verify the same head again (decision 198).
        let carried = |side: usize| -> HashMap<FeedKey, u64> {
            net.links[l].ends[side]
                .verified_heads
                .iter()
                .map(|(f, h)| (*f, h.length))
                .collect()
        };
        let (to_dialer, to_acceptor): (HashMap<_, _>, HashMap<_, _>) = if ahead {
            (
                [(feed(41), 9), (feed(42), 5)].into(),
                [(feed(41), 5), (feed(42), 8)].into(),
            )
        } else {
            (HashMap::new(), HashMap::new())
        };
        assert_eq!(carried(A), to_dialer, "{case}: the dialer's streams");
        assert_eq!(carried(B), to_acceptor, "{case}: the acceptor's streams");
    }
}

#[test]
/// A fork has the same length on both sides: its heads differ in the tree hash, so the
/// feed gets a stream (where the store's fork rule stops it), while the feeds in sync
/// around it get none. Two relays holding the two sides of a fork must meet on a stream.
fn a_fork_at_one_length_still_gets_a_stream() {
    for dialer_first in [true, false] {
        let feeds: Vec<(FeedKey, u64, u64)> = (1..=10).map(|n| (feed(n), 5, 5)).collect();
        let (net, l) = first_words_net(live(), &feeds, dialer_first, |net| {
            net.stores[B].forked.insert(feed(3));
        });
        let streamed = &net.links[l].ends[0].ever_attached;
        assert_eq!(streamed, &[feed(3)].into(), "dialer first: {dialer_first}");
        for side in [A, B] {
            let stats = net.links[l].ends[side].session.stats();
            assert_eq!(stats.streams_skipped, 9, "side {side}");
        }
    }
}

#[test]
/// A head whose signature does not verify is the sender's violation: the receiver ends
/// the session with `bad head`, naming the feed, before any stream opens.
fn a_forged_head_ends_the_session_with_bad_head() {
    for (forger, dialer_first) in [(A, true), (A, false), (B, true), (B, false)] {
        let feeds: Vec<(FeedKey, u64, u64)> = (1..=100).map(|n| (feed(n), 5, 5)).collect();
        let (net, l) = first_words_net(live(), &feeds, dialer_first, |net| {
            net.stores[forger].forged.insert(feed(77));
        });
        let case = format!("forger {forger}, dialer first: {dialer_first}");
        let receiver = 1 - forger;
        let reason = net
            .ended(l, receiver)
            .expect("the receiver ended the session");
        assert_eq!(reason.code, CloseCode::BAD_HEAD, "{case}: {reason}");
        assert!(reason.is_misbehaviour(), "{case}: {reason}");
        assert!(
            reason.reason.contains(&feed(77).fmt_short()),
            "{case}: the reason names the feed: {reason}"
        );
        let told = net.ended(l, forger).expect("the forger was told");
        assert_eq!(told.code, CloseCode::BAD_HEAD, "{case}: {told}");
        assert!(
            net.links[l].ends[0].ever_attached.is_empty(),
            "{case}: no stream opened"
        );
    }
}

#[test]
/// A first word made stale while its head is still being verified decides nothing: a
/// side that appends right after its first word (its `Notice`, or its own change,
/// overtakes the verification) still gets the feed's stream, and the feed syncs at the
/// new length, never "in sync" at the old one.
fn a_head_made_stale_during_its_verification_does_not_skip_the_stream() {
    for (appender, dialer_first) in [(A, true), (B, true), (A, false), (B, false)] {
        let feeds: Vec<(FeedKey, u64, u64)> = (1..=3).map(|n| (feed(n), 5, 5)).collect();
        let (mut net, l) = first_words_net(live(), &feeds, dialer_first, |net| {
            net.hold_checks = true;
        });
        let case = format!("appender {appender}, dialer first: {dialer_first}");
        net.append(appender, feed(2), 1);
        net.drive();
        net.release_checks();
        net.drive();
        assert_eq!(
            net.links[l].ends[0].ever_attached,
            [feed(2)].into(),
            "{case}"
        );
        for side in [A, B] {
            let events = &net.links[l].ends[side].events;
            assert!(
                !events.contains(&SessionEvent::FeedSynced {
                    feed: feed(2),
                    length: 5
                }),
                "{case}, side {side}: in sync at a stale length"
            );
            assert!(
                events.contains(&SessionEvent::FeedSynced {
                    feed: feed(2),
                    length: 6
                }),
                "{case}, side {side}"
            );
            let stats = net.links[l].ends[side].session.stats();
            assert_eq!(stats.streams_skipped, 2, "{case}, side {side}");
        }
        assert_eq!(net.stores[1 - appender].lengths[&feed(2)], 6, "{case}");
    }
}

#[test]
/// A live session that found a feed in sync from the first words opens its stream when
/// either side appends later, and the feed syncs.
fn a_feed_in_sync_from_first_words_streams_when_a_side_appends() {
    for (appender, dialer_first) in [(A, true), (B, true), (A, false), (B, false)] {
        let feeds: Vec<(FeedKey, u64, u64)> = (1..=10).map(|n| (feed(n), 5, 5)).collect();
        let (mut net, l) = first_words_net(live(), &feeds, dialer_first, |_| {});
        let case = format!("appender {appender}, dialer first: {dialer_first}");
        assert!(net.links[l].ends[0].ever_attached.is_empty(), "{case}");
        net.append(appender, feed(4), 3);
        net.drive();
        assert_eq!(
            net.links[l].ends[0].ever_attached,
            [feed(4)].into(),
            "{case}"
        );
        for node in [A, B] {
            assert_eq!(net.stores[node].lengths[&feed(4)], 8, "{case}, node {node}");
        }
        for side in [A, B] {
            assert!(
                net.links[l].ends[side]
                    .events
                    .contains(&SessionEvent::FeedSynced {
                        feed: feed(4),
                        length: 8
                    }),
                "{case}, side {side}"
            );
        }
        assert!(net.ended(l, A).is_none(), "{case}");
    }
}
