//! `Wiring`: the actor that connects discovery, the connection manager and the sessions.
//!
//! A thin shell with no protocol of its own:
//! - Discovery's `PeerFound` becomes a connection manager `Dial` (no pinned key: the DHT
//!   carries none, and the connection manager deduplicates by key), and the dial's end
//!   goes back to discovery as `PeerTried`, which is what `flushed` waits for;
//! - the connection manager's `PeerUp` starts a session on the connection (we dialed ↔
//!   `Role::Dialer`), and `PeerDown` of the connection that session runs on stops it;
//! - a session that ended because the peer broke the protocol
//!   (`EndReason::is_misbehaviour`, sent here as [`SessionOver`]) bans the peer's key in
//!   the connection manager for `limits.ban_secs` (which also closes its connection), and
//!   is counted (`bans`), logged once and reported (`NodeEvent::PeerBanned`); a pending
//!   redial of it is cancelled;
//! - the node's counters and events follow.
//!
//! Once closing, found peers are no longer dialed and new connections are closed.
//!
//! It also remembers, per connected peer, the topics whose lookups led us to dial it.
//! When a topic is left ([`TopicLeft`]), a connection that we initiated and that no
//! other joined topic found is closed: it was only there for that topic. Connections
//! the peer initiated, and peers dialed on request (`connect`), stay.
//!
//! A connection we dialed and lost keeps what it was for (its topics, `connect`) while
//! the redialer may dial it again ([`Wiring::lost`]): the redialed connection's
//! `PeerUp` takes them over, so a later leave closes it as it would have closed the
//! lost one, and a leave while the redial is pending returns the peer so that the node
//! cancels that redial. The redialer says when it stops trying ([`RedialOver`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use replic8::actor::{SessionsActor, StartSession, StopSession};
use replic8::keys::Role;
use replic8::session::EndReason;
use replic8_connmgr::{Ban, ConnManager, Dial, Initiator, PeerDown, PeerKey, PeerUp};
use replic8_discovery::{DiscoveryActor, PeerFound, PeerTried, Topic};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::events::NodeEvent;
use crate::metrics::Counters;
use crate::node::redial::CancelRedial;

/// How often the byte counters are refreshed from the connection manager.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The wiring actor. See the module documentation.
#[derive(Debug)]
pub(crate) struct Wiring {
    pub(crate) conn: Addr<ConnManager>,
    pub(crate) discovery: Addr<DiscoveryActor>,
    pub(crate) sessions: Addr<SessionsActor>,
    /// The redialer: a banned peer is not redialed.
    pub(crate) redialer: Recipient<CancelRedial>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) counters: Arc<Counters>,
    /// Our QUIC address: a found peer at this address is ourselves.
    pub(crate) local: SocketAddr,
    /// Peers up now, with the `stable_id` of the connection their session runs on.
    pub(crate) up: HashMap<PeerKey, Up>,
    /// Topics and requests for peers whose dial answered before their `PeerUp` arrived
    /// (the two messages travel separately); merged into `up` at the `PeerUp`.
    pub(crate) early: HashMap<PeerKey, Up>,
    /// Connections we dialed that went down while some topic or a `connect` needed
    /// them, by peer, until the peer is up again or the redialer stops ([`RedialOver`]).
    pub(crate) lost: HashMap<PeerKey, Up>,
    pub(crate) closing: bool,
    /// How long a misbehaving peer is banned; zero bans no one.
    pub(crate) ban_for: Duration,
}

/// A peer that is up.
#[derive(Debug)]
pub(crate) struct Up {
    /// `stable_id` of the connection its session runs on.
    connection: usize,
    /// Who dialed that connection.
    initiator: Initiator,
    /// Topics whose lookups found and dialed it.
    topics: HashSet<Topic>,
    /// Dialed on request (`connect`): not closed when a topic is left.
    requested: bool,
}

impl Wiring {
    fn is_self(&self, addr: SocketAddr) -> bool {
        addr == self.local
            || (addr.port() == self.local.port()
                && (addr.ip().is_loopback() || addr.ip() == self.local.ip()))
    }
}

