//! Issue 12, "Safe on the open network": one hostile peer per numbered case of the issue
//! against a real victim `Node` (disk storage, loopback, no DHT, no LAN), with an honest
//! third node connected to it and replicating a feed. Each test asserts the outcome on
//! the victim and that the honest node stays connected, is not banned and keeps syncing.
//! Each test's doc says what the attack did on the code before issue 12.
//!
//! The attackers are `replic8_tests::hostile` peers: a real connection manager and QUIC
//! connection, driven by hand with the real encoders. Case 7 (the control socket) is
//! covered by `crates/node/tests/cli.rs`; the embedding side of it is checked here.
#![allow(clippy::unwrap_used, missing_docs)]

use crate::alone;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use rand::{Rng, SeedableRng};
use replic8::frame::MAX_FRAME_LEN;
use replic8::keys::{capability, DiscoveryKey, NamespaceKey, NamespaceSecret, Role};
use replic8::message::{
    CloseCode, FeedStreamHeader, KnownFeed, Message, OfferedFeed, PUBLIC_HANDLE,
};
use replic8::session::MAX_QUEUED_CONTROL_BYTES;
use replic8_connmgr::DownReason;
use replic8_node::config::LimitsSection;
use replic8_node::{FeedKey, Headers, NamespacePolicy, Node, NodeEvent, NodeHandle, PeerKey};
use replic8_tests::hostile::{HostileFeed, HostilePeer, RawSession};
use replic8_tests::{init_tracing, wait_until, GUARD};
use tokio::sync::broadcast;

/// The honest peers' namespace: no secret, opened accept-all by the victim and the
/// honest node, so the honest node's feed is accepted and replicated.
const OPEN: &str = "open";
/// A named namespace the victim opened held-only (the default policy).
const HELD: &str = "held";
/// The victim's secret namespace.
const TEAM: &str = "team";
const TEAM_SECRET: NamespaceSecret = NamespaceSecret([0x5a; 32]);
/// Feeds one offer or `Have` may carry (`MAX_FEEDS_PER_MESSAGE`).
const PER_MESSAGE: usize = 4096;

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn blocks(n: usize, seed: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| (0..512).map(|j| (i * 31 + j * 7) as u8 ^ seed).collect())
        .collect()
}

/// `n` real feed keys (ed25519 points) nobody holds.
fn fresh_keys(n: usize) -> Vec<FeedKey> {
    (0..n)
        .map(|_| FeedKey::from(replic8_store::FeedSecret::generate().key()))
        .collect()
}

/// An offer of `keys` in namespace handle `namespace`; feed ids continue from `next_id`.
fn offer(namespace: u32, offer: u64, keys: &[FeedKey], next_id: &mut u64) -> Message {
    let feeds = keys
        .iter()
        .map(|key| {
            *next_id += 1;
            OfferedFeed {
                id: *next_id,
                key: *key,
                headers: Headers::new(),
            }
        })
        .collect();
    Message::Offer {
        namespace,
        offer,
        feeds,
    }
}

/// replic8/1's stable namespace id, `BLAKE2b-256("replic8 namespace\0" ‖ name)`, which
/// every peer received before proving anything.
fn old_stable_id(name: &str) -> [u8; 32] {
    let mut hasher = Blake2b::<U32>::new();
    hasher.update(b"replic8 namespace\0");
    hasher.update(name.as_bytes());
    hasher.finalize().into()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(feed: &FeedKey) -> String {
    feed.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// The feeds in a node's store, as hex keys, sorted (small feeds share one database
/// file, so the store is asked rather than its directory read).
async fn stored_feeds(node: &NodeHandle) -> Vec<String> {
    let mut found: Vec<String> = node
        .list_feeds()
        .await
        .unwrap()
        .iter()
        .map(|f| hex(&f.info.key))
        .collect();
    found.sort();
    found
}

fn run(test: impl std::future::Future<Output = ()>) {
    actix::System::new().block_on(test);
}

/// A node's events, each one kept once received, so a test can wait for an event that
/// may already have passed and check afterwards that something never happened.
struct Log {
    name: &'static str,
    rx: broadcast::Receiver<NodeEvent>,
    seen: Vec<NodeEvent>,
}

impl Log {
    fn new(name: &'static str, node: &NodeHandle) -> Log {
        Log {
            name,
            rx: node.subscribe(),
            seen: Vec::new(),
        }
    }

    /// The first event, already seen or still to come, that `want` maps to `Some`.
    async fn wait<T>(&mut self, what: &str, mut want: impl FnMut(&NodeEvent) -> Option<T>) -> T {
        if let Some(found) = self.seen.iter().find_map(&mut want) {
            return found;
        }
        self.next(what, want).await
    }

    /// The first event still to come that `want` maps to `Some`.
    async fn next<T>(&mut self, what: &str, mut want: impl FnMut(&NodeEvent) -> Option<T>) -> T {
        let (rx, seen) = (&mut self.rx, &mut self.seen);
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        let found = want(&event);
                        seen.push(event);
                        if let Some(found) = found {
                            return found;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        panic!("{}: {what}: {n} events missed", self.name)
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        panic!("{}: {what}: event stream closed", self.name)
                    }
                }
            }
        };
        match tokio::time::timeout(GUARD, wait).await {
            Ok(found) => found,
            Err(_) => {
                let last: Vec<_> = self.seen.iter().rev().take(40).collect();
                panic!(
                    "{}: {what}: not within {GUARD:?}; last events: {last:#?}",
                    self.name
                )
            }
        }
    }

    /// Panics if an event seen so far is `bad`.
    fn never(&self, what: &str, bad: impl Fn(&NodeEvent) -> bool) {
        if let Some(event) = self.seen.iter().find(|e| bad(e)) {
            panic!("{}: {what}: {event:#?}", self.name);
        }
    }
}

