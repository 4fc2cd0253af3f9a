//! The store-wide bound on the bytes of data answers in flight to peers.
//!
//! A data answer's blocks are read from storage into buffers that QUIC sends as they
//! are and holds until the peer acknowledged them. Each stream bounds its own queue,
//! but a node serving many peers holds that much per stream, plus QUIC's send buffer
//! per stream: ~2.5 MiB per served peer, 134 MiB for the swarm bench's writer serving
//! 40. The budget bounds the sum over every stream of the store, whatever the number of
//! peers, streams or keys asking:
//! - before a stream builds a data answer it reserves [`ANSWER_RESERVE`] bytes (the
//!   largest frame there is), first from its peer's share, then from the store's; a
//!   stream that gets none waits (first come, first served) and sends its other
//!   messages meanwhile (requests, `Have`s);
//! - a peer's share is the budget less one answer (at least one answer): with room for
//!   two answers or more, one peer, however many streams it opens, never holds or
//!   queues for the whole budget, so another peer's answer waits behind at most that
//!   share, and peers that all want more get turns in about equal measure;
//! - once the answer is encoded, each of the frame's chunks carries its own length of
//!   the reservation and the rest goes back at once;
//! - a chunk gives its share back when its last reference is dropped: after QUIC got
//!   the peer's acknowledgement of it, or when the stream or connection is gone.
//!
//! [`ServeBudget::held`] counts the bytes of the charged chunks alive, independently of
//! the reservations, so what the bound promises can be observed.
//!
//! Small feeds read whole for a session (decision 245) take their bytes from the same
//! budget: a read reserves what its feeds' summaries say they take, at most
//! [`ANSWER_RESERVE`] (a read of more answers the leading feeds only), in the same lines
//! (its peer's, then the store's) as the streams' answers; the bytes read are held
//! ([`ServeShare::hold_whole`]) until
//! the session has packed the feeds into a message on its control stream, whose own
//! bound takes over from there.
//!
//! A peer that asks for answers and then stops reading would pin what its stream holds
//! until the stream ends, and a few such streams would hold the whole budget and stall
//! serving to everyone else. So each stream's chunks also count in its [`StreamHold`]:
//! the bytes it holds and when the peer last made progress on them (a chunk given back
//! after its acknowledgement, or a frame taken by QUIC). A stream that holds bytes and
//! made no progress for [`ServeBudget::stall`] is ended by its driver
//! ([`StreamHold::stalled`]), which resets it and gives back everything it held (a
//! reset, not a finish: QUIC drops its copies at once, even those a peer that withholds
//! its acknowledgements would pin). A peer that cycles (its stream cut, reopened, left
//! unread again) is counted in [`StallStrikes`]: its [`MAX_SERVE_STALLS`]th stall in
//! a row ends its session.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::gauge::Gauge;
use super::peer_table::PeerTable;
use crate::keys::PeerKey;
use crate::store::WholeHold;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// What one data answer reserves before its blocks are read: the largest frame a stream
/// sends (a longer message is refused before it is framed).
pub(crate) const ANSWER_RESERVE: usize = super::MIN_SERVE_BYTES_IN_FLIGHT;

/// Bytes of data answers the streams of one store may hold at once (see the module
/// docs). Shared by every stream of the store.
#[derive(Debug)]
pub(crate) struct ServeBudget {
    permits: Arc<Semaphore>,
    /// Bytes one peer's streams may hold or wait for at once.
    per_peer: usize,
    /// Each peer's share, alive while its streams or their answers are.
    peers: PeerTable<Semaphore>,
    counts: Arc<Gauge>,
    stall: Duration,
}

/// One stream's way into the budget: its peer's share, then the store's.
#[derive(Debug, Clone)]
pub(crate) struct ServeShare {
    budget: Arc<ServeBudget>,
    peer: Arc<Semaphore>,
}

/// Room for one data answer (or one whole read), taken before its blocks are read: the
/// store's bytes and the same of its peer's share.
#[derive(Debug)]
pub(crate) struct Reservation {
    store: OwnedSemaphorePermit,
    peer: OwnedSemaphorePermit,
}

impl Reservation {
    /// `n` bytes of the reservation, in the store's room and the peer's share alike
    /// (`None` where fewer are left).
    fn split(&mut self, n: usize) -> Permits {
        (self.store.split(n), self.peer.split(n))
    }
}

/// Bytes of the store's room and of a peer's share, held together.
type Permits = (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>);

