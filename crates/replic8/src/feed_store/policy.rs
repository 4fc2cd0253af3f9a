//! What a feed store accepts and forwards in each namespace, and how much: the
//! [`NamespacePolicy`] of a namespace, the store's [`FeedStoreLimits`], and [`Quotas`],
//! the bookkeeping of those limits (no I/O, time passed in: tested with virtual time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys::PeerKey;
use crate::message::Headers;
use crate::store::SharedFeed;

/// A callback deciding an offered feed, given the peer, the namespace and the feed.
pub type AcceptFn = dyn Fn(&PeerKey, &str, &SharedFeed) -> bool + Send + Sync;
/// A predicate on an offered feed's headers.
pub type HeadersFn = dyn Fn(&Headers) -> bool + Send + Sync;

/// Which offered feeds new to the store it accepts in a namespace. A feed the store
/// holds in that namespace is always accepted; one it holds only in other namespaces
/// never is (see [`super::FeedStore`]).
#[derive(Clone, Default)]
pub enum AcceptPolicy {
    /// Every offered feed (within the quotas).
    All,
    /// None that the store does not hold in the namespace already.
    #[default]
    HeldOnly,
    /// None at all: every offer in the namespace is refused, even of feeds held in it
    /// (a namespace that only shares).
    None,
    /// Those whose headers hold every given key with the given value (within the
    /// quotas). A data form of [`AcceptPolicy::Headers`], so that it can be written down
    /// and restored after a restart.
    HeadersMatch(Vec<(String, Vec<u8>)>),
    /// Each feed new to the store waits for the user's decision ([`DecideOffers`]),
    /// within the bounds of [`FeedStoreLimits::manual_waiting_per_peer`],
    /// [`FeedStoreLimits::manual_waiting`] and [`FeedStoreLimits::manual_wait`]; the
    /// answer to the offer waits with it (see `manual.rs`).
    ///
    /// [`DecideOffers`]: super::DecideOffers
    Manual,
    /// Those whose headers pass the predicate (within the quotas).
    Headers(Arc<HeadersFn>),
    /// Those the callback accepts, given the peer, the namespace and the feed (within
    /// the quotas).
    Callback(Arc<AcceptFn>),
}

impl std::fmt::Debug for AcceptPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AcceptPolicy::All => "All",
            AcceptPolicy::HeldOnly => "HeldOnly",
            AcceptPolicy::None => "None",
            AcceptPolicy::HeadersMatch(_) => "HeadersMatch(..)",
            AcceptPolicy::Manual => "Manual",
            AcceptPolicy::Headers(_) => "Headers(..)",
            AcceptPolicy::Callback(_) => "Callback(..)",
        })
    }
}

impl AcceptPolicy {
    /// Whether a feed new to the store passes the policy (for [`AcceptPolicy::Manual`]:
    /// may be put to the user).
    pub(crate) fn accepts(&self, peer: &PeerKey, namespace: &str, feed: &SharedFeed) -> bool {
        match self {
            AcceptPolicy::All | AcceptPolicy::Manual => true,
            AcceptPolicy::HeldOnly | AcceptPolicy::None => false,
            AcceptPolicy::HeadersMatch(wanted) => wanted
                .iter()
                .all(|(k, v)| feed.headers.get(k) == Some(v.as_slice())),
            AcceptPolicy::Headers(p) => p(&feed.headers),
            AcceptPolicy::Callback(c) => c(peer, namespace, feed),
        }
    }

    /// Whether the policy can accept a feed new to the store.
    pub fn accepts_new(&self) -> bool {
        !matches!(self, AcceptPolicy::HeldOnly | AcceptPolicy::None)
    }
}

/// How the store treats one namespace: which new feeds it accepts there, and whether it
/// forwards them (offers them to the namespace's other sessions, and to later ones).
/// The default accepts only feeds held in the namespace and forwards nothing; the
/// public namespace `""` always has the default, whatever is asked.
#[derive(Debug, Clone, Default)]
pub struct NamespacePolicy {
    /// Which offered feeds new to the store to accept.
    pub accept: AcceptPolicy,
    /// Offer the feeds accepted here to the namespace's other sessions (never back to
    /// the peer they came from).
    pub forward: bool,
}

