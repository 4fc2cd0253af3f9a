//! Hostile peers against a real node. The victim is a `Node` with disk storage that
//! replicates a feed with a good peer; a hostile peer (`replic8_tests::hostile`: a real
//! connection manager and QUIC connection, driven by hand with the real encoders) sends
//! what it should not. Each case checks that the victim ended that session with a reason
//! naming the violation, banned the peer where it should (and refuses its redial) or not,
//! stored nothing of it, and kept replicating with the good peer.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use replic8::frame::MAX_FRAME_LEN;
use replic8::keys::{NamespaceId, NamespaceSecret, Role};
use replic8::message::{CloseCode, FeedStreamHeader, Message};
use replic8_node::config::LimitsSection;
use replic8_node::{FeedKey, Headers, Node, NodeEvent, NodeHandle};
use replic8_tests::hostile::{HostilePeer, RawSession};
use replic8_tests::*;
use tokio::sync::broadcast;

const TEAM_SECRET: NamespaceSecret = NamespaceSecret([9; 32]);
/// The victim's stall timeout in these tests (the default is 30 s).
const STALL_SECS: u64 = 1;

fn lo() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn blocks(n: usize, seed: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| (0..512).map(|j| (i * 31 + j * 7) as u8 ^ seed).collect())
        .collect()
}

/// The victim (disk storage) replicating `feed` from the good peer, plus a hostile peer.
struct World {
    victim: NodeHandle,
    dir: tempfile::TempDir,
    good: NodeHandle,
    feed: FeedKey,
    length: u64,
    events: broadcast::Receiver<NodeEvent>,
    hostile: HostilePeer,
}

impl World {
    async fn new() -> World {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let limits = LimitsSection {
            stall_timeout_secs: STALL_SECS,
            ..LimitsSection::default()
        };
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
            .open_namespace("team", Some(TEAM_SECRET))
            .await
            .unwrap();
        let good = Node::builder()
            .in_memory()
            .listen(lo())
            .dht(false)
            .lan(false)
            .spawn()
            .await
            .unwrap();
        let feed = good.create_feed().await.unwrap();
        good.append(feed, blocks(20, 1)).await.unwrap();
        good.share("", feed, Headers::new()).await.unwrap();
        let mut events = victim.subscribe();
        victim
            .connect(good.local_addr(), Some(good.key()))
            .await
            .unwrap();
        wait_synced(&mut events, feed, 20).await;
        let hostile = HostilePeer::spawn().await;
        World {
            victim,
            dir,
            good,
            feed,
            length: 20,
            events,
            hostile,
        }
    }

    async fn dial(&mut self) -> RawSession {
        let connection = self
            .hostile
            .dial(self.victim.local_addr())
            .await
            .unwrap_or_else(|e| panic!("hostile dial refused: {e}"));
        RawSession::open(connection).await
    }

    /// Waits for the victim to end the hostile peer's session; checks the reason names
    /// `what`, and that the peer was banned (`ban`) or not.
    async fn expect_end(&mut self, what: &[&str], ban: bool) -> String {
        let hostile = self.hostile.key();
        let reason = recv_until(
            &mut self.events,
            "victim: hostile session ends",
            |e| match e {
                NodeEvent::SessionEnded { peer, reason } if *peer == hostile => {
                    Some(reason.clone())
                }
                _ => None,
            },
        )
        .await;
        assert!(
            reason.starts_with("we ended the session"),
            "the victim ended it: {reason}"
        );
        assert!(
            what.iter().any(|w| reason.contains(w)),
            "reason {reason:?} names none of {what:?}"
        );
        if ban {
            let banned = recv_until(
                &mut self.events,
                "victim: hostile peer banned",
                |e| match e {
                    NodeEvent::PeerBanned { peer, reason, .. } if *peer == hostile => {
                        Some(reason.clone())
                    }
                    _ => None,
                },
            )
            .await;
            assert_eq!(banned, reason, "banned for what ended the session");
            // The ban is held: a redial is refused.
            self.expect_refused().await;
        } else {
            assert_eq!(self.victim.counters().bans.get(), 0, "no ban");
            // Not banned: a redial gets a session.
            let mut again = self.dial().await;
            recv_until(&mut self.events, "victim: hostile session again", |e| {
                matches!(e, NodeEvent::SessionUp { peer } if *peer == hostile).then_some(())
            })
            .await;
            again
                .send_message(&Message::Close {
                    code: CloseCode::CLOSED,
                    reason: "bye".into(),
                })
                .await;
            recv_until(&mut self.events, "victim: clean close", |e| match e {
                NodeEvent::SessionEnded { peer, reason } if *peer == hostile => {
                    Some(reason.clone())
                }
                _ => None,
            })
            .await;
            assert_eq!(
                self.victim.counters().bans.get(),
                0,
                "a clean close bans no one"
            );
        }
        reason
    }

    /// A dial of the banned hostile peer does not get a session.
    async fn expect_refused(&mut self) {
        match self.hostile.dial(self.victim.local_addr()).await {
            Err(e) => assert!(e.to_string().contains("banned"), "{e}"),
            Ok(connection) => {
                // The victim checks its ban list after the handshake and closes.
                let closed = tokio::time::timeout(GUARD, connection.closed())
                    .await
                    .expect("a banned peer's connection is closed");
                assert!(closed.to_string().contains("banned"), "{closed}");
            }
        }
    }