/// A wait for a [`Reservation`] that keeps its place in the queue while the stream
/// handles other input.
pub(crate) type Reserving = Pin<Box<dyn Future<Output = Reservation> + Send>>;

impl ServeBudget {
    /// A budget of `limit` bytes, at least one [`ANSWER_RESERVE`] (below it no answer
    /// could ever be sent), whose streams may hold bytes without progress for `stall`.
    /// Each peer's share is `limit` less one answer, and at least one answer.
    pub(crate) fn new(limit: usize, stall: Duration) -> Arc<Self> {
        let limit = limit.clamp(ANSWER_RESERVE, Semaphore::MAX_PERMITS);
        Arc::new(ServeBudget {
            permits: Arc::new(Semaphore::new(limit)),
            per_peer: (limit - ANSWER_RESERVE).max(ANSWER_RESERVE),
            peers: PeerTable::default(),
            counts: Arc::default(),
            stall,
        })
    }

    /// The share of a new stream of `peer`: its streams draw on it together while any of
    /// them, or of their answers, lives.
    pub(crate) fn share(self: &Arc<Self>, peer: PeerKey) -> ServeShare {
        ServeShare {
            budget: self.clone(),
            peer: self.peers.get(peer, || Semaphore::new(self.per_peer)),
        }
    }

    /// How long a stream may hold bytes of answers without progress before it is ended.
    pub(crate) fn stall(&self) -> Duration {
        self.stall
    }

    /// Bytes of charged chunks alive now (queued, or in QUIC's send buffer).
    pub(crate) fn held(&self) -> usize {
        self.counts.held()
    }

    /// The most [`Self::held`] ever was.
    pub(crate) fn peak(&self) -> usize {
        self.counts.peak()
    }

