//! Runs one session over a QUIC connection: the I/O around a [`Session`] core.
//!
//! [`run`] owns the core and is a plain loop: it feeds the core its inputs (control bytes
//! read, feed streams taken, store answers, commands, the time) and carries out its
//! outputs (frames to write, feed streams to open or close, calls to stores, events).
//! The protocol's bookkeeping (readiness, the streams stores hold) is the core's.
//!
//! Small tokio tasks do the I/O and report back on one channel: a reader for the
//! control stream, which reads the next chunk only when given a credit (the core wants
//! bytes while its queued output is under its bound, so a peer that sends and never
//! reads meets QUIC flow control), a writer fed by a channel that reports what it wrote
//! (its queue counts in the core's bound), an accept loop for the peer's feed streams
//! (each header read with exact reads, so no byte of the store's protocol is consumed),
//! and one task per feed stream to open. Store calls are actix messages sent from
//! those tasks; the core sees the answers as inputs. Every task is owned by [`run`]
//! and aborted when it returns.
//!
//! The connection is closed when the session ends, with the close code as the QUIC
//! application error code and the reason as the reason phrase, so the peer learns why
//! even if the `Close` frame is lost with the connection.
//!
//! `counters`: the sums over sessions that each session adds to as it runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

use crate::frame::{FrameError, PREFIX_LEN};
use crate::keys::{exporter_secret, FeedKey, NamespaceSecret, PeerKey, Role};
use crate::message::MAX_WHOLE_FEED_BYTES;
use crate::message::{self, CloseCode, CodecError, FeedStreamHeader};
use crate::session::{
    CommandError, EndReason, HeadCheck, Session, SessionConfig, SessionEvent, SessionStats, Side,
    StoreCall, StreamCommand, StreamId,
};
use crate::store::{
    Attach, Detach, DetachReason, FeedHeads, FeedStream, KnownFeeds, Offer, ReadWhole, SharedFeed,
    Shares, StoreError, StoreRecipients, WholeFeed, WholeOutcome, WriteWhole,
};
use crate::stream_io::{sleep_until, write_frames};
use replic8_store::SignedHead;

mod counters;
pub use counters::{SessionCounters, SessionTotals};

/// Most bytes in a feed stream header frame's payload: a header is at most 75 bytes.
const MAX_STREAM_HEADER: usize = 256;
/// Bytes asked of the control stream per read.
const READ_CHUNK: usize = 64 * 1024;
/// The answer to a store call for a namespace no store serves (never expected: the
/// driver registers a namespace in the core only with its store).
const NO_STORE: &str = "no store serves the namespace";
/// How long the writer may take to flush the close frame before the connection closes.
const CLOSE_FLUSH: Duration = Duration::from_millis(250);

/// A namespace served on this session, with its store.
#[derive(Debug, Clone)]
pub struct NamespaceEntry {
    /// The namespace's name.
    pub name: String,
    /// Its pre-shared secret, if any.
    pub secret: Option<NamespaceSecret>,
    /// The store that owns its feeds.
    pub store: StoreRecipients,
}

/// What a running session is told from outside (stores, the application).
#[derive(Debug)]
pub enum SessionCommand {
    /// Share feeds live; the reply says how many were offered or queued.
    Share {
        /// The namespace.
        namespace: String,
        /// The feeds.
        feeds: Vec<SharedFeed>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<usize, CommandError>>,
    },
    /// The store holds these feeds in `namespace` now: announce them with `Have`.
    Known {
        /// The namespace.
        namespace: String,
        /// The feeds.
        feeds: Vec<FeedKey>,
    },
    /// The store's sync of a feed with this peer is done at `length`.
    FeedSynced {
        /// The feed.
        feed: FeedKey,
        /// The length both sides hold.
        length: u64,
    },
    /// The store's copy of a feed changed.
    FeedUpdated {
        /// The feed.
        feed: FeedKey,
        /// Its length now.
        length: u64,
    },
    /// The store's protocol on a feed stream ended.
    StreamEnded {
        /// The feed.
        feed: FeedKey,
        /// The stream.
        id: StreamId,
    },
    /// The store found a fault in a feed on its stream: stop that feed on the session.
    FeedFailed {
        /// The feed.
        feed: FeedKey,
        /// What was wrong.
        reason: String,
    },
    /// The peer left a request on one of `feed`'s streams unanswered too long: end the
    /// session with a timeout.
    FeedStalled {
        /// The feed.
        feed: FeedKey,
        /// What was left unanswered.
        reason: String,
    },
    /// Serve one more namespace on this session.
    Register(NamespaceEntry),
    /// Stop serving a namespace on this session.
    Unregister(String),
    /// The session's counters now (queued control bytes included).
    Stats {
        /// Where the answer goes.
        reply: oneshot::Sender<SessionStats>,
    },
    /// End the session.
    Close {
        /// Why, sent to the peer.
        reason: String,
    },
}