impl Wiring {
    /// The entry of a peer that is up, or the early entry of one about to be.
    fn entry(&mut self, key: PeerKey) -> &mut Up {
        match self.up.get_mut(&key) {
            Some(up) => up,
            None => self.early.entry(key).or_insert_with(|| Up {
                connection: 0,
                initiator: Initiator::Local,
                topics: HashSet::new(),
                requested: false,
            }),
        }
    }
}

impl Actor for Wiring {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(STATS_INTERVAL, |this, ctx| {
            let counters = this.counters.clone();
            let stats = this.conn.send(replic8_connmgr::Stats);
            ctx.spawn(
                async move {
                    if let Ok(stats) = stats.await {
                        counters.bytes_in.set(stats.bytes_received);
                        counters.bytes_out.set(stats.bytes_sent);
                        counters.evictions.set(stats.evictions);
                        counters.retries.set(stats.retries_sent);
                        counters.refused.set(stats.incoming_refused);
                    }
                }
                .into_actor(this),
            );
        });
    }
}

/// Node → wiring: stop dialing and accepting; replies with the peers up now.
#[derive(Debug, Message)]
#[rtype(result = "Vec<PeerKey>")]
pub(crate) struct BeginClose;

impl Handler<BeginClose> for Wiring {
    type Result = Vec<PeerKey>;

    fn handle(&mut self, _: BeginClose, _: &mut Context<Self>) -> Vec<PeerKey> {
        self.closing = true;
        self.lost.clear();
        self.up.keys().copied().collect()
    }
}

/// Node → wiring: `topic` was left; close the connections only it needed. Replies with
/// the peers closed and the lost ones only it needed (their redial must be cancelled).
#[derive(Debug, Message)]
#[rtype(result = "Vec<PeerKey>")]
pub(crate) struct TopicLeft(pub(crate) Topic);

impl Handler<TopicLeft> for Wiring {
    type Result = Vec<PeerKey>;

    fn handle(&mut self, msg: TopicLeft, _: &mut Context<Self>) -> Vec<PeerKey> {
        let mut closed = Vec::new();
        for (key, up) in &mut self.up {
            let found = up.topics.remove(&msg.0);
            if found && up.topics.is_empty() && !up.requested && up.initiator == Initiator::Local {
                debug!(peer = %key.fmt_short(), topic = %msg.0.fmt_short(), "closing: only the left topic needed it");
                self.conn.do_send(replic8_connmgr::Close { key: *key });
                closed.push(*key);
            }
        }
        self.lost.retain(|key, lost| {
            let found = lost.topics.remove(&msg.0);
            let needed = !lost.topics.is_empty() || lost.requested;
            if found && !needed {
                debug!(peer = %key.fmt_short(), topic = %msg.0.fmt_short(), "not redialing: only the left topic needed it");
                closed.push(*key);
            }
            needed
        });
        closed
    }
}

/// Node → wiring: `key` was dialed on request; keep its connection when topics are left.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Requested(pub(crate) PeerKey);

impl Handler<Requested> for Wiring {
    type Result = ();

    fn handle(&mut self, msg: Requested, _: &mut Context<Self>) {
        self.entry(msg.0).requested = true;
    }
}

impl Handler<PeerFound> for Wiring {
    type Result = ();

    fn handle(&mut self, found: PeerFound, ctx: &mut Context<Self>) {
        let tried = PeerTried {
            topic: found.topic,
            addr: found.addr,
        };
        if self.closing || self.is_self(found.addr) {
            self.discovery.do_send(tried);
            return;
        }
        let dial = self.conn.send(Dial {
            addr: found.addr,
            expected_key: None,
        });
        let discovery = self.discovery.clone();
        ctx.spawn(dial.into_actor(self).map(move |result, this, _| {
            match result {
                Ok(Ok(key)) => {
                    debug!(addr = %tried.addr, peer = %key.fmt_short(), "dialed");
                    this.entry(key).topics.insert(tried.topic);
                }
                Ok(Err(e)) => debug!(addr = %tried.addr, error = %e, "dial failed"),
                Err(_) => {}
            }
            discovery.do_send(tried);
        }));
    }
}

impl Handler<PeerUp> for Wiring {
    type Result = ();

