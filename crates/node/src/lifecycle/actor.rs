//! [`LifecycleActor`]: the thin shell that drives [`PeerLifecycle`] with discovery, the
//! connection manager and the sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use replic8::actor::{SessionsActor, StartSession, StopSession};
use replic8_connmgr::{Ban, ConnManager, Dial, DialError, PeerDown, PeerKey, PeerUp};
use replic8_discovery::{DiscoveryActor, PeerFound, PeerTried};
use tokio::sync::broadcast;

use super::core::{Action, LifecycleConfig, PeerLifecycle};
use super::messages::{BeginClose, CancelRedial, Redialing, Requested, SessionEnded, TopicLeft};
use crate::events::NodeEvent;
use crate::metrics::Counters;

/// How often the byte counters are refreshed from the connection manager.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The actor that owns the node's [`PeerLifecycle`]. Subscribed to discovery's
/// `PeerFound` and the connection manager's `PeerUp`/`PeerDown`; told of session ends,
/// left topics, `connect`, `disconnect` and `close` by the node. It also keeps the
/// node's peer and ban counters, and copies the connection manager's byte counters
/// every [`STATS_INTERVAL`].
#[derive(Debug)]
pub(crate) struct LifecycleActor {
    core: PeerLifecycle<quinn::Connection>,
    conn: Addr<ConnManager>,
    discovery: Addr<DiscoveryActor>,
    sessions: Addr<SessionsActor>,
    events: broadcast::Sender<NodeEvent>,
    counters: Arc<Counters>,
    /// Fires at the core's `poll_timeout`: that deadline, and the timer.
    timer: Option<(Instant, SpawnHandle)>,
}

impl LifecycleActor {
    /// An actor over a new core with `config`.
    pub(crate) fn new(
        config: LifecycleConfig,
        conn: Addr<ConnManager>,
        discovery: Addr<DiscoveryActor>,
        sessions: Addr<SessionsActor>,
        events: broadcast::Sender<NodeEvent>,
        counters: Arc<Counters>,
    ) -> Self {
        LifecycleActor {
            core: PeerLifecycle::new(config),
            conn,
            discovery,
            sessions,
            events,
            counters,
            timer: None,
        }
    }

    /// Carries out every action the core has queued, then re-arms the timer.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Dial { id, addr, key } => {
                    let dial = self.conn.send(Dial {
                        addr,
                        expected_key: key,
                    });
                    ctx.spawn(dial.into_actor(self).map(move |result, this, ctx| {
                        // A dropped reply: the connection manager is gone.
                        let result = result.unwrap_or(Err(DialError::Shutdown));
                        this.core.handle_dialed(id, result, Instant::now());
                        this.drive(ctx);
                    }));
                }
                Action::Close { key } => self.conn.do_send(replic8_connmgr::Close { key }),
                Action::Ban {
                    key,
                    duration,
                    reason,
                } => {
                    self.counters.bans.add(1);
                    let ban = self.conn.send(Ban { key, duration });
                    // The event once the connection manager holds the ban: from then on
                    // the peer is refused.
                    let events = self.events.clone();
                    ctx.spawn(
                        async move {
                            let _ = ban.await;
                            let _ = events.send(NodeEvent::PeerBanned {
                                peer: key,
                                reason,
                                duration,
                            });
                        }
                        .into_actor(self),
                    );
                }
                Action::StartSession {
                    peer,
                    connection,
                    role,
                } => self.sessions.do_send(StartSession {
                    peer,
                    connection,
                    role,
                }),
                Action::StopSession { peer, reason } => {
                    self.sessions.do_send(StopSession { peer, reason })
                }
                Action::PeerTried { topic, addr } => {
                    self.discovery.do_send(PeerTried { topic, addr })
                }
                Action::Event(event) => {
                    let _ = self.events.send(event);
                }
            }
        }
        self.counters.peers.set(self.core.peers_up() as u64);
        self.arm(ctx);
    }

    /// Arms the timer for the core's next deadline, unless it is armed for it already.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let next = self.core.poll_timeout();
        if self.timer.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        if let Some((_, timer)) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let Some(at) = next else {
            return;
        };
        let fire = move |this: &mut Self, ctx: &mut Context<Self>| {
            this.timer = None;
            this.core.handle_timeout(Instant::now());
            this.drive(ctx);
        };
        let timer = ctx.run_later(at.saturating_duration_since(Instant::now()), fire);
        self.timer = Some((at, timer));
    }
}

impl Actor for LifecycleActor {
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

impl Handler<PeerFound> for LifecycleActor {
    type Result = ();

    fn handle(&mut self, found: PeerFound, ctx: &mut Context<Self>) {
        self.core
            .handle_found(found.topic, found.addr, found.source);
        self.drive(ctx);
    }
}

impl Handler<PeerUp> for LifecycleActor {
    type Result = ();

    fn handle(&mut self, up: PeerUp, ctx: &mut Context<Self>) {
        let connection = up.connection.stable_id();
        self.core.handle_up(
            up.key,
            connection,
            up.addr,
            up.initiator,
            up.connection,
            Instant::now(),
        );
        self.drive(ctx);
    }
}

impl Handler<PeerDown> for LifecycleActor {
    type Result = ();

    fn handle(&mut self, down: PeerDown, ctx: &mut Context<Self>) {
        self.core
            .handle_down(down.key, down.connection_id, down.reason, Instant::now());
        self.drive(ctx);
    }
}

impl Handler<SessionEnded> for LifecycleActor {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, ctx: &mut Context<Self>) {
        self.core
            .handle_session_ended(msg.peer, &msg.reason, Instant::now());
        self.drive(ctx);
    }
}

impl Handler<TopicLeft> for LifecycleActor {
    type Result = ();

    fn handle(&mut self, msg: TopicLeft, ctx: &mut Context<Self>) {
        self.core.handle_topic_left(msg.0);
        self.drive(ctx);
    }
}

impl Handler<Requested> for LifecycleActor {
    type Result = ();

    fn handle(&mut self, msg: Requested, _: &mut Context<Self>) {
        self.core.handle_requested(msg.0);
    }
}

impl Handler<CancelRedial> for LifecycleActor {
    type Result = ();

    fn handle(&mut self, msg: CancelRedial, ctx: &mut Context<Self>) {
        self.core.cancel(msg.key);
        self.drive(ctx);
    }
}

impl Handler<Redialing> for LifecycleActor {
    type Result = Vec<PeerKey>;

    fn handle(&mut self, _: Redialing, _: &mut Context<Self>) -> Vec<PeerKey> {
        self.core.redialing()
    }
}

impl Handler<BeginClose> for LifecycleActor {
    type Result = ();

    fn handle(&mut self, _: BeginClose, ctx: &mut Context<Self>) {
        self.core.close();
        self.drive(ctx);
    }
}

#[cfg(test)]
impl Handler<super::messages::RedialsStarted> for LifecycleActor {
    type Result = u64;

    fn handle(&mut self, _: super::messages::RedialsStarted, _: &mut Context<Self>) -> u64 {
        self.core.redials_started()
    }
}