/// Everything [`run`] needs.
#[derive(Debug)]
pub struct SessionSpec {
    /// The connection, with the peer's identity already checked.
    pub connection: quinn::Connection,
    /// Whether we dialed.
    pub role: Role,
    /// The peer's key.
    pub peer: PeerKey,
    /// Session settings.
    pub config: SessionConfig,
    /// The namespaces served, each with its store.
    pub namespaces: Vec<NamespaceEntry>,
    /// Where the session adds to the counters of every session (a
    /// [`SessionsActor`](crate::actor::SessionsActor) gives all of its sessions the
    /// same ones); a fresh `Default` for a session counted alone.
    pub counters: Arc<SessionCounters>,
}

type IncomingStream = (FeedStreamHeader, quinn::SendStream, quinn::RecvStream);

enum Input {
    ControlStream(quinn::SendStream, quinn::RecvStream),
    ControlBytes(Vec<u8>),
    /// The writer wrote this many bytes of control frames.
    Written(usize),
    ControlEnd,
    Incoming(Result<IncomingStream, CodecError>),
    /// A feed stream's header did not arrive within the stall timeout.
    HeaderStalled,
    Shares(String, Result<Vec<SharedFeed>, String>),
    Known(String, Result<Vec<FeedKey>, String>),
    Heads(Vec<FeedKey>, Result<Vec<Option<SignedHead>>, String>),
    /// The store's answer to a `ReadWhole` of these feeds.
    WholeRead(Vec<FeedKey>, Result<Vec<Option<WholeFeed>>, String>),
    /// The store's answer to a `WriteWhole` of these feeds.
    WholeWritten(Vec<FeedKey>, Result<Vec<WholeOutcome>, String>),
    /// The peer's heads of one message verified: the positions of those that did not.
    Verified(HeadCheck, Vec<usize>),
    Answer(u64, Result<Vec<FeedKey>, String>),
    /// A feed stream could not be opened, or its store did not take it.
    OpenFailed(FeedKey, StreamId),
    Lost(quinn::ConnectionError),
}

