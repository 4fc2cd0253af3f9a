//! What the default feed store's tests over QUIC share: a node (its session layer, its
//! store and two endpoints), the events of every node on one channel, sessions started
//! between nodes, and waits for events under a guard.
#![allow(clippy::unwrap_used, clippy::type_complexity, missing_docs)]

use std::time::Duration;

use actix::Addr;
use replic8::actor::{PeerEvent, SessionsActor, StartSession};
use replic8::feed_store::{FeedStore, FeedStoreEvent};
use replic8::keys::{FeedKey, PeerKey, Role};
use replic8::session::{EndReason, SessionEvent};
use replic8_store::storage::Storage;
use tokio::sync::mpsc;

use crate::tls::{client_endpoint, connect, server_endpoint};

/// How long a wait for an event may take before the test fails.
pub(crate) const GUARD: Duration = Duration::from_secs(30);

/// What a node reported, tagged with the node's number.
#[derive(Debug)]
pub(crate) enum Ev {
    Store(u8, FeedStoreEvent),
    Session(u8, PeerEvent),
    /// A test store was given a stream for this feed.
    Attached(u8, FeedKey),
}

/// One node: key `[n; 32]`, its session layer and feed store, and an endpoint to accept
/// on and one to dial from.
pub(crate) struct Node<St: Storage> {
    pub(crate) n: u8,
    pub(crate) key: PeerKey,
    pub(crate) sessions: Addr<SessionsActor>,
    pub(crate) store: Addr<FeedStore<St>>,
    pub(crate) server: quinn::Endpoint,
    pub(crate) client: quinn::Endpoint,
}

impl<St: Storage> Node<St> {
    /// Node `n` of these actors, with fresh endpoints.
    pub(crate) fn new(n: u8, sessions: Addr<SessionsActor>, store: Addr<FeedStore<St>>) -> Self {
        Node {
            n,
            key: PeerKey([n; 32]),
            sessions,
            store,
            server: server_endpoint(),
            client: client_endpoint(),
        }
    }
}

/// Senders for node `n`'s session and store events, forwarded to `events` as [`Ev`]s.
pub(crate) fn forward_events(
    n: u8,
    events: &mpsc::UnboundedSender<Ev>,
) -> (
    mpsc::UnboundedSender<PeerEvent>,
    mpsc::UnboundedSender<FeedStoreEvent>,
) {
    let (stx, mut srx) = mpsc::unbounded_channel::<PeerEvent>();
    let (ftx, mut frx) = mpsc::unbounded_channel::<FeedStoreEvent>();
    let (e1, e2) = (events.clone(), events.clone());
    tokio::spawn(async move {
        while let Some(e) = srx.recv().await {
            let _ = e1.send(Ev::Session(n, e));
        }
    });
    tokio::spawn(async move {
        while let Some(e) = frx.recv().await {
            let _ = e2.send(Ev::Store(n, e));
        }
    });
    (stx, ftx)
}

/// One end of a test connection: its key, its endpoint (the dialer's client, the
/// acceptor's server) and its session layer.
pub(crate) type End<'a> = (PeerKey, &'a quinn::Endpoint, &'a Addr<SessionsActor>);

/// Connects `dialer` to `acceptor` and starts the session at both ends (any test's
/// session layers, not only these nodes').
pub(crate) async fn start_sessions(dialer: End<'_>, acceptor: End<'_>) {
    let (dialed, accepted) = connect(dialer.1, acceptor.1).await;
    dialer
        .2
        .send(StartSession {
            peer: acceptor.0,
            connection: dialed,
            role: Role::Dialer,
        })
        .await
        .unwrap()
        .unwrap();
    acceptor
        .2
        .send(StartSession {
            peer: dialer.0,
            connection: accepted,
            role: Role::Acceptor,
        })
        .await
        .unwrap()
        .unwrap();
}

/// Starts a session between a dialer (its key, endpoint and session layer) and a node.
pub(crate) async fn link_raw<B: Storage>(
    key: PeerKey,
    client: &quinn::Endpoint,
    sessions: &Addr<SessionsActor>,
    acceptor: &Node<B>,
) {
    start_sessions(
        (key, client, sessions),
        (acceptor.key, &acceptor.server, &acceptor.sessions),
    )
    .await;
}

/// Starts a session between two nodes.
pub(crate) async fn link<A: Storage, B: Storage>(dialer: &Node<A>, acceptor: &Node<B>) {
    link_raw(dialer.key, &dialer.client, &dialer.sessions, acceptor).await;
}

/// Waits for an event matching `want`; panics on a guard timeout with what was seen.
pub(crate) async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<Ev>,
    what: &str,
    mut want: impl FnMut(&Ev) -> bool,
) -> Vec<Ev> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(GUARD, async {
        while let Some(e) = events.recv().await {
            let hit = want(&e);
            seen.push(e);
            if hit {
                return;
            }
        }
    })
    .await;
    if found.is_err() {
        panic!("timed out waiting for {what}; saw: {seen:#?}");
    }
    seen
}

/// Waits until node `n` ends its session with `peer`: what was seen, and why it ended.
pub(crate) async fn session_end(
    events: &mut mpsc::UnboundedReceiver<Ev>,
    n: u8,
    peer: PeerKey,
) -> (Vec<Ev>, EndReason) {
    let seen = wait_for(events, &format!("node {n} to end {peer:?}'s session"), |e| {
        matches!(e, Ev::Session(m, PeerEvent { peer: p, event: SessionEvent::SessionEnded { .. } }) if *m == n && *p == peer)
    })
    .await;
    let Some(Ev::Session(
        _,
        PeerEvent {
            event: SessionEvent::SessionEnded { reason },
            ..
        },
    )) = seen.last()
    else {
        unreachable!()
    };
    let reason = reason.clone();
    (seen, reason)
}
