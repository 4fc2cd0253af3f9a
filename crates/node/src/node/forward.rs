//! The event forwarders: the session layer's and the feed store's events turned into
//! node events, counters and the peer lifecycle's inputs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use replic8::actor::PeerEvent;
use replic8::feed_store::FeedStoreEvent;
use replic8::message::CloseCode;
use replic8::session::SessionEvent;
use replic8_connmgr::{ConnManager, PeerActivity, PeerKey};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use crate::events::NodeEvent;
use crate::feed_peers::FeedPeers;
use crate::metrics::Counters;

use super::namespace_types::{self, OfferRecord};
use crate::lifecycle::{LifecycleActor, SessionEnded};

/// How often at most one forwarder tells the connection manager that a peer is active:
/// well under the connection manager's eviction grace (10 s), so a peer that reconnected
/// (its new connection starts idle) is marked again before it could be evicted.
pub(super) const MARK_EVERY: Duration = Duration::from_secs(3);

/// Most peers a forwarder remembers marking; past it the memory starts over (a bound:
/// forgetting costs one repeated message).
pub(super) const MARKED_CAP: usize = 4096;

/// Peers a forwarder marked active, and when.
#[derive(Debug, Default)]
pub(super) struct Marked(pub(super) std::collections::HashMap<PeerKey, std::time::Instant>);

impl Marked {
    /// Tells the connection manager that `peer` is worth its slot (it proved a
    /// namespace of ours, accepted or sent feeds, or synced one), at most every
    /// [`MARK_EVERY`]. Inbound peers never marked are the first evicted when the peer
    /// table is full.
    pub(super) fn mark(&mut self, conn: &Addr<ConnManager>, peer: PeerKey) {
        let now = std::time::Instant::now();
        if self
            .0
            .get(&peer)
            .is_some_and(|at| now.duration_since(*at) < MARK_EVERY)
        {
            return;
        }
        if self.0.len() >= MARKED_CAP {
            self.0.clear();
        }
        self.0.insert(peer, now);
        conn.do_send(PeerActivity {
            key: peer,
            active: true,
        });
    }
}

/// Turns session events into node events and counters, reports feeds in sync to the
/// table of which peers have each feed, and marks peers that do something useful as
/// active ([`Marked::mark`]).
pub(super) async fn forward_session_events(
    mut rx: mpsc::UnboundedReceiver<PeerEvent>,
    events: broadcast::Sender<NodeEvent>,
    counters: Arc<Counters>,
    lifecycle: Addr<LifecycleActor>,
    conn: Addr<ConnManager>,
    feed_peers: Arc<Mutex<FeedPeers>>,
) {
    let mut established = std::collections::HashMap::<PeerKey, u64>::new();
    let mut marked = Marked::default();
    while let Some(PeerEvent { peer, event }) = rx.recv().await {
        if matches!(
            event,
            SessionEvent::NamespaceProven { .. }
                | SessionEvent::Accepted { .. }
                | SessionEvent::FeedSynced { .. }
        ) {
            marked.mark(&conn, peer);
        }
        let event = match event {
            SessionEvent::Established => {
                *established.entry(peer).or_default() += 1;
                counters.sessions.add(1);
                NodeEvent::SessionUp { peer }
            }
            SessionEvent::NamespaceProven { .. } => continue,
            SessionEvent::FeedStopped { feed, reason } => {
                warn!(peer = %peer.fmt_short(), feed = %feed.fmt_short(), %reason, "feed stopped on this session");
                NodeEvent::FeedStopped { peer, feed, reason }
            }
            SessionEvent::Offered {
                namespace, feeds, ..
            } => NodeEvent::Offered {
                peer,
                namespace,
                feeds,
            },
            SessionEvent::Accepted { namespace, feeds } => NodeEvent::Accepted {
                peer,
                namespace,
                feeds,
            },
            SessionEvent::FeedSynced { feed, length } => {
                // In sync both ways: the peer has it at `length` (a feed in sync from
                // the first words has no stream to report it).
                if let Ok(mut table) = feed_peers.lock() {
                    table.report(feed, peer, Some(length), (0, 0), std::time::Instant::now());
                }
                NodeEvent::FeedSynced { peer, feed, length }
            }
            SessionEvent::SessionEnded { reason } => {
                // A new connection of the peer starts idle in the connection manager.
                marked.0.remove(&peer);
                if let Some(n) = established.get_mut(&peer).filter(|n| **n > 0) {
                    *n -= 1;
                    counters.sessions.sub(1);
                }
                let clean = [CloseCode::DONE, CloseCode::CLOSED].contains(&reason.code);
                if !clean && reason.by == replic8::session::Side::Local {
                    counters.sessions_failed.add(1);
                }
                let text = reason.to_string();
                lifecycle.do_send(SessionEnded { peer, reason });
                NodeEvent::SessionEnded { peer, reason: text }
            }
        };
        let _ = events.send(event);
    }
}