/// Runs the session until it ends; returns why. Events go to `events` as they happen.
pub async fn run(
    spec: SessionSpec,
    mut commands: mpsc::UnboundedReceiver<SessionCommand>,
    events: mpsc::UnboundedSender<SessionEvent>,
) -> EndReason {
    let SessionSpec {
        connection,
        role,
        peer,
        config,
        namespaces,
        counters,
    } = spec;
    // What this session added to `counters` so far.
    let mut added = SessionTotals::default();
    let exporter = match exporter_secret(&connection) {
        Ok(e) => e,
        Err(e) => {
            let reason = EndReason {
                code: CloseCode::PROTOCOL,
                by: Side::Local,
                reason: format!("no tls exporter value: {e:?}"),
                // Our TLS stack's failure, not the peer's.
                peer_at_fault: false,
            };
            connection.close(close_code(reason.code), reason.reason.as_bytes());
            return reason;
        }
    };
    let stall = config.stall_timeout;
    let mut session = Session::new(config, role, exporter, Instant::now());
    let mut stores: HashMap<String, StoreRecipients> = namespaces
        .iter()
        .map(|n| (n.name.clone(), n.store.clone()))
        .collect();

    let (input_tx, mut inputs) = mpsc::unbounded_channel::<Input>();
    let mut tasks = JoinSet::new();
    // Unbounded as a channel, bounded by the core: what it holds counts in the core's
    // queued bytes until the writer reports it written.
    let (write_tx, write_rx) = mpsc::unbounded_channel::<Bytes>();
    let mut write_rx = Some(write_rx);
    // One credit lets the reader read one more chunk.
    let (credit_tx, credit_rx) = mpsc::channel::<()>(1);
    let mut credit_rx = Some(credit_rx);
    // The reader sent a chunk and waits for a credit.
    let mut reader_waiting = false;
    // The writer is kept apart from `tasks` so that it can flush the close frame.
    let mut writer: Option<AbortOnDropHandle<()>> = None;

    // The control stream: the dialer opens it, the acceptor takes the first stream.
    // Streams after it are feed streams (the core refuses any the acceptor opens).
    {
        let connection = connection.clone();
        let tx = input_tx.clone();
        tasks.spawn(async move {
            let opened = match role {
                Role::Dialer => connection.open_bi().await,
                Role::Acceptor => connection.accept_bi().await,
            };
            match opened {
                Ok((send, recv)) => {
                    let _ = tx.send(Input::ControlStream(send, recv));
                    accept_feed_streams(connection, tx, stall).await;
                }
                Err(e) => {
                    let _ = tx.send(Input::Lost(e));
                }
            }
        });
    }

    // Every store is asked what it shares and holds; the core is ready once all answered.
    for entry in &namespaces {
        serve(&mut session, entry);
    }
    let _ = session.handle_ready();

    loop {
        // Carry out everything the core wants.
        while let Some(frame) = session.poll_transmit() {
            let _ = write_tx.send(Bytes::from(frame));
        }
        if reader_waiting && session.wants_control_bytes() && credit_tx.try_send(()).is_ok() {
            reader_waiting = false;
        }
        while let Some(command) = session.poll_stream() {
            match command {
                StreamCommand::Open {
                    feed,
                    namespace,
                    header,
                    stream,
                    verified_head,
                } => {
                    let Some(store) = stores.get(&namespace).cloned() else {
                        session.handle_stream_closed(&feed, stream);
                        continue;
                    };
                    let (connection, tx) = (connection.clone(), input_tx.clone());
                    tasks.spawn(async move {
                        let opened = open_feed_stream(&connection, &header).await;
                        let attached = match opened {
                            Ok(stream_halves) => {
                                let msg = Attach {
                                    feed,
                                    namespace,
                                    peer,
                                    id: stream,
                                    stream: stream_halves,
                                    verified_head,
                                };
                                flatten(store.attach.send(msg).await).is_ok()
                            }
                            Err(()) => false,
                        };
                        if !attached {
                            let _ = tx.send(Input::OpenFailed(feed, stream));
                        }
                    });
                }
                StreamCommand::Close {
                    feed,
                    namespace,
                    stream,
                } => {
                    if let Some(store) = stores.get(&namespace) {
                        store.detach.do_send(Detach {
                            feed,
                            peer,
                            id: stream,
                            reason: DetachReason::Synced,
                        });
                    }
                }
            }
        }
        // After the end, the only calls are detaches, made once the connection is closed.
        while session.end_reason().is_none() {
            let Some(call) = session.poll_store() else {
                break;
            };
            let namespace = match &call {
                StoreCall::Shares { namespace }
                | StoreCall::Known { namespace }
                | StoreCall::Heads { namespace, .. }
                | StoreCall::ReadWhole { namespace, .. }
                | StoreCall::WriteWhole { namespace, .. }
                | StoreCall::Detach { namespace, .. } => namespace,
            };
            let store = stores.get(namespace).cloned();
            let tx = input_tx.clone();
            tasks.spawn(async move {
                if let Some(answer) = ask_store(store, peer, call).await {
                    let _ = tx.send(answer);
                }
            });
        }
        // The peer's heads are verified on the blocking pool, a batch at a time.
        while let Some(check) = session.poll_verify() {
            let tx = input_tx.clone();
            tasks.spawn(async move {
                let heads = check.heads.clone();
                if let Ok(bad) = tokio::task::spawn_blocking(move || verify_heads(&heads)).await {
                    let _ = tx.send(Input::Verified(check, bad));
                }
            });
        }
        let mut ended = None;
        while let Some(event) = session.poll_event() {
            match &event {
                SessionEvent::Offered {
                    namespace,
                    offer,
                    feeds,
                } => match stores.get(namespace).cloned() {
                    Some(store) => {
                        let msg = Offer {
                            peer,
                            namespace: namespace.clone(),
                            feeds: feeds
                                .iter()
                                .map(|(key, headers)| SharedFeed {
                                    key: *key,
                                    headers: headers.clone(),
                                })
                                .collect(),
                        };
                        let (tx, offer) = (input_tx.clone(), *offer);
                        tasks.spawn(async move {
                            let answer = flatten(store.offer.send(msg).await);
                            let _ = tx.send(Input::Answer(offer, answer));
                        });
                    }
                    None => {
                        let _ = session.handle_offer_answer(*offer, Ok(Vec::new()));
                    }
                },
                SessionEvent::SessionEnded { reason } => ended = Some(reason.clone()),
                _ => {}
            }
            let _ = events.send(event);
        }
        // Once per turn of the loop, so the sums are current when the session ends too.
        counters.catch_up(&mut added, &session.stats());
        if let Some(reason) = ended {
            // Flush the close frame, then close the connection with the same code.
            while let Some(frame) = session.poll_transmit() {
                let _ = write_tx.send(Bytes::from(frame));
            }
            drop(write_tx);
            if let Some(mut handle) = writer.take() {
                let _ = tokio::time::timeout(CLOSE_FLUSH, &mut handle).await;
            }
            connection.close(close_code(reason.code), reason.reason.as_bytes());
            while let Some(call) = session.poll_store() {
                if let StoreCall::Detach {
                    feed,
                    namespace,
                    stream,
                } = call
                {
                    if let Some(store) = stores.get(&namespace) {
                        store.detach.do_send(Detach {
                            feed,
                            peer,
                            id: stream,
                            reason: DetachReason::SessionEnded(reason.to_string()),
                        });
                    }
                }
            }
            debug!(%reason, "session ended");
            tasks.abort_all();
            return reason;
        }

        let deadline = session.poll_timeout();
        tokio::select! {
            input = inputs.recv() => {
                // `input_tx` lives here, so the channel never closes while we run.
                let Some(input) = input else { continue };
                match input {
                    Input::ControlStream(send, recv) => {
                        if let Some(rx) = write_rx.take() {
                            let tx = input_tx.clone();
                            let written = move |len| { let _ = tx.send(Input::Written(len)); };
                            writer = Some(AbortOnDropHandle::new(tokio::spawn(write_frames(send, rx, written))));
                        }
                        if let Some(credits) = credit_rx.take() {
                            tasks.spawn(read_control(recv, input_tx.clone(), credits));
                        }
                    }
                    Input::ControlBytes(bytes) => {
                        reader_waiting = true;
                        session.handle_control_bytes(&bytes);
                    }
                    Input::Written(bytes) => session.handle_control_written(bytes),
                    Input::ControlEnd => session.handle_control_end(),
                    Input::Incoming(Ok((header, send, recv))) => {
                        if let Ok(incoming) = session.handle_incoming_stream(header) {
                            let (feed, id) = (incoming.feed, incoming.stream);
                            match stores.get(&incoming.namespace).cloned() {
                                Some(store) => {
                                    if let Some(old) = incoming.replaces {
                                        store.detach.do_send(Detach {
                                            feed,
                                            peer,
                                            id: old,
                                            reason: DetachReason::Synced,
                                        });
                                    }
                                    let msg = Attach {
                                        feed,
                                        namespace: incoming.namespace,
                                        peer,
                                        id,
                                        stream: FeedStream { send, recv },
                                        verified_head: incoming.verified_head,
                                    };
                                    let tx = input_tx.clone();
                                    tasks.spawn(async move {
                                        if flatten(store.attach.send(msg).await).is_err() {
                                            let _ = tx.send(Input::OpenFailed(feed, id));
                                        }
                                    });
                                }
                                // No store serves the namespace any more: drop the stream.
                                None => session.handle_stream_closed(&feed, id),
                            }
                        }
                    }
                    Input::Incoming(Err(e)) => session.handle_incoming_stream_error(e),
                    Input::HeaderStalled => session.handle_stream_header_stalled(),
                    Input::Shares(namespace, answer) => {
                        let list = answer.map(|feeds| feeds.into_iter().map(|f| (f.key, f.headers)).collect());
                        session.handle_shares(&namespace, list);
                    }
                    Input::Known(namespace, answer) => session.handle_known(&namespace, answer),
                    Input::Heads(feeds, answer) => session.handle_heads(&feeds, answer),
                    Input::WholeRead(feeds, answer) => session.handle_whole_read(&feeds, answer),
                    Input::WholeWritten(feeds, answer) => session.handle_whole_written(&feeds, answer),
                    Input::Verified(check, bad) => session.handle_heads_verified(check, &bad),
                    Input::Answer(offer, answer) => {
                        let _ = session.handle_offer_answer(offer, answer);
                    }
                    Input::OpenFailed(feed, stream) => session.handle_stream_closed(&feed, stream),
                    Input::Lost(error) => lost(&mut session, error),
                }
            }
            command = commands.recv() => match command {
                Some(SessionCommand::Share { namespace, feeds, reply }) => {
                    let list = feeds.into_iter().map(|f| (f.key, f.headers)).collect();
                    let _ = reply.send(session.handle_share(&namespace, list));
                }
                Some(SessionCommand::Known { namespace, feeds }) => {
                    // A session without the namespace (not proven yet, or the peer
                    // lacks it) learns of these feeds from the store when it is.
                    if let Err(e) = session.handle_known_feeds(&namespace, feeds) {
                        tracing::debug!(%namespace, error = %e, "announce skipped");
                    }
                }
                Some(SessionCommand::FeedSynced { feed, length }) => session.handle_feed_synced(&feed, length),
                Some(SessionCommand::FeedUpdated { feed, length }) => session.handle_feed_updated(&feed, length),
                Some(SessionCommand::StreamEnded { feed, id }) => session.handle_stream_closed(&feed, id),
                Some(SessionCommand::FeedFailed { feed, reason }) => {
                    session.handle_feed_failed(&feed, &reason);
                }
                Some(SessionCommand::FeedStalled { feed, reason }) => {
                    session.handle_feed_stalled(&feed, &reason);
                }
                Some(SessionCommand::Register(entry)) => {
                    if serve(&mut session, &entry) {
                        stores.insert(entry.name, entry.store);
                    }
                }
                // The store stays known: streams of feeds replicated in the namespace go on.
                Some(SessionCommand::Unregister(name)) => {
                    let _ = session.handle_unregister_namespace(&name);
                }
                Some(SessionCommand::Stats { reply }) => {
                    let _ = reply.send(session.stats());
                }
                Some(SessionCommand::Close { reason }) => session.handle_close(&reason),
                None => session.handle_close("session handle dropped"),
            },
            error = connection.closed() => lost(&mut session, error),
            // Reap finished tasks so a long session does not pile up their results.
            Some(_) = tasks.join_next() => {}
            () = sleep_until(deadline) => session.handle_timeout(Instant::now()),
        }
    }
}