    /// Bytes free now (the bound, with nothing reserved).
    #[cfg(test)]
    fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl ServeShare {
    /// A reservation if one is free now, in the peer's share and the store's.
    pub(crate) fn try_reserve(&self) -> Option<Reservation> {
        self.try_take(reserve_permits())
    }

    /// Waits for a reservation: behind the peer's other streams and reads that asked
    /// before, then behind every stream and read that asked the store before.
    pub(crate) fn reserve(&self) -> Reserving {
        let share = self.clone();
        Box::pin(async move { share.take(reserve_permits()).await })
    }

    /// `frame` (one encoded data answer of `stream`), each chunk holding its length of
    /// `reservation` until it is dropped; the rest of the reservation is given back.
    pub(crate) fn charge(
        &self,
        mut reservation: Reservation,
        frame: Vec<Bytes>,
        stream: &Arc<StreamHold>,
    ) -> Vec<Bytes> {
        let counts = &self.budget.counts;
        frame
            .into_iter()
            .flat_map(pieces)
            .map(|bytes| {
                let len = bytes.len();
                // A frame is at most `ANSWER_RESERVE` bytes, so every split succeeds.
                let permits = reservation.split(len);
                counts.add(len);
                if stream.held.fetch_add(len, Ordering::Relaxed) == 0 {
                    // The stream starts holding bytes: its stall clock starts now.
                    stream.progressed();
                }
                Bytes::from_owner(Charged {
                    bytes,
                    _permits: permits,
                    counts: counts.clone(),
                    stream: stream.clone(),
                })
            })
            .collect()
    }

    /// Waits for room for `bytes` of feeds to read whole (at most [`ANSWER_RESERVE`]:
    /// a caller never asks for more, so the wait always ends), in the same lines as
    /// the streams' answers.
    pub(crate) async fn reserve_whole(&self, bytes: usize) -> Reservation {
        let bytes = u32::try_from(bytes.clamp(1, ANSWER_RESERVE)).unwrap_or(reserve_permits());
        self.take(bytes).await
    }

    /// Takes up to `more` bytes beyond `reservation` if they are free now, in the
    /// peer's share and the store's; whether it got them.
    pub(crate) fn try_extend(&self, reservation: &mut Reservation, more: usize) -> bool {
        let Some(more) = u32::try_from(more).ok().and_then(|n| self.try_take(n)) else {
            return false;
        };
        reservation.store.merge(more.store);
        reservation.peer.merge(more.peer);
        true
    }

    /// Keeps `bytes` of `reservation` (what the feeds of one whole read take; at most
    /// the reservation) until the returned hold's last clone is dropped, counted in
    /// [`ServeBudget::held`]; the rest goes back now.
    pub(crate) fn hold_whole(&self, mut reservation: Reservation, bytes: usize) -> WholeHold {
        let bytes = bytes.min(reservation.store.num_permits());
        let kept = reservation.split(bytes);
        let counts = &self.budget.counts;
        counts.add(bytes);
        WholeHold::new(HeldWhole {
            bytes,
            _permits: kept,
            counts: counts.clone(),
        })
    }

    /// `n` bytes from the peer's share, then from the store's, when both have them.
    async fn take(&self, n: u32) -> Reservation {
        let permits = async {
            let peer = self.peer.clone().acquire_many_owned(n).await?;
            let store = self.budget.permits.clone().acquire_many_owned(n).await?;
            Ok::<_, tokio::sync::AcquireError>(Reservation { store, peer })
        };
        match permits.await {
            Ok(reservation) => reservation,
            // The semaphores are never closed.
            Err(_) => std::future::pending().await,
        }
    }

    /// `n` bytes from the peer's share and the store's, if both have them now.
    fn try_take(&self, n: u32) -> Option<Reservation> {
        let peer = self.peer.clone().try_acquire_many_owned(n).ok()?;
        let store = self.budget.permits.clone().try_acquire_many_owned(n).ok()?;
        Some(Reservation { store, peer })
    }
}

/// The most bytes one charged chunk holds. A chunk is given back (progress seen) only
/// once QUIC has the peer's acknowledgement of all of it, and a data answer of small
/// blocks is one chunk of up to 1 MiB: cut into pieces, a reader on a slow link shows
/// progress every 64 KiB it reads (plus QUIC's window step), not every megabyte. QUIC
/// takes 16 chunks per MiB instead of one; the bytes are not copied.
const PIECE: usize = 64 * 1024;

/// `chunk` as slices of at most [`PIECE`] bytes (the same memory).
fn pieces(chunk: Bytes) -> impl Iterator<Item = Bytes> {
    let len = chunk.len();
    (0..len.div_ceil(PIECE).max(1)).map(move |i| chunk.slice(i * PIECE..len.min((i + 1) * PIECE)))
}

/// What one stream's charged chunks hold, and when its peer last made progress on them.
#[derive(Debug)]
pub(crate) struct StreamHold {
    held: AtomicUsize,
    /// When the peer last made progress, in nanoseconds after `epoch`.
    progress: AtomicU64,
    epoch: Instant,
}

impl StreamHold {
    /// A stream holding nothing.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(StreamHold {
            held: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The peer took some of the stream's bytes (a chunk was acknowledged, or QUIC took
    /// a frame): its stall clock starts again.
    pub(crate) fn progressed(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.progress.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Bytes of the stream's charged chunks alive now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// When the stream counts as stalled: `stall` after the peer's last progress, while
    /// the stream holds bytes of answers (`None` while it holds none).
    fn stall_at(&self, stall: Duration) -> Option<Instant> {
        if self.held() == 0 {
            return None;
        }
        let last = self.epoch + Duration::from_nanos(self.progress.load(Ordering::Relaxed));
        Some(last + stall)
    }

    /// Completes once the stream has held bytes of answers for `stall` without progress;
    /// never while it holds none (it starts holding only in its driver's own step,
    /// after which the driver asks again). One timer, moved on at each wake-up by the
    /// progress made meanwhile: nothing is done per chunk but two atomic updates.
    pub(crate) async fn stalled(&self, stall: Duration) {
        loop {
            match self.stall_at(stall) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }
}

fn reserve_permits() -> u32 {
    // About 1.06 MiB: well within a u32.
    u32::try_from(ANSWER_RESERVE).unwrap_or(u32::MAX)
}

/// The owner of one charged chunk: gives its bytes back to the budget when dropped.
struct Charged {
    bytes: Bytes,
    /// The chunk's bytes of the store's room and of its peer's share.
    _permits: Permits,
    counts: Arc<Gauge>,
    stream: Arc<StreamHold>,
}

/// The owner of the bytes of one whole read: gives them back to the budget when the
/// session drops the read's last feed.
struct HeldWhole {
    bytes: usize,
    /// The read's bytes of the store's room and of its peer's share.
    _permits: Permits,
    counts: Arc<Gauge>,
}

impl Drop for HeldWhole {
    fn drop(&mut self) {
        self.counts.sub(self.bytes);
    }
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.counts.sub(self.bytes.len());
        self.stream
            .held
            .fetch_sub(self.bytes.len(), Ordering::Relaxed);
        // Dropped once the peer acknowledged it, or with the stream: progress either way.
        self.stream.progressed();
    }
}

/// Serve stalls of one peer key that end its session: the stall that reaches this count
/// (each less than [`STRIKE_MEMORY`] stall bounds after the one before) ends the session
/// with `timeout`, and so does every later one while the count is remembered. Three:
/// one stall is what a link that dropped for half a minute does, two in a row happen
/// to a reader on a flaky link; a third is a pattern.
pub const MAX_SERVE_STALLS: u32 = 3;

/// How long a peer's serve stalls are remembered, in stall bounds after its last one:
/// 20 (10 minutes at the default 30 s bound). A peer that cycles stall, cut, reopen
/// stalls once per bound at most, so it reaches [`MAX_SERVE_STALLS`] within three.
pub const STRIKE_MEMORY: u32 = 20;

/// Peers whose serve stalls are remembered at once. A stall costs its peer a stream
/// held for a whole stall bound, so a flood of keys fills this slowly; past it the peer
/// whose last stall is oldest is forgotten first. 64 bytes an entry.
const MAX_STRUCK_PEERS: usize = 4096;

/// The serve stalls of each peer key (the core of the cycling bound; time is passed
/// in): counted while each follows the one before within [`STRIKE_MEMORY`] stall
/// bounds, so that a peer that keeps letting its streams be cut for not reading, and
/// keeps opening them again, loses its session instead of holding budget bytes for a
/// stall bound per cycle for as long as the session lasts.
#[derive(Debug)]
pub(crate) struct StallStrikes {
    peers: HashMap<PeerKey, Strikes>,
    memory: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    last: std::time::Instant,
}

impl StallStrikes {
    /// Strikes remembered for [`STRIKE_MEMORY`] times `stall` after each.
    pub(crate) fn new(stall: Duration) -> Self {
        StallStrikes {
            peers: HashMap::new(),
            memory: stall.saturating_mul(STRIKE_MEMORY),
        }
    }

