//! `SessionsActor`: the store registry and one running session per peer connection.
//!
//! A thin shell: it keeps which store serves which namespace, starts
//! [`driver::run`] for each connection it is given ([`StartSession`], sent by the node
//! on the connection manager's `PeerUp`), and routes the stores' messages ([`Share`], [`Announce`],
//! [`FeedSynced`], [`FeedUpdated`], [`StreamEnded`], [`FeedFailed`], [`FeedStalled`]) to the sessions they concern. All
//! protocol decisions are in the session core.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, ResponseFuture};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info_span, Instrument};

use crate::driver::{
    self, NamespaceEntry, SessionCommand, SessionCounters, SessionSpec, SessionTotals,
};
use crate::keys::{PeerKey, Role};
use crate::session::{CommandError, EndReason, SessionConfig, SessionEvent};
use crate::store::{
    Announce, FeedFailed, FeedStalled, FeedSynced, FeedUpdated, RegisterError, RegisterStore,
    Share, ShareError, StreamEnded, UnregisterStore,
};

/// An event of the session with `peer`.
#[derive(Debug, Clone)]
pub struct PeerEvent {
    /// The peer.
    pub peer: PeerKey,
    /// What happened.
    pub event: SessionEvent,
}

/// Runs a session on a new connection (replacing any session with the same peer).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), StartError>")]
pub struct StartSession {
    /// The peer, as the connection manager authenticated it.
    pub peer: PeerKey,
    /// The connection.
    pub connection: quinn::Connection,
    /// Whether we dialed it.
    pub role: Role,
}

/// Why a session could not start.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StartError {
    /// The actor is stopping.
    #[error("the session layer is closing")]
    Closing,
}

/// Ends the session with `peer`, telling it why.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct StopSession {
    /// The peer.
    pub peer: PeerKey,
    /// Why, sent to the peer.
    pub reason: String,
}

/// The peers with a running session.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<PeerKey>")]
pub struct ListSessions;

/// The counters of every session since the actor started, ended ones included.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "SessionTotals")]
pub struct GetSessionTotals;

/// Sent by a session's task when its session ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SessionFinished {
    /// The peer.
    pub peer: PeerKey,
    /// Which session with that peer (a newer one may have replaced it).
    pub generation: u64,
    /// Why it ended.
    pub reason: EndReason,
}

/// A running session: its command channel and its task (aborted on drop).
#[derive(Debug)]
struct Running {
    generation: u64,
    commands: mpsc::UnboundedSender<SessionCommand>,
    /// Held so that dropping the entry stops the task.
    _task: AbortOnDropHandle<()>,
}

/// The store registry and the running sessions. See the module documentation.
#[derive(Debug)]
pub struct SessionsActor {
    config: SessionConfig,
    stores: HashMap<String, NamespaceEntry>,
    sessions: HashMap<PeerKey, Running>,
    /// Sessions told to close, kept until they finish.
    closing: HashMap<u64, Running>,
    events: Option<mpsc::UnboundedSender<PeerEvent>>,
    next_generation: u64,
    /// Summed over every session it started (each adds to it as it runs).
    counters: Arc<SessionCounters>,
    /// Stop was asked: sessions are closing, no new ones start.
    shutting_down: bool,
}

/// How long sessions get to send their close before the actor stops anyway.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl SessionsActor {
    /// An actor whose sessions use `config`; their events go to `events`, if given.
    pub fn new(config: SessionConfig, events: Option<mpsc::UnboundedSender<PeerEvent>>) -> Self {
        SessionsActor {
            config,
            stores: HashMap::new(),
            sessions: HashMap::new(),
            closing: HashMap::new(),
            events,
            next_generation: 0,
            counters: Arc::default(),
            shutting_down: false,
        }
    }

    fn close(&mut self, peer: &PeerKey, reason: &str) {
        if let Some(running) = self.sessions.remove(peer) {
            let _ = running.commands.send(SessionCommand::Close {
                reason: reason.to_string(),
            });
            self.closing.insert(running.generation, running);
        }
    }
}

impl Actor for SessionsActor {
    type Context = Context<Self>;