/// Asks a store what the core wants to know; the answer is the core's next input. A
/// namespace without a store (never expected: the driver serves a namespace only with
/// its store) answers with an error.
async fn ask_store(
    store: Option<StoreRecipients>,
    peer: PeerKey,
    call: StoreCall,
) -> Option<Input> {
    match call {
        StoreCall::Shares { namespace } => {
            let msg = Shares {
                peer,
                namespace: namespace.clone(),
            };
            let answer = match store {
                Some(store) => flatten(store.shares.send(msg).await),
                None => Err(NO_STORE.to_string()),
            };
            Some(Input::Shares(namespace, answer))
        }
        StoreCall::Known { namespace } => {
            let msg = KnownFeeds {
                peer,
                namespace: namespace.clone(),
            };
            let answer = match store {
                Some(store) => flatten(store.known.send(msg).await),
                None => Err(NO_STORE.to_string()),
            };
            Some(Input::Known(namespace, answer))
        }
        StoreCall::Heads { namespace, feeds } => {
            // A store that cannot say gets a stream for every feed.
            let answer = match store.and_then(|s| s.heads) {
                Some(heads) => {
                    let msg = FeedHeads {
                        peer,
                        namespace,
                        feeds: feeds.clone(),
                    };
                    flatten(heads.send(msg).await)
                }
                None => Ok(vec![None; feeds.len()]),
            };
            Some(Input::Heads(feeds, answer))
        }
        // A store without whole answers never sends or takes a feed whole: its feeds
        // get streams (the core asks it only if it said it does).
        StoreCall::ReadWhole { namespace, feeds } => {
            let answer = match store.and_then(|s| s.whole) {
                Some(whole) => {
                    let msg = ReadWhole {
                        peer,
                        namespace,
                        feeds: feeds.clone(),
                        max_bytes: MAX_WHOLE_FEED_BYTES,
                    };
                    flatten(whole.read.send(msg).await)
                }
                None => Ok(vec![None; feeds.len()]),
            };
            Some(Input::WholeRead(feeds, answer))
        }
        StoreCall::WriteWhole { namespace, feeds } => {
            let keys: Vec<FeedKey> = feeds.iter().map(|f| f.feed).collect();
            let answer = match store.and_then(|s| s.whole) {
                Some(whole) => {
                    let msg = WriteWhole {
                        peer,
                        namespace,
                        feeds,
                    };
                    flatten(whole.write.send(msg).await)
                }
                None => Ok(vec![WholeOutcome::Declined; keys.len()]),
            };
            Some(Input::WholeWritten(keys, answer))
        }
        // Made by `run` once the connection is closed.
        StoreCall::Detach { .. } => None,
    }
}