impl NamespacePolicy {
    /// Accepts only feeds held in the namespace, forwards nothing (the default).
    pub fn held_only() -> Self {
        NamespacePolicy::default()
    }

    /// Accepts every offered feed (within the quotas) and forwards it.
    pub fn accept_all() -> Self {
        NamespacePolicy {
            accept: AcceptPolicy::All,
            forward: true,
        }
    }
}

/// Default of [`FeedStoreLimits::new_feeds_per_peer`]: an honest peer sharing a large
/// collection (a thousand albums of a photo library) gets all of it accepted within one
/// window; a flooder with one identity gets at most this, and its excess is refused.
pub const DEFAULT_NEW_FEEDS_PER_PEER: u32 = 1024;
/// Default of [`FeedStoreLimits::header_bytes_per_peer`]: the headers of
/// [`DEFAULT_NEW_FEEDS_PER_PEER`] feeds at 1 KiB each (a title, a type, a few tags),
/// a quarter of the most one feed's headers may hold (`MAX_HEADER_BYTES`).
pub const DEFAULT_HEADER_BYTES_PER_PEER: u64 = 1 << 20;
/// Default of [`FeedStoreLimits::peer_window`]: an hour, so that a peer refused for its
/// quota gets its offers accepted again within the session that made them (offers of a
/// live session are made again when the feed changes) or the next one.
pub const DEFAULT_PEER_WINDOW: Duration = Duration::from_secs(3600);
/// Default of [`FeedStoreLimits::max_replicas`]: a replica costs a directory and a few
/// small files on disk and about a kilobyte of memory while open; 16,384 of them is tens
/// of megabytes, well within a small machine, and sixteen peers' full hourly quota.
pub const DEFAULT_MAX_REPLICAS: u64 = 16_384;
/// Default of [`FeedStoreLimits::open_feeds`]: an open small feed costs a few KiB (its
/// map of stored blocks is most of it), so 1,024 unused ones hold a few MiB whatever
/// the store holds. The many-feeds bench closes and reopens feeds at this bound without
/// slowing (3,000 feeds × 1 and × 100 blocks, 10,000 × 1; decision 170).
pub const DEFAULT_OPEN_FEEDS: usize = 1_024;
/// Default of [`FeedStoreLimits::idle_close`]: long enough that a feed read in a burst
/// of commands (`feed info`, then `feed cat`) opens once, short enough that a daemon
/// back from a busy minute returns to its idle size within a minute.
pub const DEFAULT_IDLE_CLOSE: Duration = Duration::from_secs(30);
/// Default of [`FeedStoreLimits::flush_timeout`]: what a detached stream has queued
/// (at most two data messages) leaves within this on any link that is not stalled;
/// a peer that stops reading loses the stream's tasks and their queue after it.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`FeedStoreLimits::serve_bytes_in_flight`]: 6 MiB. One stream holds at
/// most its own queue (2 MiB) plus what QUIC has sent and not yet had acknowledged (up
/// to the peer's stream window, quinn's default 1.25 MB), so a download from us by one
/// peer never waits on the budget (the bulk bench moved the same as with 8 MiB); 6 MiB
/// in flight still carries ~60 MB/s (480 Mbit/s) to peers 100 ms away, and keeps a node
/// serving a hundred peers at tens of MiB (at ~2.5 MiB per served peer without it, the
/// swarm bench's writer reached 134 MiB). 8 MiB left the swarm's largest node at
/// 37.8–40.2 MiB, 6 MiB at 36.3–36.8 (decision 264).
pub const DEFAULT_SERVE_BYTES_IN_FLIGHT: usize = 6 << 20;
/// Default of [`FeedStoreLimits::serve_stall`]: 30 s. A stream's progress is seen each
/// time the peer's acknowledgement gives back a piece of an answer (at most 64 KiB), or
/// QUIC takes a frame. QUIC lets us send more only as the peer reads, in steps of an
/// eighth of its stream window (156 KB with quinn's default): a reader that reads about
/// 220 KB in 30 s (7.3 KB/s, a 60 kbit/s link) shows progress within it. A peer that
/// stopped reading holds its bytes (its 2 MiB queue at most) at most this long, and the
/// peers that do read wait on it at most this long, not until its session ends.
pub const DEFAULT_SERVE_STALL: Duration = Duration::from_secs(30);
/// Default of [`FeedStoreLimits::receive_bytes_held`]: 34 MiB. A stream whose verifier
/// falls behind holds at most what our 16 outstanding requests of at most 1 MiB bring
/// (17 MiB, `READ_QUEUE_BYTES`), so two downloads at full speed never wait on the
/// budget; past it every stream still reads a frame at a time. Without it, the
/// per-stream bound alone let one connection pin 17 MiB on each of its streams.
pub const DEFAULT_RECEIVE_BYTES_HELD: usize = 2 * super::inbox::READ_QUEUE_BYTES;
/// Default of [`FeedStoreLimits::receive_bytes_held_per_peer`]: 17 MiB, half the
/// store's. What one download whose verifier falls behind holds at most, so it never
/// waits on its share; one peer cannot take the whole store's budget while the others
/// read a frame at a time.
pub const DEFAULT_RECEIVE_BYTES_HELD_PER_PEER: usize = super::inbox::READ_QUEUE_BYTES;