    /// Closes every session and stops once they finished (or after a grace period).
    fn stopping(&mut self, ctx: &mut Context<Self>) -> actix::Running {
        let idle = self.sessions.is_empty() && self.closing.is_empty();
        // Without a runtime (the system is being dropped) there is nothing to wait on.
        if self.shutting_down || idle || tokio::runtime::Handle::try_current().is_err() {
            return actix::Running::Stop;
        }
        self.shutting_down = true;
        let peers: Vec<PeerKey> = self.sessions.keys().copied().collect();
        for peer in peers {
            self.close(&peer, "node closing");
        }
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
        actix::Running::Continue
    }
}

impl Handler<RegisterStore> for SessionsActor {
    type Result = Result<(), RegisterError>;

    fn handle(&mut self, msg: RegisterStore, _: &mut Context<Self>) -> Self::Result {
        if let Some((name, _)) = msg
            .namespaces
            .iter()
            .find(|(name, _)| self.stores.contains_key(name))
        {
            return Err(RegisterError::Taken(name.clone()));
        }
        for (name, secret) in msg.namespaces {
            let entry = NamespaceEntry {
                name: name.clone(),
                secret,
                store: msg.store.clone(),
            };
            for running in self.sessions.values() {
                let _ = running
                    .commands
                    .send(SessionCommand::Register(entry.clone()));
            }
            self.stores.insert(name, entry);
        }
        Ok(())
    }
}

impl Handler<UnregisterStore> for SessionsActor {
    type Result = ();

    /// Sessions started afterwards do not serve the namespaces; running sessions stop
    /// serving them (feeds replicating in them go on until the session ends).
    fn handle(&mut self, msg: UnregisterStore, _: &mut Context<Self>) {
        for name in msg.namespaces {
            self.stores.remove(&name);
            for running in self.sessions.values() {
                let _ = running
                    .commands
                    .send(SessionCommand::Unregister(name.clone()));
            }
        }
    }
}

impl Handler<StartSession> for SessionsActor {
    type Result = Result<(), StartError>;

    fn handle(&mut self, msg: StartSession, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Err(StartError::Closing);
        }
        let StartSession {
            peer,
            connection,
            role,
        } = msg;
        self.close(&peer, "replaced by a new connection");
        let generation = self.next_generation;
        self.next_generation += 1;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let spec = SessionSpec {
            connection,
            role,
            peer,
            // Stream ids unique per peer across sessions: the old session's detaches
            // must not hit the new one's streams.
            config: SessionConfig {
                first_stream_id: generation << 32,
                ..self.config.clone()
            },
            namespaces: self.stores.values().cloned().collect(),
            counters: self.counters.clone(),
        };
        let (addr, events) = (ctx.address(), self.events.clone());
        let span = info_span!("session", peer = %peer.fmt_short(), ?role);
        let task = tokio::spawn(
            async move {
                let forward = async {
                    while let Some(event) = events_rx.recv().await {
                        if let Some(events) = &events {
                            let _ = events.send(PeerEvent { peer, event });
                        }
                    }
                };
                let (reason, ()) = tokio::join!(driver::run(spec, commands_rx, events_tx), forward);
                addr.do_send(SessionFinished {
                    peer,
                    generation,
                    reason,
                });
            }
            .instrument(span),
        );
        self.sessions.insert(
            peer,
            Running {
                generation,
                commands,
                _task: AbortOnDropHandle::new(task),
            },
        );
        Ok(())
    }
}

impl Handler<StopSession> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: StopSession, _: &mut Context<Self>) {
        self.close(&msg.peer, &msg.reason);
    }
}

impl Handler<SessionFinished> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: SessionFinished, ctx: &mut Context<Self>) {
        debug!(peer = %msg.peer.fmt_short(), reason = %msg.reason, "session finished");
        self.closing.remove(&msg.generation);
        if self
            .sessions
            .get(&msg.peer)
            .is_some_and(|r| r.generation == msg.generation)
        {
            self.sessions.remove(&msg.peer);
        }
        if self.shutting_down && self.sessions.is_empty() && self.closing.is_empty() {
            ctx.stop();
        }
    }
}

impl Handler<ListSessions> for SessionsActor {
    type Result = Vec<PeerKey>;