/// Serves a namespace with its store on the session; returns whether it is registered.
fn serve(session: &mut Session, entry: &NamespaceEntry) -> bool {
    if let Err(e) = session.handle_serve_namespace(&entry.name, entry.secret.clone()) {
        warn!(namespace = %entry.name, error = %e, "namespace not registered");
        return false;
    }
    if entry.store.whole.is_some() {
        // Registered just now: this cannot fail.
        let _ = session.handle_store_takes_whole(&entry.name);
    }
    true
}

/// The positions in `heads` of those that do not verify: a key that is not an ed25519
/// point, or a signature that does not check (many checked in one batch).
fn verify_heads(heads: &[(FeedKey, SignedHead)]) -> Vec<usize> {
    let mut bad = Vec::new();
    let mut keyed = Vec::with_capacity(heads.len());
    let mut positions = Vec::with_capacity(heads.len());
    for (i, (feed, head)) in heads.iter().enumerate() {
        match replic8_store::FeedKey::try_from(*feed) {
            Ok(key) => {
                keyed.push((key, *head));
                positions.push(i);
            }
            Err(_) => bad.push(i),
        }
    }
    bad.extend(
        replic8_store::verify_heads(&keyed)
            .into_iter()
            .map(|i| positions[i]),
    );
    bad.sort_unstable();
    bad
}