/// The least [`FeedStoreLimits::serve_bytes_in_flight`] means: one data answer's largest
/// frame, which a stream reserves before it reads the answer's blocks.
pub const MIN_SERVE_BYTES_IN_FLIGHT: usize =
    crate::frame::PREFIX_LEN + replic8_store::MAX_MESSAGE_SIZE;

/// Default of [`FeedStoreLimits::manual_wait`]: long enough for a user to look at
/// `replic8 offers` and answer; an offer waiting holds one of the 256 offers a peer may
/// have waiting for our answers, and its held feeds wait with it.
pub const DEFAULT_MANUAL_WAIT: Duration = Duration::from_secs(600);
/// Default of [`FeedStoreLimits::manual_waiting_per_peer`]: more feeds than a user reads
/// through at once; a peer offering more gets the rest refused (it offers them again on
/// its next session).
pub const DEFAULT_MANUAL_WAITING_PER_PEER: usize = 256;
/// Default of [`FeedStoreLimits::manual_waiting`]: sixteen peers' worth of waiting
/// feeds; each costs an entry of about 200 bytes.
pub const DEFAULT_MANUAL_WAITING: usize = 4096;

/// The store's quotas and bounds. Past a quota, offered feeds are refused politely (not
/// accepted; the session goes on) and counted in
/// [`FeedStoreStats`](super::FeedStoreStats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStoreLimits {
    /// Most feeds new to the store accepted from one peer (by its key) per
    /// [`Self::peer_window`].
    pub new_feeds_per_peer: u32,
    /// Most bytes of headers of feeds accepted from one peer per [`Self::peer_window`].
    pub header_bytes_per_peer: u64,
    /// The window of the per-peer quotas, counted from the peer's first accepted feed.
    pub peer_window: Duration,
    /// Most replicas created from offers, in total (over restarts: counted from what the
    /// store holds).
    pub max_replicas: u64,
    /// How long a detached feed stream may take to send what it has queued before its
    /// tasks are aborted and the queue freed.
    pub flush_timeout: Duration,
    /// How long an offer in a namespace with [`AcceptPolicy::Manual`] waits for the
    /// user's decision; undecided feeds are then refused (the offer is answered).
    pub manual_wait: Duration,
    /// Most feeds of one peer waiting for the user's decision; past it, refused.
    pub manual_waiting_per_peer: usize,
    /// Most feeds waiting for the user's decision, over all peers; past it, refused.
    pub manual_waiting: usize,
    /// Most feeds kept open while nothing uses them (a feed in use, by a stream or a
    /// call, is open whatever this says); past it the least recently used close.
    pub open_feeds: usize,
    /// A feed nothing used for this long is closed.
    pub idle_close: Duration,
    /// Most bytes of data answers held for peers at once, over every feed stream of the
    /// store: read from storage and not yet acknowledged by the peer (queued for a
    /// stream, or in QUIC's send buffer). A stream waits for room before it reads the
    /// blocks of its next answer, and sends its other messages meanwhile. Below
    /// [`MIN_SERVE_BYTES_IN_FLIGHT`] it counts as that. One peer's streams and whole
    /// reads together hold or wait for at most this less one answer (and at least one
    /// answer), so with room for two answers or more another peer's answer always finds
    /// room behind them.
    pub serve_bytes_in_flight: usize,
    /// A feed stream that holds bytes of data answers and whose peer took none of them
    /// (no chunk acknowledged, no frame taken by QUIC) for this long is ended: the peer
    /// stopped reading, and its bytes go back to the serve budget. Only that stream ends
    /// ([`FeedStoreEvent::ServeStalled`](super::FeedStoreEvent::ServeStalled)), unless
    /// its peer stalled [`MAX_SERVE_STALLS`](super::MAX_SERVE_STALLS) times in a row:
    /// then its session ends too.
    pub serve_stall: Duration,
    /// Most bytes received on feed streams and not yet verified, over every feed
    /// stream of the store (frames waiting for the sync core, being verified, or being
    /// gathered). Past it a stream stops reading (QUIC flow control then holds its peer
    /// back) unless it holds no whole frame: each stream may always read one, so the
    /// store holds at most this plus, per stream, one frame and what one read brought,
    /// and no stream waits forever.
    pub receive_bytes_held: usize,
    /// The same bound over the feed streams of one peer: past it that peer's streams
    /// read a frame at a time, whatever room the store has, so one peer cannot hold the
    /// store's whole budget.
    pub receive_bytes_held_per_peer: usize,
}