    /// Records a serve stall of `peer` at `now`; the peer's count of stalls, and
    /// whether its session is to end (the count reached [`MAX_SERVE_STALLS`]).
    pub(crate) fn record(&mut self, peer: PeerKey, now: std::time::Instant) -> (u32, bool) {
        let memory = self.memory;
        let fresh = |s: &Strikes| now.saturating_duration_since(s.last) < memory;
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_STRUCK_PEERS {
            self.peers.retain(|_, s| fresh(s));
            if self.peers.len() >= MAX_STRUCK_PEERS {
                let oldest = self
                    .peers
                    .iter()
                    .min_by_key(|(_, s)| s.last)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    self.peers.remove(&oldest);
                }
            }
        }
        let strikes = self.peers.entry(peer).or_insert(Strikes {
            count: 0,
            last: now,
        });
        if !fresh(strikes) {
            strikes.count = 0;
        }
        strikes.count = strikes.count.saturating_add(1);
        strikes.last = now;
        (strikes.count, strikes.count >= MAX_SERVE_STALLS)
    }
}

#[cfg(test)]
mod tests {
    use super::super::peer_table::test_key;
    use super::*;

    #[test]
    fn the_third_stall_of_a_peer_within_the_memory_ends_its_session_and_later_ones_too() {
        let stall = Duration::from_secs(30);
        let memory = stall * STRIKE_MEMORY;
        let mut strikes = StallStrikes::new(stall);
        let (a, b) = (PeerKey([1; 32]), PeerKey([2; 32]));
        let t0 = std::time::Instant::now();
        assert_eq!(strikes.record(a, t0), (1, false));
        // Another peer's stalls count apart.
        assert_eq!(strikes.record(b, t0), (1, false));
        assert_eq!(strikes.record(a, t0 + stall), (2, false));
        assert_eq!(strikes.record(a, t0 + 2 * stall), (3, true));
        // Remembered: the next one (a new session, same key) ends it at once.
        let t3 = t0 + 2 * stall + memory - Duration::from_secs(1);
        assert_eq!(strikes.record(a, t3), (4, true));
        // A whole memory without a stall: forgotten.
        assert_eq!(strikes.record(a, t3 + memory), (1, false));
        assert_eq!(strikes.record(b, t3 + memory), (1, false));
    }

