//! The peer lifecycle: what the node does about each peer, from the moment discovery
//! finds it to the moment we stop redialing it.
//!
//! [`PeerLifecycle`] (`core.rs`) holds the rules and no I/O: it is told what happened
//! (`handle_found`, `handle_requested`, `handle_dialed`, `handle_up`, `handle_down`,
//! `handle_session_ended`, `handle_topic_left`, `cancel`, `close`, `handle_timeout`)
//! with the current time, and says what to do through `poll_action` ([`Action`]: dial,
//! close, ban, start or stop a session, a peer was tried, a node event) and
//! `poll_timeout` (when to call `handle_timeout` next). It never reads a clock and draws
//! its jitter from a seeded RNG when asked to. [`LifecycleActor`] (`actor.rs`) drives it:
//! it turns discovery's `PeerFound`, the connection manager's `PeerUp`/`PeerDown` and the
//! node's messages (`messages.rs`) into inputs, carries out the actions, and arms one
//! timer from `poll_timeout`. The redial decisions are pure functions in `rules.rs`.
//!
//! # Rules
//! - A found peer is dialed, unpinned; its answer goes back to discovery as
//!   `PeerTried` (what `flushed` waits for). An address of ours (our port on loopback
//!   or on our listen IP) is reported tried without a dial; so is every peer once the
//!   node is closing.
//! - A topic keeps at most `max_peers_per_topic` peers (`[limits]`): those up or being
//!   redialed with the topic among what they are for, and the dials in flight for it.
//!   A peer found beyond that is reported tried without a dial, unless the user named
//!   it (a static peer, `lookup_at`: dialed whatever the cap); a failed dial, a left
//!   topic or a peer gone for good makes room for the next one found (lookups repeat).
//!   Peers that dial us are not refused by it (`max_peers` bounds them); one that is
//!   found for the topic while there is room counts (its dial is answered with its key).
//! - A connection that is up gets a session (we dialed ↔ `Role::Dialer`) and a
//!   `PeerUp` event; its `PeerDown` stops the session and sends a `PeerDown` event,
//!   unless a newer connection of the peer replaced it (then nothing changes: the peer
//!   is still up). Once closing, a new connection is closed instead.
//! - Each connection remembers what it is for: the topics whose lookups dialed it and
//!   whether it was dialed on request (`connect`). A dial's answer may come before its
//!   `PeerUp`: kept aside and merged then. Leaving a topic closes a connection we dialed
//!   that nothing else needs; connections the peer dialed and requested ones stay.
//! - A connection we dialed and lost is redialed, with the peer's key pinned
//!   ([`rules::after_down`]): after a timeout, reset, transport error, the loss of its
//!   relay circuit (`PathLost`: the redial goes through another relay), the peer's bare
//!   close or its session `timeout`; after our own session's close only if that session
//!   ended with our `timeout`, or because it saw the peer's bare close or `timeout` first
//!   ([`rules::after_session_end`]), matched in whichever order the `PeerDown` and the
//!   session's end arrive. Never after our own `Close`, a ban, shutdown, a duplicate,
//!   a replacement, an eviction or a refusal. A redial is dialed from `handle_timeout`,
//!   also one due at once.
//! - The redialed connection is for what the lost one was for: leaving its last topic
//!   closes it, and leaving it while the redial is pending cancels the redial.
//! - The backoff is the connection manager's (a failed dial makes the next answer
//!   `Backoff { retry_in }`, waited out as is); our own limits (`TooManyPending`,
//!   `TooManyPeers`) are retried after 1 s, 2 s, 4 s, ... 60 s, jittered; any other
//!   refusal, `GaveUp`, or a dial aborted by our close stops the redial. A peer up again
//!   by any path ends it.
//! - Losses in a row of connections that lasted under [`rules::STABLE`] are redialed
//!   after 0, 1 s, 2 s, ... up to [`rules::MAX_DELAY`], jittered (a dial that succeeds
//!   resets the connection manager's backoff, so a flapping peer would otherwise be
//!   redialed at handshake speed); a longer-lived connection's loss is redialed at once.
//! - A session that ended by the peer's misbehaviour bans the peer for `ban_for` (none
//!   when zero) and cancels its redial. `disconnect` and a left topic cancel a redial
//!   too; a redial's dial in flight when cancelled is closed again once it answers, and
//!   the loss of a connection that was up when cancelled is not redialed.
//! - Closing stops every redial and every new dial.

mod actor;
mod core;
mod messages;
mod rules;
#[cfg(test)]
mod tests;

pub(crate) use self::actor::LifecycleActor;
pub(crate) use self::core::LifecycleConfig;
#[cfg(test)]
pub(crate) use self::messages::RedialsStarted;
pub(crate) use self::messages::{
    BeginClose, CancelRedial, Redialing, Requested, SessionEnded, TopicLeft,
};
