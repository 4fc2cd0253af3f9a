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
    /// A verified head whose first words asked for a stream: kept for that stream's
    /// sync core, which does not verify the same bytes again (decision 198).
    Decided(Box<SignedHead>),
    /// No head (the peer needs a stream), or something newer from the peer (a
    /// `Notice` or `Synced`) made its first word stale.
    None,
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