/// The victim (disk storage) and an honest node that writes `feed` and shares it in
/// [`OPEN`]; the honest node dials the victim, which accepts and replicates the feed.
struct World {
    victim: NodeHandle,
    /// The victim's data directory, removed when the world is dropped.
    _dir: tempfile::TempDir,
    v: Log,
    honest: NodeHandle,
    h: Log,
    feed: FeedKey,
    length: u64,
}

impl World {
    /// The two nodes, linked, with the feed in sync on the victim.
    async fn new(limits: LimitsSection) -> World {
        let mut w = World::unlinked(limits).await;
        w.link().await;
        w
    }

    /// The two nodes, not connected yet.
    async fn unlinked(limits: LimitsSection) -> World {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let victim = Node::builder()
            .data_dir(dir.path())
            .listen(lo())
            .dht(false)
            .lan(false)
            .limits(limits)
            .spawn()
            .await
            .unwrap();
        victim
            .open_namespace(OPEN, None, NamespacePolicy::accept_all())
            .await
            .unwrap();
        let honest = honest_node().await;
        let feed = honest.create_feed().await.unwrap();
        honest.append(feed, blocks(20, 1)).await.unwrap();
        honest.share(OPEN, feed, Headers::new()).await.unwrap();
        World {
            v: Log::new("victim", &victim),
            h: Log::new("honest", &honest),
            victim,
            _dir: dir,
            honest,
            feed,
            length: 20,
        }
    }

    /// The honest node dials the victim; waits until the victim holds its feed.
    async fn link(&mut self) {
        self.honest
            .connect(self.victim.local_addr(), Some(self.victim.key()))
            .await
            .unwrap();
        let (feed, length) = (self.feed, self.length);
        self.v
            .wait("the honest feed is in sync", |e| {
                matches!(e, NodeEvent::FeedSynced { feed: f, length: l, .. } if *f == feed && *l == length)
                    .then_some(())
            })
            .await;
    }

    /// The honest node appends; the victim gets the new blocks from it. Both are still
    /// connected, and neither ended the other's session, dropped or banned the other.
    async fn honest_still_served(&mut self) {
        self.length = self
            .honest
            .append(self.feed, blocks(5, self.length as u8))
            .await
            .unwrap();
        let (feed, length, honest) = (self.feed, self.length, self.honest.key());
        self.v
            .next("the honest feed keeps syncing", |e| {
                matches!(e, NodeEvent::FeedSynced { peer, feed: f, length: l }
                    if *peer == honest && *f == feed && *l == length)
                .then_some(())
            })
            .await;
        let info = self.victim.open_feed(feed).await.unwrap();
        assert_eq!((info.length, info.stored), (length, length));
        let victim = self.victim.key();
        let peers: Vec<PeerKey> = self
            .victim
            .peers()
            .await
            .unwrap()
            .iter()
            .map(|p| p.key)
            .collect();
        assert!(
            peers.contains(&honest),
            "the victim lost the honest peer: {peers:?}"
        );
        let peers: Vec<PeerKey> = self
            .honest
            .peers()
            .await
            .unwrap()
            .iter()
            .map(|p| p.key)
            .collect();
        assert!(
            peers.contains(&victim),
            "the honest peer lost the victim: {peers:?}"
        );
        let about = |other: PeerKey| {
            move |e: &NodeEvent| match e {
                NodeEvent::SessionEnded { peer, .. } | NodeEvent::PeerBanned { peer, .. } => {
                    *peer == other
                }
                NodeEvent::PeerDown { key, .. } => *key == other,
                _ => false,
            }
        };
        self.v
            .never("the honest session ended or was banned", about(honest));
        self.h
            .never("the victim's session ended or was banned", about(victim));
        self.h.never("the honest node banned someone", |e| {
            matches!(e, NodeEvent::PeerBanned { .. })
        });
        assert_eq!(
            self.honest.counters().bans.get(),
            0,
            "the honest node banned no one"
        );
    }

    async fn close(self) {
        self.victim.close().await;
        self.honest.close().await;
    }
}

/// An honest node in memory on loopback that accepts every feed in [`OPEN`].
async fn honest_node() -> NodeHandle {
    let node = Node::builder()
        .in_memory()
        .listen(lo())
        .dht(false)
        .lan(false)
        .spawn()
        .await
        .unwrap();
    node.open_namespace(OPEN, None, NamespacePolicy::accept_all())
        .await
        .unwrap();
    node
}

