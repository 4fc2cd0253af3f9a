//! The session's records of namespaces, offers, known feeds and replicated feeds.

use std::collections::{HashMap, HashSet};

use crate::keys::{DiscoveryKey, FeedKey, NamespaceKey, NamespaceSecret, Role};
use crate::message::OfferedFeed;
use replic8_store::SignedHead;

use super::types::StreamId;

#[derive(Debug)]
pub(super) struct Namespace {
    pub(super) secret: Option<NamespaceSecret>,
    /// The key of its tags; `None` for the public namespace, which needs no tag.
    pub(super) key: Option<NamespaceKey>,
    /// Its handle on this connection: the public one, the one we gave it (dialer), or
    /// the dialer's whose tag matched it (acceptor).
    pub(super) handle: Option<u32>,
    /// The peer showed it knows the key (always true for the public namespace).
    pub(super) peer_proven: bool,
    /// Shares waiting for the namespace's match.
    pub(super) pending_offers: Vec<OfferedFeed>,
    /// Known feeds waiting for the namespace's match.
    pub(super) pending_have: Vec<DiscoveryKey>,
    /// Its store sends and takes small feeds whole (decision 210).
    pub(super) takes_whole: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamState {
    Closed,
    Queued,
    Open,
}

/// Why a replicated feed is stopped on this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stop {
    /// Its stream kept ending before it was in sync; a notice or a change resumes it.
    Exhausted(String),
    /// A fault in the feed (ours or the peer's report): stopped for the session.
    Fault(String),
}

#[derive(Debug)]
pub(super) struct Replicated {
    pub(super) namespace: String,
    pub(super) discovery_key: DiscoveryKey,
    /// How the dialer names the feed when it opens its stream.
    pub(super) route: Route,
    pub(super) stream: StreamState,
    /// The current stream, while `stream` is `Open`.
    pub(super) token: Option<StreamId>,
    pub(super) local_synced: Option<u64>,
    pub(super) remote_synced: Option<u64>,
    pub(super) reported: Option<u64>,
    /// Ends in a row of its stream before the feed was in sync both ways (dialer).
    pub(super) early_ends: u32,
    /// Stopped on this session, and why.
    pub(super) stopped: Option<Stop>,
    /// Our first word on the feed (see [`FirstWord`]).
    pub(super) first_word: FirstWord,
    /// The peer said something about the feed (its first word, `Notice` or `Synced`):
    /// the dialer opens no stream for the feed before it did, or before ours says we
    /// lack blocks.
    pub(super) peer_spoke: bool,
    /// The head our first word carried, while our copy is still at it.
    pub(super) our_head: Option<Box<SignedHead>>,
    /// The peer's first word, as far as it is known and still current.
    pub(super) peer_head: PeerHead,
    /// The longest our copy was reported to be (`handle_feed_updated`): a stream's
    /// report of being in sync at less is stale (its core had not seen the change yet)
    /// and must not close the stream before it serves the change.
    pub(super) updated: u64,
    /// The feed's part in sending small feeds whole (see [`Whole`]).
    pub(super) whole: Whole,
}

/// A replicated feed sent whole on the control stream instead of a stream (decision
/// 210), as far as this side is concerned. The holder has a first word with a head of
/// at most `MAX_WHOLE_BLOCKS` blocks; the receiver's first word had no head and asked
/// for the feed whole. Once both words are out each side knows the other's, so both
/// agree: the holder answers with the feed in a `Whole` message or with a `Notice`
/// (then the stream rules apply), and the receiver expects one of the two. Lengths
/// here are at most `MAX_WHOLE_BLOCKS`, so a byte: the state is in every feed's record
/// (see the size test below), and what a write in flight needs more is kept aside
/// (`Session::whole_writing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whole {
    /// Nothing to send or take whole (any more): the stream rules apply.
    No,
    /// Holder: our first word had a small head of this length; waiting for the peer's.
    Offerable {
        /// Our first word's head length.
        length: u8,
    },
    /// Holder: the peer asked; to be read from our store (in `whole_reads`).
    Queued {
        /// Our first word's head length.
        length: u8,
    },
    /// Holder: our store is reading it ([`StoreCall::ReadWhole`](super::StoreCall::ReadWhole)).
    Reading {
        /// Our first word's head length.
        length: u8,
    },
    /// Holder: sent (or packed to be sent); waiting for the peer's `Synced` (or its
    /// `Notice` when its store declined). Our own changes wait for the answer.
    Sent,
    /// Receiver: our first word asked for the feed whole; waiting for the peer's word.
    Asked,
    /// Receiver: the peer's word has a small head: its `Whole` entry or `Notice` comes.
    Expecting,
    /// Receiver: the entry arrived and is at our store, or waits for the check of the
    /// peer's first-word head before it goes there. Only the store's answer ends this.
    Writing,
}