    #[test]
    fn the_strikes_of_many_peers_stay_bounded() {
        let stall = Duration::from_secs(1);
        let mut strikes = StallStrikes::new(stall);
        let t0 = std::time::Instant::now();
        let key = test_key;
        for i in 0..MAX_STRUCK_PEERS + 100 {
            strikes.record(key(i), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(strikes.peers.len(), MAX_STRUCK_PEERS);
        // The oldest went first; the newest are there.
        assert!(!strikes.peers.contains_key(&key(0)));
        assert!(strikes.peers.contains_key(&key(MAX_STRUCK_PEERS + 99)));
    }

    #[test]
    fn a_charged_frame_holds_its_bytes_until_its_chunks_are_dropped() {
        // Two peers: each may hold one answer of the two.
        let budget = ServeBudget::new(2 * ANSWER_RESERVE, Duration::from_secs(30));
        let (p, q) = (budget.share(test_key(1)), budget.share(test_key(2)));
        let stream = StreamHold::new();
        let a = p.try_reserve().unwrap();
        let b = q.try_reserve().unwrap();
        assert!(p.try_reserve().is_none(), "two answers fill it");
        let frame = p.charge(
            a,
            vec![Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; 24])],
            &stream,
        );
        assert_eq!((budget.held(), stream.held()), (1024, 1024));
        assert_eq!(&frame[1][..], &[2u8; 24]);
        // The rest of `a`'s reservation came back: not a whole answer while `b` is out.
        assert!(q.try_reserve().is_none());
        drop(b);
        let c = q.try_reserve().expect("b's room came back");
        assert!(q.try_reserve().is_none());
        let tail = frame[0].slice(500..);
        drop(frame);
        assert_eq!(budget.held(), 1000, "a slice still holds its chunk");
        drop(tail);
        drop(c);
        assert_eq!((budget.held(), budget.peak(), stream.held()), (0, 1024, 0));
        assert!(p.try_reserve().is_some() && q.try_reserve().is_some());
    }

    #[tokio::test]
    async fn one_peer_never_holds_or_queues_for_the_whole_budget() {
        // Room for four answers: a peer's share is three.
        let budget = ServeBudget::new(4 * ANSWER_RESERVE, Duration::from_secs(30));
        let stream = StreamHold::new();
        let greedy = budget.share(test_key(1));
        let mut held: Vec<_> = (0..3).map(|_| greedy.try_reserve().unwrap()).collect();
        // Another stream of the same peer finds its share spent, not the store's room.
        let also_greedy = budget.share(test_key(1));
        assert!(also_greedy.try_reserve().is_none());
        assert_eq!(budget.available(), ANSWER_RESERVE);
        // Eight more of its streams wait, each in line once polled...
        let waiting: Vec<_> = (0..8).map(|_| tokio::spawn(greedy.reserve())).collect();
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        assert!(
            waiting.iter().all(|w| !w.is_finished()),
            "nothing is free for them"
        );
        // ... in their peer's line, not the store's: another peer's answer takes the
        // store's last room at once (it stood behind all eight before).
        let other = budget.share(test_key(2));
        let got = tokio::time::timeout(Duration::from_secs(10), other.reserve())
            .await
            .expect("the other peer's answer waits for no share of the first");
        assert!(other.try_reserve().is_none(), "the store is full");

        // Charged bytes hold the peer's share too, until the peer has them.
        let frame = greedy.charge(
            held.pop().unwrap(),
            vec![Bytes::from(vec![1; 1000])],
            &stream,
        );
        assert!(also_greedy.try_reserve().is_none());
        drop(frame);
        // The room that came back goes to the peer's first waiting stream, the others
        // still wait.
        let mut waiting = waiting.into_iter();
        let next = tokio::time::timeout(Duration::from_secs(10), waiting.next().unwrap())
            .await
            .expect("the peer's first waiting stream")
            .unwrap();
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let waiting: Vec<_> = waiting.collect();
        assert!(waiting.iter().all(|w| !w.is_finished()));
        for w in &waiting {
            w.abort();
        }
        for w in waiting {
            assert!(w.await.unwrap_err().is_cancelled());
        }
        drop((held, next, got, greedy, also_greedy, other));
        assert_eq!(budget.available(), 4 * ANSWER_RESERVE);
        assert_eq!(budget.peers.live(), 0, "the shares go with the streams");
        // A budget of one or two answers still gives each peer one.
        for answers in [1, 2] {
            let small = ServeBudget::new(answers * ANSWER_RESERVE, Duration::from_secs(30));
            assert!(small.share(test_key(1)).try_reserve().is_some());
        }
    }