/// A fresh attacker identity with a session on `node` (our hello written).
async fn attacker_session(node: &NodeHandle) -> (HostilePeer, RawSession) {
    let mut attacker = HostilePeer::spawn().await;
    let connection = attacker
        .dial(node.local_addr())
        .await
        .unwrap_or_else(|e| panic!("attacker dial refused: {e}"));
    (attacker, RawSession::open(connection).await)
}

/// Shows `key` under `handle` (a dialer's tag) and returns the victim's answering tag.
async fn prove(s: &mut RawSession, handle: u32, key: &NamespaceKey) -> [u8; 32] {
    let tag = key.tag(&s.exporter, Role::Dialer);
    s.send_message(&Message::Tag { handle, tag }).await;
    s.recv_message(|m| match m {
        Message::Tag { handle: h, tag } if *h == handle => Some(*tag),
        _ => None,
    })
    .await
    .expect("the victim answers a tag of a namespace it has")
}

/// Reads until the victim answered every offer in `offers`; returns the answers.
async fn answers(s: &mut RawSession, offers: u64) -> Vec<Vec<u64>> {
    let mut got = vec![None; offers as usize];
    let mut left = offers;
    let done = s
        .recv_message(|m| {
            if let Message::Answer { offer, accepted } = m {
                if let Some(slot) = got.get_mut(*offer as usize).filter(|s| s.is_none()) {
                    *slot = Some(accepted.clone());
                    left -= 1;
                }
            }
            (left == 0).then_some(())
        })
        .await;
    assert_eq!(done, Some(()), "answers to {offers} offers, {left} missing");
    got.into_iter().map(Option::unwrap_or_default).collect()
}

/// Case 1, junk-feed flood. On the code before issue 12 the default store accepted every
/// feed offered in `""` (`AcceptPolicy::All`, `forward: true`): the victim answered each
/// offer below with all 4,096 ids, created a replica directory per key (12,288 in `""`)
/// and re-offered them to the honest peer; the first assertion (nothing accepted) failed.
#[test]
fn a_junk_feed_flood_creates_no_replica_and_reaches_no_honest_peer() {
    run(async {
        let mut w = World::unlinked(LimitsSection::default()).await;
        w.victim
            .open_namespace(HELD, None, NamespacePolicy::held_only())
            .await
            .unwrap();
        // The honest node would take every feed forwarded to it in HELD.
        w.honest
            .open_namespace(HELD, None, NamespacePolicy::accept_all())
            .await
            .unwrap();
        w.link().await;
        let (attacker, mut s) = attacker_session(&w.victim).await;
        prove(&mut s, 1, &NamespaceKey::new(HELD, None)).await;
        // 3 offers of 4,096 fresh keys in "", then 3 in HELD.
        const OFFERS: u64 = 6;
        let mut junk = HashSet::new();
        let mut id = 0;
        for n in 0..OFFERS {
            let keys = fresh_keys(PER_MESSAGE);
            let namespace = if n < 3 { PUBLIC_HANDLE } else { 1 };
            s.send_message(&offer(namespace, n, &keys, &mut id)).await;
            junk.extend(keys);
        }
        let flooded = junk.len() as u64;
        assert_eq!(flooded, OFFERS * PER_MESSAGE as u64);
        for (n, accepted) in answers(&mut s, OFFERS).await.iter().enumerate() {
            assert!(
                accepted.is_empty(),
                "offer {n}: {} accepted",
                accepted.len()
            );
        }
        // Refused politely: the attacker's session goes on.
        assert!(s.connection.close_reason().is_none());
        let stats = w.victim.feed_stats().await.unwrap();
        assert_eq!(stats.refused_policy, flooded, "{stats:?}");
        // A user sees the refusals in the node's counters (and `/metrics`).
        let counters = w.victim.counters();
        wait_until("victim: offers_refused counter", || {
            let n = counters.offers_refused.get();
            (n == flooded)
                .then_some(())
                .ok_or(format!("{n} of {flooded}"))
        })
        .await;
        assert_eq!(
            stats.replicas, 1,
            "only the honest feed is a replica: {stats:?}"
        );
        assert_eq!(
            stored_feeds(&w.victim).await,
            vec![hex(&w.feed)],
            "feeds in the victim's store"
        );
        // A feed the victim shares afterwards reaches the honest node; no junk key did.
        let later = w.victim.create_feed().await.unwrap();
        w.victim.share(OPEN, later, Headers::new()).await.unwrap();
        w.h.wait("the victim's later feed is offered", |e| match e {
            NodeEvent::Offered { feeds, .. } => {
                feeds.iter().any(|(k, _)| *k == later).then_some(())
            }
            _ => None,
        })
        .await;
        w.h.never("a junk key was offered to the honest node", |e| match e {
            NodeEvent::Offered { feeds, .. } => feeds.iter().any(|(k, _)| junk.contains(k)),
            _ => false,
        });
        let attacker_key = attacker.key();
        w.v.never(
            "the flooder's session ended",
            |e| matches!(e, NodeEvent::SessionEnded { peer, .. } if *peer == attacker_key),
        );
        w.honest_still_served().await;
        assert_eq!(w.victim.counters().bans.get(), 0, "a refusal bans no one");
        attacker.close().await;
        w.close().await;
    });
}