// `Whole` keeps head lengths of whole feeds in a byte.
const _: () = assert!(crate::message::MAX_WHOLE_BLOCKS <= u8::MAX as usize);

impl Whole {
    /// Whether our own changes of the feed wait until the whole exchange is over: the
    /// peer expects our `Whole` entry (or `Notice`), or we expect the peer's.
    pub(super) fn holds_updates(self) -> bool {
        !matches!(self, Whole::No | Whole::Offerable { .. })
    }
}

/// Our first word on a replicated feed: the signed head our store holds every block
/// of, or none (we need a stream). Sent once per session, after our own `Have` entries,
/// so the peer has replicated the feed when it arrives.
///
/// Heads here and in [`PeerHead`] and `our_head` are boxed: they live only until the
/// first words are decided, and a feed's [`Replicated`] stays for the whole session
/// (104 bytes each inline, three times over, in a map of every replicated feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FirstWord {
    /// Waiting for our store's answer ([`StoreCall::Heads`](super::StoreCall::Heads)).
    Asking {
        /// Our copy changed meanwhile: the answer may be stale, send no head.
        changed: bool,
    },
    /// Decided, waiting for our `Have`s to go out: the head held complete, or none.
    Queued(Option<Box<SignedHead>>),
    /// Sent.
    Sent,
}

/// The peer's first word on a replicated feed, as the first-word shortcut needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PeerHead {
    /// Not arrived yet.
    Unheard,
    /// A head, being verified ([`HeadCheck`](super::HeadCheck)).
    Verifying(Box<SignedHead>),
    /// A head that verified.
    Verified(Box<SignedHead>),
    /// A small head of a feed we asked for whole (decision 250): not checked here,
    /// because the store checks it with the feed's blocks when the feed's entry brings
    /// the same head. If the feed does not come so, the session checks it
    /// ([`Session::check_late`](super::Session)).
    WithWhole(Box<SignedHead>),
    /// A verified head whose first words asked for a stream: kept for that stream's
    /// sync core, which does not verify the same bytes again (decision 198).
    Decided(Box<SignedHead>),
    /// No head (the peer needs a stream), or something newer from the peer (a
    /// `Notice` or `Synced`) made its first word stale.
    None,
    /// No head, and the peer's store takes the feed whole (decision 210); kept until
    /// our own first word is out and decides whether we send it so.
    AsksWhole,
}

impl PeerHead {
    /// The verified head kept for the feed's next stream, taken (see
    /// [`PeerHead::Decided`]).
    pub(super) fn take_decided(&mut self) -> Option<SignedHead> {
        match std::mem::replace(self, PeerHead::None) {
            PeerHead::Decided(head) => Some(*head),
            other => {
                *self = other;
                None
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    Offered { by: Role, id: u64 },
    Known,
}

#[derive(Debug)]
pub(super) struct OurOffer {
    pub(super) namespace: String,
    pub(super) feeds: HashMap<u64, FeedKey>,
    /// Feeds whose stream arrived before the answer: the answer must accept them.
    pub(super) early: HashSet<u64>,
}

#[derive(Debug)]
pub(super) struct PeerOffer {
    pub(super) namespace: String,
    pub(super) feeds: Vec<(u64, FeedKey)>,
    /// What it counts against [`MAX_PENDING_OFFER_BYTES`](super::MAX_PENDING_OFFER_BYTES).
    pub(super) bytes: usize,
}

#[derive(Debug)]
pub(super) struct Known {
    pub(super) key: FeedKey,
    pub(super) namespace: String,
    /// Our `have` entry was sent.
    pub(super) announced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicated_feed_holds_its_signed_heads_out_of_line() {
        // One `Replicated` per feed for the whole session; the three heads of the first
        // words (104 bytes each) are boxed while they live and gone after.
        let size = std::mem::size_of::<Replicated>();
        assert!(size <= 224, "Replicated is {size} bytes");
        assert_eq!(std::mem::size_of::<PeerHead>(), 16);
    }
}