    #[tokio::test]
    async fn a_whole_read_holds_what_it_read_until_its_last_feed_is_dropped() {
        // Room for three answers: a peer's share is two.
        let budget = ServeBudget::new(3 * ANSWER_RESERVE, Duration::from_secs(30));
        let (p, q) = (budget.share(test_key(1)), budget.share(test_key(2)));
        // A read asks for at most one answer's room, whatever it is asked for.
        let mut first = p.reserve_whole(usize::MAX).await;
        assert_eq!(budget.available(), 2 * ANSWER_RESERVE);
        assert!(
            !p.try_extend(&mut first, ANSWER_RESERVE + 1),
            "more than the peer's share has free"
        );
        let second = q.reserve_whole(1000).await;
        assert!(p.try_extend(&mut first, 10));
        // A read counts in its peer's share as an answer does.
        let answer = p.try_reserve();
        assert!(answer.is_none(), "the share has less than an answer left");
        let hold = p.hold_whole(first, 5000);
        assert_eq!(budget.held(), 5000);
        // The rest of its reservation is back; the second read keeps its 1000.
        assert_eq!(budget.available(), 3 * ANSWER_RESERVE - 1000 - 5000);
        let answer = p.try_reserve().expect("the share's rest came back");
        drop(answer);
        // Its feeds share one hold: the bytes come back with the last of them.
        let feeds = [hold.clone(), hold.clone()];
        drop(hold);
        drop(feeds);
        assert_eq!((budget.held(), budget.peak()), (0, 5000));
        // A read that found less than it reserved keeps only what it found.
        let small = q.hold_whole(second, 300);
        assert_eq!(budget.held(), 300);
        assert_eq!(budget.available(), 3 * ANSWER_RESERVE - 300);
        drop(small);
        assert_eq!(budget.available(), 3 * ANSWER_RESERVE);
    }

    #[test]
    fn a_budget_below_one_answer_still_sends_one() {
        let budget = ServeBudget::new(0, Duration::from_secs(30));
        assert_eq!(budget.available(), ANSWER_RESERVE);
        assert!(budget.share(test_key(1)).try_reserve().is_some());
    }

    #[test]
    fn a_large_chunk_is_charged_in_pieces_each_given_back_on_its_own() {
        let budget = ServeBudget::new(2 * ANSWER_RESERVE, Duration::from_secs(30));
        let stream = StreamHold::new();
        let big = Bytes::from((0..PIECE * 2 + 10).map(|i| i as u8).collect::<Vec<_>>());
        let share = budget.share(test_key(1));
        let frame = share.charge(
            share.try_reserve().unwrap(),
            vec![Bytes::from_static(b"head"), big.clone()],
            &stream,
        );
        let lens: Vec<usize> = frame.iter().map(Bytes::len).collect();
        assert_eq!(lens, [4, PIECE, PIECE, 10]);
        assert_eq!(frame[1..].concat(), big[..]);
        let mut frame = frame.into_iter();
        drop(frame.next());
        drop(frame.next());
        assert_eq!(stream.held(), PIECE + 10, "a piece came back alone");
        drop(frame);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_stream_holding_bytes_without_progress_is_stalled_after_the_bound() {
        const STALL: Duration = Duration::from_millis(200);
        let budget = ServeBudget::new(2 * ANSWER_RESERVE, STALL);
        let stream = StreamHold::new();
        let guard = Duration::from_secs(10);
        // Holding nothing, it never stalls.
        assert!(
            tokio::time::timeout(STALL * 2, stream.stalled(STALL))
                .await
                .is_err(),
            "stalled while holding nothing"
        );
        let start = Instant::now();
        let share = budget.share(test_key(1));
        let frame = share.charge(
            share.try_reserve().unwrap(),
            vec![Bytes::from(vec![1u8; 1000]), Bytes::from(vec![2u8; 24])],
            &stream,
        );
        // One chunk given back halfway: the stall counts from it.
        let mut frame = frame.into_iter();
        let first = frame.next().unwrap();
        let release = async {
            tokio::time::sleep(STALL / 2).await;
            drop(first);
            Instant::now()
        };
        let (released, stalled) = tokio::join!(release, async {
            tokio::time::timeout(guard, stream.stalled(STALL))
                .await
                .expect("stalled within the guard");
            Instant::now()
        });
        assert!(stalled >= released + STALL, "cut before the bound");
        assert!(stalled >= start + STALL + STALL / 2);
        assert_eq!(stream.held(), 24);
        drop(frame);
        assert_eq!(stream.held(), 0);
    }
}