/// Case 2 (a), limits an honest peer can reach. On the code before issue 12 more than
/// 100,000 `Have`s for feeds the receiver does not hold ended the session as
/// misbehaviour and banned the peer for 600 s: the victim closed this session after the
/// 25th `Have` and never answered the offers. An honest peer with many feeds does the
/// same, and a victim first flooded (case 1) made every honest peer ban it.
#[test]
fn limits_an_honest_peer_can_reach_end_nothing_and_ban_no_one() {
    run(async {
        let mut w = World::new(LimitsSection::default()).await;
        let (attacker, mut s) = attacker_session(&w.victim).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        // 25 × 4,096 = 102,400 `Have`s for feeds the victim does not hold (the session
        // keeps 100,000).
        for _ in 0..25 {
            let feeds = (0..PER_MESSAGE)
                .map(|_| KnownFeed {
                    discovery_key: DiscoveryKey(rng.gen()),
                    capability: rng.gen(),
                })
                .collect();
            s.send_message(&Message::Have {
                namespace: PUBLIC_HANDLE,
                feeds,
            })
            .await;
        }
        // 40 offers of 4,096 keys at once (about 6.6 MB: past the 4 MiB of offers that
        // may wait for the victim's store; the rest is answered at once, refused).
        const OFFERS: u64 = 40;
        let mut id = 0;
        for n in 0..OFFERS {
            let keys: Vec<FeedKey> = (0..PER_MESSAGE).map(|_| FeedKey(rng.gen())).collect();
            s.send_message(&offer(PUBLIC_HANDLE, n, &keys, &mut id))
                .await;
        }
        let answered = answers(&mut s, OFFERS).await;
        assert!(answered.iter().all(Vec::is_empty));
        s.send_message(&Message::Close {
            code: CloseCode::CLOSED,
            reason: "bye".into(),
        })
        .await;
        let key = attacker.key();
        let reason =
            w.v.wait("the attacker's session ends", |e| match e {
                NodeEvent::SessionEnded { peer, reason } if *peer == key => Some(reason.clone()),
                _ => None,
            })
            .await;
        assert!(reason.starts_with("the peer ended the session"), "{reason}");
        w.honest_still_served().await;
        w.v.never("a ban", |e| matches!(e, NodeEvent::PeerBanned { .. }));
        assert_eq!(w.victim.counters().bans.get(), 0);
        attacker.close().await;
        w.close().await;
    });
}

/// Writer `feed` offers itself to `relay` in [`OPEN`] and serves its blocks (the real
/// sync core) until the relay verified and stored all of them.
async fn give(
    relay: &NodeHandle,
    log: &mut Log,
    mut feed: HostileFeed,
) -> (HostilePeer, tokio::task::JoinHandle<String>) {
    let (writer, mut s) = attacker_session(relay).await;
    prove(&mut s, 1, &NamespaceKey::new(OPEN, None)).await;
    let key = feed.key();
    let length = feed.feed.length();
    s.send_message(&Message::Offer {
        namespace: 1,
        offer: 0,
        feeds: vec![OfferedFeed {
            id: 0,
            key,
            headers: Headers::new(),
        }],
    })
    .await;
    assert_eq!(answers(&mut s, 1).await, vec![vec![0]], "the relay accepts");
    let (send, recv) = s
        .open_feed_stream(&FeedStreamHeader::Offered {
            by: Role::Dialer,
            id: 0,
        })
        .await
        .expect("feed stream opens");
    let serve = tokio::task::spawn_local(async move {
        let _control = s;
        feed.serve(send, recv, Vec::new(), |_| {}).await
    });
    let mut stored = 0;
    while stored < length {
        stored += log
            .next("the relay downloads the writer's feed", |e| match e {
                NodeEvent::Downloaded { feed, blocks, .. } if *feed == key => Some(*blocks),
                _ => None,
            })
            .await;
    }
    (writer, serve)
}