    /// The good peer appends; the victim still replicates it. Checks nothing from the
    /// hostile peer is on the victim's disk (only the good feed has a directory).
    async fn still_serving(&mut self) {
        let more = blocks(5, 2);
        self.good.append(self.feed, more).await.unwrap();
        self.length += 5;
        wait_synced(&mut self.events, self.feed, self.length).await;
        let info = self.victim.open_feed(self.feed).await.unwrap();
        assert_eq!((info.length, info.stored), (self.length, self.length));
        assert_eq!(feed_dirs(self.dir.path()), vec![hex(&self.feed)]);
    }

    async fn close(self) {
        self.hostile.close().await;
        self.victim.close().await;
        self.good.close().await;
    }
}

fn hex(feed: &FeedKey) -> String {
    feed.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// The feed directories in a node's disk store (`feeds/<hh>/<key hex>`).
fn feed_dirs(data_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let walk = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    for root in walk(data_dir) {
        for fan in walk(&root.join("feeds")).into_iter().chain(walk(&root)) {
            for feed in walk(&fan) {
                let name = feed.file_name().unwrap().to_string_lossy().into_owned();
                if name.len() == 64 && !found.contains(&name) {
                    found.push(name);
                }
            }
        }
    }
    found.sort();
    found
}

async fn wait_synced(events: &mut broadcast::Receiver<NodeEvent>, feed: FeedKey, length: u64) {
    recv_until(
        events,
        &format!("victim: feed {} synced at {length}", feed.fmt_short()),
        |e| {
            matches!(e, NodeEvent::FeedSynced { feed: f, length: l, .. } if *f == feed && *l == length)
                .then_some(())
        },
    )
    .await
}

fn run(test: impl std::future::Future<Output = ()>) {
    actix::System::new().block_on(test);
}

#[test]
fn random_bytes_end_the_session_and_ban() {
    run(async {
        let mut w = World::new().await;
        let mut s = w.dial().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        // A frame of random payload after the hello, then more noise.
        let mut noise = vec![0, 0, 0, 200];
        noise.extend((0..4096).map(|_| rng.gen::<u8>()));
        s.send_bytes(&noise).await;
        w.expect_end(&["protocol error"], true).await;
        w.still_serving().await;
        w.close().await;
    });
}

#[test]
fn an_oversize_frame_ends_the_session_and_bans() {
    run(async {
        let mut w = World::new().await;
        let mut s = w.dial().await;
        let len = u32::try_from(MAX_FRAME_LEN + 1).unwrap();
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend([0u8; 1000]);
        s.send_bytes(&bytes).await;
        let reason = w.expect_end(&["frame too large"], true).await;
        assert!(
            reason.contains(&(MAX_FRAME_LEN + 1).to_string()),
            "{reason}"
        );
        w.still_serving().await;
        w.close().await;
    });
}

#[test]
fn a_truncated_frame_then_the_end_of_the_stream_ends_the_session_and_bans() {
    run(async {
        let mut w = World::new().await;
        let mut s = w.dial().await;
        let mut bytes = 100u32.to_be_bytes().to_vec();
        bytes.extend([5u8; 10]);
        s.send_bytes(&bytes).await;
        let _ = s.send.finish();
        w.expect_end(&["stream ended inside a frame: 14 of 104 bytes"], true)
            .await;
        w.still_serving().await;
        w.close().await;
    });
}

#[test]
fn a_wrong_namespace_proof_ends_the_session_and_bans() {
    run(async {
        let mut w = World::new().await;
        let mut s = w.dial().await;
        let namespace = NamespaceId::from_name("team");
        let tag = NamespaceSecret([8; 32]).proof(&s.exporter, Role::Dialer, &namespace);
        s.send_message(&Message::Proof { namespace, tag }).await;
        w.expect_end(&["bad proof"], true).await;
        w.still_serving().await;
        w.close().await;
    });
}

#[test]
fn a_stream_for_a_feed_never_offered_ends_the_session_and_bans() {
    run(async {
        let mut w = World::new().await;
        let s = w.dial().await;
        let hostile = w.hostile.key();
        recv_until(&mut w.events, "victim: hostile session up", |e| {
            matches!(e, NodeEvent::SessionUp { peer } if *peer == hostile).then_some(())
        })
        .await;
        let _stream = s
            .open_feed_stream(&FeedStreamHeader::Offered {
                by: Role::Dialer,
                id: 7,
            })
            .await;
        w.expect_end(&["refused stream"], true).await;
        w.still_serving().await;
        w.close().await;
    });
}

#[test]
fn a_slowloris_is_timed_out_without_a_ban() {
    run(async {
        let mut w = World::new().await;
        let mut s = w.dial().await;
        let hostile = w.hostile.key();
        recv_until(&mut w.events, "victim: hostile session up", |e| {
            matches!(e, NodeEvent::SessionUp { peer } if *peer == hostile).then_some(())
        })
        .await;
        // A feed stream whose header never completes, and a control frame that never
        // does; we never read anything the victim sends.
        let (mut feed_send, _feed_recv) = s.connection.open_bi().await.unwrap();
        feed_send.write_all(&[0, 0, 0, 40, 1]).await.unwrap();
        let mut partial = 1000u32.to_be_bytes().to_vec();
        partial.extend([0u8; 10]);
        s.send_bytes(&partial).await;
        let started = std::time::Instant::now();
        let reason = w
            .expect_end(&["control frame stalled: 10 of 1000 bytes"], false)
            .await;
        assert!(reason.contains("timeout"), "{reason}");
        // A guard against a timer that never fires early, not a timing check.
        assert!(
            started.elapsed() >= Duration::from_secs(STALL_SECS),
            "{reason}"
        );
        w.still_serving().await;
        w.close().await;
    });
}