/// Turns feed store events into node events and counters, and keeps the table of
/// which peers have each feed; a peer whose feed we accepted or that sent us verified
/// blocks is marked active ([`Marked::mark`]).
pub(super) async fn forward_feed_events(
    mut rx: mpsc::UnboundedReceiver<FeedStoreEvent>,
    events: broadcast::Sender<NodeEvent>,
    counters: Arc<Counters>,
    feed_peers: Arc<Mutex<FeedPeers>>,
    conn: Addr<ConnManager>,
    offers: Arc<Mutex<namespace_types::OfferLog>>,
    offer_events: broadcast::Sender<OfferRecord>,
) {
    let mut marked = Marked::default();
    while let Some(event) = rx.recv().await {
        let report = match &event {
            FeedStoreEvent::PeerHead { feed, peer, length }
            | FeedStoreEvent::FeedSynced { feed, peer, length } => {
                Some((*feed, *peer, Some(*length), (0, 0)))
            }
            FeedStoreEvent::Downloaded {
                feed,
                peer,
                blocks,
                bytes,
            } => Some((*feed, *peer, None, (*blocks, *bytes))),
            _ => None,
        };
        if let Some((feed, peer, length, downloaded)) = report {
            if let Ok(mut table) = feed_peers.lock() {
                table.report(feed, peer, length, downloaded, std::time::Instant::now());
            }
        }
        if let FeedStoreEvent::Accepted { peer, .. } | FeedStoreEvent::Downloaded { peer, .. } =
            &event
        {
            marked.mark(&conn, *peer);
        }
        let event = match event {
            FeedStoreEvent::Accepted {
                namespace,
                feed,
                peer,
                ..
            } => NodeEvent::FeedAccepted {
                peer,
                namespace,
                feed,
            },
            FeedStoreEvent::Downloaded {
                feed,
                peer,
                blocks,
                bytes,
            } => {
                counters.blocks_verified.add(blocks);
                NodeEvent::Downloaded {
                    peer,
                    feed,
                    blocks,
                    bytes,
                }
            }
            FeedStoreEvent::Refused { refused, .. } => {
                counters
                    .offers_refused
                    .add(refused.policy + refused.elsewhere + refused.quota);
                continue;
            }
            // Per stream; counted in the store's stats (`serve_stalls`).
            FeedStoreEvent::FeedSynced { .. }
            | FeedStoreEvent::PeerHead { .. }
            | FeedStoreEvent::ServeStalled { .. } => continue,
            // Per feed, so a flood of offers makes many: they go to the offer log and
            // its own channel, never to the node's events (whose subscribers would lag).
            FeedStoreEvent::OfferDecided { .. } => {
                let record = offers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(&event);
                if let Some(record) = record {
                    let _ = offer_events.send(record);
                }
                continue;
            }
            FeedStoreEvent::SyncFailed { feed, peer, reason } => {
                counters.verify_failures.add(1);
                NodeEvent::SyncFailed { peer, feed, reason }
            }
        };
        let _ = events.send(event);
    }
}