/// Case 2 (b), a writer's fork. On the code before issue 12 a feed that failed to verify
/// ended the whole session as misbehaviour: the two honest relays below, each holding one
/// of two trees the writer signed for the same key, banned each other for 600 s when they
/// met, and their other feed stopped with the session.
#[test]
fn a_forked_feed_stops_between_honest_relays_without_a_ban_and_their_other_feed_goes_on() {
    run(async {
        // Relay R1 is the victim, relay R2 the honest node (writer of the other feed).
        let mut w = World::unlinked(LimitsSection::default()).await;
        let secret = replic8_store::FeedSecret::generate();
        let fork_a = HostileFeed::with_blocks(secret.clone(), &blocks(8, 0xa));
        let fork_b = HostileFeed::with_blocks(secret, &blocks(8, 0xb));
        let key = fork_a.key();
        let (head_a, head_b) = (*fork_a.feed.head().unwrap(), *fork_b.feed.head().unwrap());
        assert_eq!(key, fork_b.key());
        assert_eq!(head_a.length, head_b.length);
        assert_ne!(head_a.tree_hash, head_b.tree_hash, "a fork");
        let (writer_a, serve_a) = give(&w.victim, &mut w.v, fork_a).await;
        let (writer_b, serve_b) = give(&w.honest, &mut w.h, fork_b).await;
        // R2 dials R1: the other feed syncs; the forked one meets its other tree.
        w.link().await;
        let (r1, r2) = (w.victim.key(), w.honest.key());
        let stopped = |other: PeerKey| {
            move |e: &NodeEvent| match e {
                NodeEvent::FeedStopped { peer, feed, reason } if *peer == other && *feed == key => {
                    Some(reason.clone())
                }
                _ => None,
            }
        };
        let reason_1 =
            w.v.wait("R1 stops the forked feed with R2", stopped(r2))
                .await;
        let reason_2 =
            w.h.wait("R2 stops the forked feed with R1", stopped(r1))
                .await;
        eprintln!("R1: {reason_1}; R2: {reason_2}");
        // Each relay keeps the tree it verified, nothing of the other.
        assert_eq!(w.victim.open_feed(key).await.unwrap().head, Some(head_a));
        assert_eq!(w.honest.open_feed(key).await.unwrap().head, Some(head_b));
        w.honest_still_served().await;
        w.v.never("a ban", |e| matches!(e, NodeEvent::PeerBanned { .. }));
        assert_eq!(w.victim.counters().bans.get(), 0);
        serve_a.abort();
        serve_b.abort();
        writer_a.close().await;
        writer_b.close().await;
        w.close().await;
    });
}