impl Default for FeedStoreLimits {
    fn default() -> Self {
        FeedStoreLimits {
            new_feeds_per_peer: DEFAULT_NEW_FEEDS_PER_PEER,
            header_bytes_per_peer: DEFAULT_HEADER_BYTES_PER_PEER,
            peer_window: DEFAULT_PEER_WINDOW,
            max_replicas: DEFAULT_MAX_REPLICAS,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            manual_wait: DEFAULT_MANUAL_WAIT,
            manual_waiting_per_peer: DEFAULT_MANUAL_WAITING_PER_PEER,
            manual_waiting: DEFAULT_MANUAL_WAITING,
            open_feeds: DEFAULT_OPEN_FEEDS,
            idle_close: DEFAULT_IDLE_CLOSE,
            serve_bytes_in_flight: DEFAULT_SERVE_BYTES_IN_FLIGHT,
            serve_stall: DEFAULT_SERVE_STALL,
            receive_bytes_held: DEFAULT_RECEIVE_BYTES_HELD,
            receive_bytes_held_per_peer: DEFAULT_RECEIVE_BYTES_HELD_PER_PEER,
        }
    }
}

/// Peers tracked before expired windows are pruned.
const PRUNE_AT: usize = 1024;

/// What one peer used in its current window.
#[derive(Debug, Clone, Copy)]
struct PeerUse {
    since: Instant,
    feeds: u32,
    header_bytes: u64,
}

/// The bookkeeping of [`FeedStoreLimits`]: per peer and in total. Holds an entry only
/// for a peer that had a feed accepted in its current window, so its size is bounded by
/// the total of replicas.
#[derive(Debug)]
pub(crate) struct Quotas {
    limits: FeedStoreLimits,
    peers: HashMap<PeerKey, PeerUse>,
    replicas: u64,
}

impl Quotas {
    /// Quotas over `limits`, with `replicas` created from offers already.
    pub(crate) fn new(limits: FeedStoreLimits, replicas: u64) -> Self {
        Quotas {
            limits,
            peers: HashMap::new(),
            replicas,
        }
    }

    /// Replicas created from offers so far.
    pub(crate) fn replicas(&self) -> u64 {
        self.replicas
    }