    fn handle(&mut self, _: ListSessions, _: &mut Context<Self>) -> Vec<PeerKey> {
        self.sessions.keys().copied().collect()
    }
}

impl Handler<GetSessionTotals> for SessionsActor {
    type Result = actix::MessageResult<GetSessionTotals>;

    fn handle(&mut self, _: GetSessionTotals, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.counters.totals())
    }
}

impl Handler<Share> for SessionsActor {
    type Result = ResponseFuture<Result<usize, ShareError>>;

    fn handle(&mut self, msg: Share, _: &mut Context<Self>) -> Self::Result {
        if !self.stores.contains_key(&msg.namespace) {
            let name = msg.namespace;
            return Box::pin(async move { Err(ShareError::UnknownNamespace(name)) });
        }
        let targets: Vec<(PeerKey, mpsc::UnboundedSender<SessionCommand>)> = self
            .sessions
            .iter()
            .filter(|(peer, _)| msg.peers.as_ref().is_none_or(|only| only.contains(peer)))
            .filter(|(peer, _)| msg.except.as_ref() != Some(*peer))
            .map(|(peer, running)| (*peer, running.commands.clone()))
            .collect();
        if targets.is_empty() {
            if let Some(peer) = msg.peers.as_ref().and_then(|p| p.first()) {
                let peer = peer.fmt_short();
                return Box::pin(async move { Err(ShareError::NoSession(peer)) });
            }
        }
        let mut replies = Vec::with_capacity(targets.len());
        for (_, commands) in targets {
            let (reply, answer) = oneshot::channel();
            let command = SessionCommand::Share {
                namespace: msg.namespace.clone(),
                feeds: msg.feeds.clone(),
                reply,
            };
            if commands.send(command).is_ok() {
                replies.push(answer);
            }
        }
        Box::pin(async move {
            let mut offered = 0;
            for answer in replies {
                match answer.await {
                    Ok(Ok(n)) => offered += n,
                    Ok(Err(CommandError::Headers { feed, source })) => {
                        return Err(ShareError::Headers {
                            feed: feed.fmt_short(),
                            reason: source.to_string(),
                        })
                    }
                    // A session that ended or did not have the namespace: skip it.
                    Ok(Err(_)) | Err(_) => {}
                }
            }
            Ok(offered)
        })
    }
}

impl Handler<Announce> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: Announce, _: &mut Context<Self>) {
        for running in self.sessions.values() {
            let _ = running.commands.send(SessionCommand::Known {
                namespace: msg.namespace.clone(),
                feeds: msg.feeds.clone(),
            });
        }
    }
}

impl Handler<FeedSynced> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: FeedSynced, _: &mut Context<Self>) {
        if let Some(running) = self.sessions.get(&msg.peer) {
            let _ = running.commands.send(SessionCommand::FeedSynced {
                feed: msg.feed,
                length: msg.length,
            });
        }
    }
}

impl Handler<FeedUpdated> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: FeedUpdated, _: &mut Context<Self>) {
        for running in self.sessions.values() {
            let _ = running.commands.send(SessionCommand::FeedUpdated {
                feed: msg.feed,
                length: msg.length,
            });
        }
    }
}

impl Handler<StreamEnded> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: StreamEnded, _: &mut Context<Self>) {
        if let Some(running) = self.sessions.get(&msg.peer) {
            let _ = running.commands.send(SessionCommand::StreamEnded {
                feed: msg.feed,
                id: msg.id,
            });
        }
    }
}

impl Handler<FeedStalled> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: FeedStalled, _: &mut Context<Self>) {
        if let Some(running) = self.sessions.get(&msg.peer) {
            let _ = running.commands.send(SessionCommand::FeedStalled {
                feed: msg.feed,
                reason: msg.reason,
            });
        }
    }
}

impl Handler<FeedFailed> for SessionsActor {
    type Result = ();

    fn handle(&mut self, msg: FeedFailed, _: &mut Context<Self>) {
        if let Some(running) = self.sessions.get(&msg.peer) {
            let _ = running.commands.send(SessionCommand::FeedFailed {
                feed: msg.feed,
                reason: msg.reason,
            });
        }
    }
}