fn close_code(code: CloseCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(code.0)
}

fn flatten<T>(answer: Result<Result<T, StoreError>, actix::MailboxError>) -> Result<T, String> {
    match answer {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("store unreachable: {e}")),
    }
}

fn lost(session: &mut Session, error: quinn::ConnectionError) {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => session.handle_connection_lost(
            Some(CloseCode(
                u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX),
            )),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        // We closed it ourselves: the session has ended already.
        quinn::ConnectionError::LocallyClosed => {}
        other => session.handle_connection_lost(None, other.to_string()),
    }
}

/// Reads the control stream one chunk per credit: without a credit nothing more is
/// read, so QUIC's flow control stops the peer once its window is used.
async fn read_control(
    mut recv: quinn::RecvStream,
    tx: mpsc::UnboundedSender<Input>,
    mut credits: mpsc::Receiver<()>,
) {
    loop {
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                if tx.send(Input::ControlBytes(chunk.bytes.to_vec())).is_err() {
                    return;
                }
                if credits.recv().await.is_none() {
                    return;
                }
            }
            Ok(None) | Err(quinn::ReadError::Reset(_)) => {
                let _ = tx.send(Input::ControlEnd);
                return;
            }
            // The connection is gone; `connection.closed()` reports why.
            Err(_) => return,
        }
    }
}

/// Takes the peer's feed streams and reads their header frames, several at a time, so
/// a stream whose header never comes does not hold up the others. A header that is not
/// complete within `stall` of the stream's arrival ends the session (a slowloris would
/// otherwise hold the stream slot for as long as the connection lives).
async fn accept_feed_streams(
    connection: quinn::Connection,
    tx: mpsc::UnboundedSender<Input>,
    stall: Duration,
) {
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    readers.spawn(async move {
                        match tokio::time::timeout(stall, read_stream_header(send, recv)).await {
                            Ok(read) => read.map(Input::Incoming),
                            Err(_) => Some(Input::HeaderStalled),
                        }
                    });
                }
                Err(_) => return,
            },
            Some(read) = readers.join_next() => {
                if let Ok(Some(input)) = read {
                    if tx.send(input).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads exactly the header frame; `None` if the stream or connection failed first.
async fn read_stream_header(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Option<Result<IncomingStream, CodecError>> {
    let mut prefix = [0u8; PREFIX_LEN];
    recv.read_exact(&mut prefix).await.ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_STREAM_HEADER {
        return Some(Err(CodecError::Frame(FrameError::Oversize {
            len,
            max: MAX_STREAM_HEADER,
        })));
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.ok()?;
    Some(message::decode_stream_header(&payload).map(|header| (header, send, recv)))
}

async fn open_feed_stream(
    connection: &quinn::Connection,
    header: &FeedStreamHeader,
) -> Result<FeedStream, ()> {
    let (mut send, recv) = connection.open_bi().await.map_err(|_| ())?;
    let mut bytes = Vec::new();
    message::encode_stream_header(header, &mut bytes).map_err(|_| ())?;
    send.write_all(&bytes).await.map_err(|_| ())?;
    Ok(FeedStream { send, recv })
}