    fn handle(&mut self, up: PeerUp, _: &mut Context<Self>) {
        if self.closing {
            self.conn.do_send(replic8_connmgr::Close { key: up.key });
            return;
        }
        // A replaced connection keeps what its predecessor was for.
        let mut topics = HashSet::new();
        let mut requested = false;
        for old in [
            self.up.remove(&up.key),
            self.early.remove(&up.key),
            self.lost.remove(&up.key),
        ]
        .into_iter()
        .flatten()
        {
            topics.extend(old.topics);
            requested |= old.requested;
        }
        self.up.insert(
            up.key,
            Up {
                connection: up.connection.stable_id(),
                initiator: up.initiator,
                topics,
                requested,
            },
        );
        self.counters.peers.set(self.up.len() as u64);
        let role = match up.initiator {
            Initiator::Local => Role::Dialer,
            Initiator::Remote => Role::Acceptor,
        };
        self.sessions.do_send(StartSession {
            peer: replic8::keys::PeerKey(*up.key.as_bytes()),
            connection: up.connection,
            role,
        });
        let _ = self.events.send(NodeEvent::PeerUp {
            key: up.key,
            addr: up.addr,
            initiator: up.initiator,
        });
    }
}

impl Handler<PeerDown> for Wiring {
    type Result = ();

    fn handle(&mut self, down: PeerDown, _: &mut Context<Self>) {
        // A PeerDown for a connection that a newer one already replaced: the session
        // was replaced with it, and the peer is still up.
        if self.up.get(&down.key).map(|u| u.connection) != Some(down.connection_id) {
            return;
        }
        let gone = self.up.remove(&down.key);
        self.early.remove(&down.key);
        // The redialer may bring it back: what it was for goes with it.
        if let Some(gone) = gone.filter(|g| {
            !self.closing
                && g.initiator == Initiator::Local
                && (!g.topics.is_empty() || g.requested)
        }) {
            self.lost.insert(down.key, gone);
        }
        self.counters.peers.set(self.up.len() as u64);
        self.sessions.do_send(StopSession {
            peer: replic8::keys::PeerKey(*down.key.as_bytes()),
            reason: down.reason.to_string(),
        });
        let _ = self.events.send(NodeEvent::PeerDown {
            key: down.key,
            reason: down.reason,
        });
    }
}

/// Redialer → wiring: the lost connection `connection` to `key` is not (or no longer)
/// redialed; forget what it was for.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct RedialOver {
    /// The peer.
    pub(crate) key: PeerKey,
    /// `stable_id` of the connection that was lost.
    pub(crate) connection: usize,
}

impl Handler<RedialOver> for Wiring {
    type Result = ();

    fn handle(&mut self, msg: RedialOver, _: &mut Context<Self>) {
        if self.lost.get(&msg.key).map(|l| l.connection) == Some(msg.connection) {
            self.lost.remove(&msg.key);
        }
    }
}

/// Node → wiring: the session with `peer` ended with `reason`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct SessionOver {
    /// The peer.
    pub(crate) peer: PeerKey,
    /// Why the session ended.
    pub(crate) reason: EndReason,
}

impl Handler<SessionOver> for Wiring {
    type Result = ();

    fn handle(&mut self, msg: SessionOver, ctx: &mut Context<Self>) {
        if !msg.reason.is_misbehaviour() || self.ban_for.is_zero() {
            return;
        }
        warn!(peer = %msg.peer.fmt_short(), reason = %msg.reason, ban = ?self.ban_for, "peer banned");
        self.counters.bans.add(1);
        self.redialer.do_send(CancelRedial { key: msg.peer });
        let duration = self.ban_for;
        let ban = self.conn.send(Ban {
            key: msg.peer,
            duration,
        });
        // The event once the connection manager holds the ban: from then on the peer
        // is refused.
        let events = self.events.clone();
        ctx.spawn(
            async move {
                let _ = ban.await;
                let _ = events.send(NodeEvent::PeerBanned {
                    peer: msg.peer,
                    reason: msg.reason.to_string(),
                    duration,
                });
            }
            .into_actor(self),
        );
    }
}