    /// Takes, in order, the feeds of `offered` that fit `peer`'s quotas and the total at
    /// `now`, and charges them; returns them and how many were refused.
    pub(crate) fn admit(
        &mut self,
        peer: PeerKey,
        offered: Vec<SharedFeed>,
        now: Instant,
    ) -> (Vec<SharedFeed>, u64) {
        if offered.is_empty() {
            return (offered, 0);
        }
        if self.peers.len() >= PRUNE_AT {
            let window = self.limits.peer_window;
            self.peers
                .retain(|_, u| now.saturating_duration_since(u.since) < window);
        }
        let window = self.limits.peer_window;
        let mut usage = match self.peers.get(&peer) {
            Some(u) if now.saturating_duration_since(u.since) < window => *u,
            _ => PeerUse {
                since: now,
                feeds: 0,
                header_bytes: 0,
            },
        };
        let mut admitted = Vec::with_capacity(offered.len());
        let mut refused = 0;
        for feed in offered {
            let bytes = feed.headers.byte_len() as u64;
            let fits = usage.feeds < self.limits.new_feeds_per_peer
                && usage.header_bytes + bytes <= self.limits.header_bytes_per_peer
                && self.replicas < self.limits.max_replicas;
            if fits {
                usage.feeds += 1;
                usage.header_bytes += bytes;
                self.replicas += 1;
                admitted.push(feed);
            } else {
                refused += 1;
            }
        }
        if usage.feeds > 0 {
            self.peers.insert(peer, usage);
        }
        (admitted, refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::FeedKey;

    fn feeds(n: u8, header_bytes: usize) -> Vec<SharedFeed> {
        (0..n)
            .map(|i| {
                let mut headers = Headers::new();
                if header_bytes > 0 {
                    headers.insert("k", vec![0; header_bytes - 1]).unwrap();
                }
                SharedFeed {
                    key: FeedKey([i; 32]),
                    headers,
                }
            })
            .collect()
    }

    fn limits() -> FeedStoreLimits {
        FeedStoreLimits {
            new_feeds_per_peer: 3,
            header_bytes_per_peer: 100,
            peer_window: Duration::from_secs(60),
            max_replicas: 5,
            ..FeedStoreLimits::default()
        }
    }

    #[test]
    fn a_peer_gets_its_quota_per_window_and_the_total_holds_over_peers() {
        let t0 = Instant::now();
        let mut q = Quotas::new(limits(), 0);
        let (a, b) = (PeerKey([1; 32]), PeerKey([2; 32]));
        let (ok, refused) = q.admit(a, feeds(5, 0), t0);
        assert_eq!((ok.len(), refused), (3, 2));
        assert_eq!(q.admit(a, feeds(1, 0), t0 + Duration::from_secs(59)).1, 1);
        // Another peer has its own quota, but the total stops it at 5.
        let (ok, refused) = q.admit(b, feeds(3, 0), t0);
        assert_eq!((ok.len(), refused), (2, 1));
        assert_eq!(q.replicas(), 5);
        // A new window does not lift the total.
        assert_eq!(q.admit(a, feeds(1, 0), t0 + Duration::from_secs(60)).1, 1);
    }

    #[test]
    fn header_bytes_count_per_peer_and_the_window_resets_them() {
        let t0 = Instant::now();
        let mut q = Quotas::new(
            FeedStoreLimits {
                max_replicas: 100,
                new_feeds_per_peer: 100,
                ..limits()
            },
            0,
        );
        let a = PeerKey([1; 32]);
        // 40 bytes each: two fit in 100, the third does not.
        let (ok, refused) = q.admit(a, feeds(3, 40), t0);
        assert_eq!((ok.len(), refused), (2, 1));
        let (ok, _) = q.admit(a, feeds(1, 40), t0 + Duration::from_secs(61));
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn the_peer_table_stays_bounded() {
        let t0 = Instant::now();
        let mut q = Quotas::new(
            FeedStoreLimits {
                max_replicas: u64::MAX,
                ..limits()
            },
            0,
        );
        for i in 0..10_000u32 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            // One window per 1000 peers: old windows are pruned.
            let now = t0 + Duration::from_secs(61 * u64::from(i / 1000));
            q.admit(PeerKey(key), feeds(1, 0), now);
            assert!(q.peers.len() <= PRUNE_AT + 1000, "{}", q.peers.len());
        }
        // A peer refused everything leaves no entry.
        let mut q = Quotas::new(
            FeedStoreLimits {
                max_replicas: 0,
                ..limits()
            },
            0,
        );
        q.admit(PeerKey([3; 32]), feeds(2, 0), t0);
        assert!(q.peers.is_empty());
    }
}