/// Case 3, slot exhaustion. On the code before issue 12 the peer table was first come,
/// first served: with `max_peers` 12 and the honest peer in one slot, the 11 throwaway
/// identities below that say hello and idle took every other slot, so the victim's own
/// `connect` failed (too many peers) and the honest newcomer was refused.
#[test]
fn idle_throwaway_identities_leave_room_for_our_dials_and_an_honest_newcomer() {
    run(async {
        let limits = LimitsSection {
            max_peers: 12,
            reserved_outbound: 4,
            ..LimitsSection::default()
        };
        // Inbound peers get 12 - 4 = 8 slots; the honest peer (which dialed the victim,
        // proved a namespace and syncs: active) holds one.
        const INBOUND: usize = 8;
        const ATTACKERS: usize = 11;
        let mut w = World::new(limits).await;
        let mut attackers = Vec::new();
        let mut sessions = Vec::new();
        for _ in 0..ATTACKERS {
            let mut attacker = HostilePeer::spawn().await;
            if let Ok(connection) = attacker.dial(w.victim.local_addr()).await {
                if let Ok(session) = RawSession::try_open(connection).await {
                    sessions.push(session);
                }
            }
            attackers.push(attacker);
        }
        let keys: HashSet<PeerKey> = attackers.iter().map(HostilePeer::key).collect();
        // The victim's table settles with every inbound slot taken.
        let deadline = tokio::time::Instant::now() + GUARD;
        let in_table = loop {
            let peers = w.victim.peers().await.unwrap();
            let n = peers.iter().filter(|p| keys.contains(&p.key)).count();
            if n == INBOUND - 1 {
                break n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "attackers in the victim's table: {n}, want {}",
                INBOUND - 1
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let full_since = Instant::now();
        eprintln!("{in_table} of {ATTACKERS} attackers hold inbound slots");
        // Our own dial gets a reserved slot.
        let named = honest_node().await;
        w.victim
            .connect(named.local_addr(), Some(named.key()))
            .await
            .unwrap_or_else(|e| panic!("the victim's own connect was refused: {e}"));
        // Once the idle attackers are past the eviction grace, an honest newcomer evicts
        // the idlest of them. (Waiting out the grace is the precondition, not the check.)
        let grace = replic8_connmgr::PolicyConfig::default().eviction_grace;
        tokio::time::sleep_until((full_since + grace + Duration::from_secs(1)).into()).await;
        let newcomer = honest_node().await;
        newcomer
            .connect(w.victim.local_addr(), Some(w.victim.key()))
            .await
            .unwrap_or_else(|e| panic!("the honest newcomer was refused: {e}"));
        let evicted =
            w.v.wait("an idle attacker is evicted", |e| match e {
                NodeEvent::PeerDown {
                    key,
                    reason: DownReason::Evicted,
                } => Some(*key),
                _ => None,
            })
            .await;
        assert!(
            keys.contains(&evicted),
            "evicted {evicted:?}, not an attacker"
        );
        let peers: Vec<PeerKey> = w
            .victim
            .peers()
            .await
            .unwrap()
            .iter()
            .map(|p| p.key)
            .collect();
        for wanted in [named.key(), newcomer.key(), w.honest.key()] {
            assert!(peers.contains(&wanted), "{wanted:?} not in {peers:?}");
        }
        w.honest_still_served().await;
        assert_eq!(w.victim.counters().bans.get(), 0, "idling is no ban");
        drop(sessions);
        for attacker in attackers {
            attacker.close().await;
        }
        named.close().await;
        newcomer.close().await;
        w.close().await;
    });
}

/// The victim's stall timeout in the memory test (the default is 30 s).
const STALL_SECS: u64 = 2;
/// Most this process's memory may grow while the attacker of case 4 runs: the victim
/// holds at most 1 MiB of control output plus one frame, the QUIC windows of one
/// connection and the session's tables; everything else here is the attacker's.
const RSS_BOUND: u64 = 48 << 20;
/// What the attacker of case 4 sends at most: on the old code it was all read.
const FLOOD_BYTES: usize = 64 << 20;

/// Case 4, unbounded memory. On the code before issue 12 the control stream's write
/// queue was unbounded and the victim kept reading: every offer below got its answer
/// queued, the attacker was never held back (it wrote all 64 MiB, queueing about 16 MiB
/// of answers) and the session never ended; this test failed waiting for the `timeout`.
/// Now the victim stops reading at 1 MiB of queued output (QUIC flow control holds the
/// attacker back) and ends the session with `timeout` after the stall timeout, no ban.
#[test]
fn a_peer_that_never_reads_is_held_back_and_timed_out_with_memory_bounded() {
    if !alone::in_own_process(
        "open_network::a_peer_that_never_reads_is_held_back_and_timed_out_with_memory_bounded",
    ) {
        return;
    }
    actix::System::new().block_on(async {
        let limits = LimitsSection {
            stall_timeout_secs: STALL_SECS,
            ..LimitsSection::default()
        };
        let mut w = World::new(limits).await;
        let before = alone::vm_rss();
        let peak = Arc::new(AtomicU64::new(before));
        let sampler = {
            let peak = peak.clone();
            tokio::task::spawn_local(async move {
                loop {
                    peak.fetch_max(alone::vm_rss(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let (mut attacker, s) = attacker_session(&w.victim).await;
        let key = attacker.key();
        // Offers in a namespace handle the victim does not know: each is answered at
        // once (15 bytes with these ids). We never read the control stream.
        let mut control = s.send;
        let _never_read = s.recv;
        let _connection = s.connection;
        let sent = Arc::new(AtomicUsize::new(0));
        let writer = {
            let sent = sent.clone();
            tokio::task::spawn_local(async move {
                let mut n = 0u64;
                while sent.load(Ordering::Relaxed) < FLOOD_BYTES {
                    let mut batch = Vec::new();
                    for _ in 0..1000 {
                        let mut key = [0u8; 32];
                        key[..8].copy_from_slice(&n.to_le_bytes());
                        let message = Message::Offer {
                            namespace: 77,
                            offer: (1 << 60) + n,
                            feeds: vec![OfferedFeed {
                                id: (1 << 60) + n,
                                key: FeedKey(key),
                                headers: Headers::new(),
                            }],
                        };
                        replic8::message::encode(&message, &mut batch).unwrap();
                        n += 1;
                    }
                    if control.write_all(&batch).await.is_err() {
                        return;
                    }
                    sent.fetch_add(batch.len(), Ordering::Relaxed);
                }
            })
        };
        let reason =
            w.v.wait("the victim ends the non-reading session", |e| match e {
                NodeEvent::SessionEnded { peer, reason } if *peer == key => Some(reason.clone()),
                _ => None,
            })
            .await;
        writer.abort();
        sampler.abort();
        let (sent, peak) = (sent.load(Ordering::Relaxed), peak.load(Ordering::Relaxed));
        eprintln!(
            "attacker wrote {sent} bytes; RSS before {before}, peak {peak} (+{} KiB); {reason}",
            peak.saturating_sub(before) / 1024
        );
        assert!(reason.contains("timeout"), "{reason}");
        assert!(sent < FLOOD_BYTES, "the attacker was never held back");
        // The node does not list session stats; the end reason says what was queued.
        let queued: u64 = reason
            .split("read none of our ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no queued byte count in {reason:?}"));
        let bound = (MAX_QUEUED_CONTROL_BYTES + MAX_FRAME_LEN) as u64;
        assert!(
            queued <= bound,
            "{queued} control bytes queued, bound {bound}"
        );
        assert!(
            peak <= before + RSS_BOUND,
            "memory grew by {} KiB (bound {} KiB)",
            (peak - before) / 1024,
            RSS_BOUND / 1024
        );
        // Not misbehaviour: the same identity gets a session again.
        let again = attacker
            .dial(w.victim.local_addr())
            .await
            .unwrap_or_else(|e| panic!("the slow reader was refused: {e}"));
        let _session = RawSession::open(again).await;
        w.v.next("the slow reader's new session", |e| {
            matches!(e, NodeEvent::SessionUp { peer } if *peer == key).then_some(())
        })
        .await;
        w.honest_still_served().await;
        w.v.never("a ban", |e| matches!(e, NodeEvent::PeerBanned { .. }));
        assert_eq!(w.victim.counters().bans.get(), 0);
        attacker.close().await;
        w.close().await;
    });
}

/// The victim of cases 5 and 6: a [`World`] where the victim also has the secret
/// namespace [`TEAM`] with a feed of its own shared only there, and a public feed shared
/// in `""`. Returns (world, team feed, public feed).
async fn team_world() -> (World, FeedKey, FeedKey) {
    let mut w = World::unlinked(LimitsSection::default()).await;
    w.victim
        .open_namespace(TEAM, Some(TEAM_SECRET), NamespacePolicy::held_only())
        .await
        .unwrap();
    let team_feed = w.victim.create_feed().await.unwrap();
    w.victim.append(team_feed, blocks(10, 7)).await.unwrap();
    w.victim
        .share(TEAM, team_feed, Headers::new())
        .await
        .unwrap();
    let public = w.victim.create_feed().await.unwrap();
    w.victim.append(public, blocks(3, 9)).await.unwrap();
    w.victim.share("", public, Headers::new()).await.unwrap();
    w.link().await;
    (w, team_feed, public)
}

/// Case 5, secret namespaces leak. On the code before issue 12 every peer received, right
/// after the hellos, each namespace's stable id (`BLAKE2b("replic8 namespace\0team")`)
/// and a proof keyed with the secret, before proving anything, and a wrong proof ended
/// the session with `bad proof for namespace "team"` and a ban: the first check on what
/// the attacker received failed.
#[test]
fn a_peer_without_the_secret_learns_nothing_of_a_secret_namespace() {
    run(async {
        let (mut w, team_feed, public) = team_world().await;
        let (attacker, mut s) = attacker_session(&w.victim).await;
        let mut got = Vec::new();
        // Everything the victim sends up to its `Ready`: its proofs (none to us), shares
        // and announcements.
        let ready = s
            .recv_message(|m| {
                got.push(m.clone());
                matches!(m, Message::Ready).then_some(())
            })
            .await;
        assert_eq!(ready, Some(()), "the victim's ready");
        // A wrong tag (a guessed secret), then an offer that the victim answers only
        // after it handled the tag.
        let guess = NamespaceKey::new(TEAM, Some(&NamespaceSecret([0x5b; 32])));
        let tag = guess.tag(&s.exporter, Role::Dialer);
        s.send_message(&Message::Tag { handle: 1, tag }).await;
        let mut id = 0;
        s.send_message(&offer(PUBLIC_HANDLE, 0, &fresh_keys(1), &mut id))
            .await;
        let answered = s
            .recv_message(|m| {
                got.push(m.clone());
                matches!(m, Message::Answer { offer: 0, .. }).then_some(())
            })
            .await;
        assert_eq!(answered, Some(()), "a wrong tag ends nothing: {got:?}");
        assert!(s.connection.close_reason().is_none());
        // What the attacker received: the public feed, nothing of the team.
        assert!(
            got.iter()
                .any(|m| matches!(m, Message::Offer { namespace: 0, feeds, .. }
                if feeds.iter().any(|f| f.key == public))),
            "the public feed is offered: {got:?}"
        );
        for m in &got {
            match m {
                Message::Tag { .. } => panic!("a tag reached a peer without the key: {m:?}"),
                Message::Offer { namespace, .. } | Message::Have { namespace, .. } => {
                    assert_eq!(*namespace, PUBLIC_HANDLE, "{m:?}")
                }
                Message::Close { reason, .. } => panic!("closed: {reason}"),
                _ => {}
            }
        }
        let bytes = s.received();
        let secrets: [(&str, &[u8]); 5] = [
            ("the name", TEAM.as_bytes()),
            ("the old stable id", &old_stable_id(TEAM)),
            ("the secret", &TEAM_SECRET.0),
            ("the team feed's key", &team_feed.0),
            (
                "the team feed's discovery key",
                &team_feed.discovery_key().0,
            ),
        ];
        for (what, needle) in secrets {
            assert!(
                !contains(bytes, needle),
                "{what} in {} bytes received",
                bytes.len()
            );
        }
        // A member's two connections: each gets a tag bound to its connection, and the
        // team feed; the tags are unrelated, neither is the old id.
        let key = NamespaceKey::new(TEAM, Some(&TEAM_SECRET));
        let mut tags = Vec::new();
        for _ in 0..2 {
            let (member, mut m) = attacker_session(&w.victim).await;
            let tag = prove(&mut m, 1, &key).await;
            assert!(
                key.verify(&m.exporter, Role::Acceptor, &tag),
                "the victim's tag checks"
            );
            let offered = m
                .recv_message(|msg| match msg {
                    Message::Offer {
                        namespace: 1,
                        feeds,
                        ..
                    } => feeds.iter().any(|f| f.key == team_feed).then_some(()),
                    _ => None,
                })
                .await;
            assert_eq!(offered, Some(()), "a member is offered the team feed");
            tags.push(tag);
            member.close().await;
        }
        assert_ne!(tags[0], tags[1], "a member's tags link its connections");
        assert!(!tags.contains(&old_stable_id(TEAM)));
        w.honest_still_served().await;
        assert_eq!(w.victim.counters().bans.get(), 0, "a wrong tag bans no one");
        attacker.close().await;
        w.close().await;
    });
}

/// Case 6, a feed key bypasses the secret. On the code before issue 12 whoever knew the
/// key of a feed shared only in a secret namespace offered it in `""`: the victim
/// accepted it (it held it), served every block, and offered it to every public peer;
/// the first assertion (the offer refused) failed.
#[test]
fn a_feed_key_without_the_secret_gets_no_block_and_no_forwarding() {
    run(async {
        let (mut w, team_feed, _public) = team_world().await;
        let before = w.victim.feed_stats().await.unwrap();
        let (attacker, mut s) = attacker_session(&w.victim).await;
        let mut got = Vec::new();
        let ready = s
            .recv_message(|m| {
                got.push(m.clone());
                matches!(m, Message::Ready).then_some(())
            })
            .await;
        assert_eq!(ready, Some(()), "the victim's ready");
        // The leaked key, offered in "".
        s.send_message(&Message::Offer {
            namespace: PUBLIC_HANDLE,
            offer: 0,
            feeds: vec![OfferedFeed {
                id: 0,
                key: team_feed,
                headers: Headers::new(),
            }],
        })
        .await;
        assert_eq!(answers(&mut s, 1).await, vec![Vec::<u64>::new()], "refused");
        // Announced in "" with a correct capability, and asked for by discovery key.
        let discovery_key = team_feed.discovery_key();
        let capability = capability(&team_feed, &s.exporter, Role::Dialer);
        s.send_message(&Message::Have {
            namespace: PUBLIC_HANDLE,
            feeds: vec![KnownFeed {
                discovery_key,
                capability,
            }],
        })
        .await;
        let (_send, mut recv) = s
            .open_feed_stream(&FeedStreamHeader::Known {
                discovery_key,
                capability,
            })
            .await
            .expect("feed stream opens");
        let key = attacker.key();
        let reason =
            w.v.wait("the victim refuses the stream", |e| match e {
                NodeEvent::SessionEnded { peer, reason } if *peer == key => Some(reason.clone()),
                _ => None,
            })
            .await;
        eprintln!("the attacker's session: {reason}");
        // Whatever arrived on the stream before it ended or failed (a read error after
        // some data must not hide that data).
        let mut served = Vec::new();
        while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
            served.extend_from_slice(&chunk.bytes);
        }
        assert!(
            served.is_empty(),
            "{} bytes served on the stream",
            served.len()
        );
        let after = w.victim.feed_stats().await.unwrap();
        assert_eq!(
            after.blocks_out, before.blocks_out,
            "a team block was served"
        );
        assert_eq!(
            after.refused_namespace,
            before.refused_namespace + 1,
            "{after:?}"
        );
        let got_team = |m: &Message| match m {
            Message::Offer { feeds, .. } => feeds.iter().any(|f| f.key == team_feed),
            Message::Have { feeds, .. } => feeds.iter().any(|f| f.discovery_key == discovery_key),
            _ => false,
        };
        assert!(
            !got.iter().any(got_team),
            "the team feed was announced to the attacker"
        );
        // Not forwarded: a feed the victim shares in "" afterwards reaches the honest node,
        // the team feed never did.
        let later = w.victim.create_feed().await.unwrap();
        w.victim.share("", later, Headers::new()).await.unwrap();
        w.h.wait("the victim's later public feed is offered", |e| match e {
            NodeEvent::Offered { feeds, .. } => {
                feeds.iter().any(|(k, _)| *k == later).then_some(())
            }
            _ => None,
        })
        .await;
        w.h.never(
            "the team feed was offered to the honest node",
            |e| match e {
                NodeEvent::Offered { feeds, .. } => feeds.iter().any(|(k, _)| *k == team_feed),
                _ => false,
            },
        );
        assert!(
            w.honest.open_feed(team_feed).await.is_err(),
            "the honest node holds it"
        );
        w.honest_still_served().await;
        attacker.close().await;
        w.close().await;
    });
}

/// Case 7, the embedding side (the socket itself: `crates/node/tests/cli.rs`). On the
/// code before issue 12 a data directory anyone could write was used as it was: the node
/// started, and created its identity and state in it.
#[test]
fn a_node_refuses_a_data_dir_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    run(async {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = Node::builder()
            .data_dir(&dir)
            .listen(lo())
            .dht(false)
            .lan(false)
            .spawn()
            .await;
        let error = match refused {
            Ok(_) => panic!("a world-writable data dir was used"),
            Err(e) => e,
        };
        let text = error.to_string();
        assert!(text.contains("writable by group or others"), "{text}");
        assert!(text.contains("chmod 700"), "{text}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "the dir was touched"
        );
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777, "its mode was changed");
    });
}
