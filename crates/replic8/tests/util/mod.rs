//! A network of session cores wired together in one process, under virtual time.
//!
//! Each node has a toy feed store (feed lengths, an accept policy, optional forwarding)
//! and one session per link. `drive` moves control frames (as real bytes), feed stream
//! opens and closes (headers as real frames) and a simulated sync between the two ends
//! of every open feed stream, until nothing moves.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::type_complexity
)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rand::{rngs::StdRng, Rng};
use std::time::{Duration, Instant};

use replic8::frame::{self, MAX_FRAME_LEN};
use replic8::keys::{ExporterSecret, FeedKey, NamespaceSecret, Role};
use replic8::message::{self, Headers, Message};
use replic8::session::{
    EndReason, HeadCheck, Mode, Session, SessionConfig, SessionEvent, StoreCall, StreamCommand,
    StreamId,
};
use replic8::store::{ArrivedWhole, WholeFeed, WholeHold, WholeOutcome};
use replic8_store::SignedHead;

pub type Policy = Box<dyn FnMut(&str, &[(FeedKey, Headers)]) -> Result<Vec<FeedKey>, String>>;

pub fn accept_all() -> Policy {
    Box::new(|_, feeds| Ok(feeds.iter().map(|(k, _)| *k).collect()))
}

pub fn feed(n: u32) -> FeedKey {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    key[31] = 0xfe;
    FeedKey(key)
}

pub struct Store {
    pub name: &'static str,
    pub lengths: BTreeMap<FeedKey, u64>,
    pub headers: HashMap<FeedKey, Headers>,
    pub policy: Policy,
    /// Share newly accepted feeds with the node's other sessions, in the same namespace.
    pub forward: bool,
    /// Every offer this store was asked about: (link, namespace, feeds).
    pub offers_seen: Vec<(usize, String, Vec<(FeedKey, Headers)>)>,
    /// Answer the session's `Heads` calls with toy signed heads ([`toy_head`]); off,
    /// every feed's first word has no head and every feed gets a stream.
    pub heads: bool,
    /// Feeds whose copy here is the other side of a fork: same length, other tree.
    pub forked: HashSet<FeedKey>,
    /// Feeds whose head this store sends with a signature that does not verify.
    pub forged: HashSet<FeedKey>,
    /// The store sends and takes small feeds whole (`with_whole`, decision 210).
    pub whole: bool,
    /// Bytes of each toy block ([`toy_blocks`]).
    pub block_size: usize,
    /// Feeds this store does not read whole (its `ReadWhole` answers `None`).
    pub read_none: HashSet<FeedKey>,
    /// The most feeds one `ReadWhole` answer covers (a short answer: the session asks
    /// again for the rest), as a store whose budget is short answers.
    pub read_at_most: Option<usize>,
    /// Feeds this store declines when they arrive whole.
    pub decline: HashSet<FeedKey>,
    /// Feeds whose whole blocks this store finds bad (`Failed`).
    pub bad_whole: HashSet<FeedKey>,
    /// `ReadWhole` calls answered.
    pub whole_reads: usize,
    /// Every `WriteWhole` call answered: each feed and whether its head came verified.
    pub whole_writes: Vec<Vec<(FeedKey, bool)>>,
}

/// The blocks of a toy feed of `length` blocks of `size` bytes each.
pub fn toy_blocks(feed: &FeedKey, length: u64, size: usize) -> Vec<Vec<u8>> {
    (0..length)
        .map(|i| vec![feed.0[3] ^ i as u8; size])
        .collect()
}

/// The toy signature the simulated verifier accepts.
pub const GOOD_SIGNATURE: [u8; 64] = [0xaa; 64];

/// A toy signed head of `length` blocks: the tree hash names the length and the side
/// of a fork; the signature verifies unless `forged`.
pub fn toy_head(length: u64, forked: bool, forged: bool) -> SignedHead {
    let mut tree_hash = [u8::from(forked); 32];
    tree_hash[..8].copy_from_slice(&length.to_le_bytes());
    SignedHead {
        length,
        tree_hash,
        signature: if forged { [0; 64] } else { GOOD_SIGNATURE },
    }
}

pub struct End {
    pub node: usize,
    pub session: Session,
    pub attached: HashSet<FeedKey>,
    pub ever_attached: HashSet<FeedKey>,
    /// The peer's verified first-word head each attached stream carried, by feed.
    pub verified_heads: HashMap<FeedKey, SignedHead>,
    pub events: Vec<SessionEvent>,
    /// Every frame this end wrote on the control stream, decoded.
    pub sent: Vec<Message>,
    /// The raw bytes this end wrote, control frames and stream headers.
    pub wire: Vec<u8>,
    /// Most feed streams this end had open at once.
    pub max_open: usize,
}

pub struct Link {
    pub ends: [End; 2],
    /// Control frames in flight from each end, in order (one QUIC stream each way).
    control: [VecDeque<Vec<u8>>; 2],
    /// Feed streams the dialer opened and the acceptor has not seen end.
    streams: Vec<SimStream>,
}

/// One feed stream between the two ends of a link.
struct SimStream {
    feed: FeedKey,
    dialer: StreamId,
    /// The acceptor's id, once the header arrived.
    acceptor: Option<StreamId>,
    header: Vec<u8>,
    /// The dialer finished the stream; the acceptor sees it when delivered.
    fin: bool,
    /// The length last reported synced on this stream.
    synced_at: Option<u64>,
}

/// What can happen next on a link.
#[derive(Clone, Copy, Debug)]
enum Action {
    Control(usize),
    Open(usize),
    Fin(usize),
    Sync(usize),
}

pub struct Net {
    pub stores: Vec<Store>,
    pub links: Vec<Link>,
    pub now: Instant,
    pub config: SessionConfig,
    /// Keep the sessions' head checks unanswered until [`Net::release_checks`].
    pub hold_checks: bool,
    /// Head checks kept: (link, side, check).
    held_checks: Vec<(usize, usize, HeadCheck)>,
    /// Keep the sessions' `WriteWhole` calls unanswered until [`Net::release_writes`].
    pub hold_writes: bool,
    /// `WriteWhole` calls kept or to answer: (link, side, feeds).
    writes: Vec<(usize, usize, Vec<ArrivedWhole>)>,
}

/// The simulated verifier: a toy signature verifies.
fn toy_verify(check: &HeadCheck) -> Vec<usize> {
    check
        .heads
        .iter()
        .enumerate()
        .filter(|(_, (_, h))| h.signature != GOOD_SIGNATURE)
        .map(|(i, _)| i)
        .collect()
}

impl Net {
    pub fn new(config: SessionConfig) -> Net {
        Net {
            stores: Vec::new(),
            links: Vec::new(),
            now: Instant::now(),
            config,
            hold_checks: false,
            held_checks: Vec::new(),
            hold_writes: false,
            writes: Vec::new(),
        }
    }

    /// Answers every `WriteWhole` call kept so far (see [`Net::hold_writes`]).
    pub fn release_writes(&mut self) {
        for (l, side, feeds) in std::mem::take(&mut self.writes) {
            self.answer_write(l, side, feeds);
        }
    }

    /// The feeds of each `WriteWhole` call kept unanswered.
    pub fn held_writes(&self) -> Vec<usize> {
        self.writes
            .iter()
            .map(|(_, _, feeds)| feeds.len())
            .collect()
    }

    /// Bytes of `WriteWhole` calls kept unanswered.
    pub fn held_write_bytes(&self) -> usize {
        self.writes
            .iter()
            .flat_map(|(_, _, feeds)| feeds)
            .map(|f| f.whole.blocks.iter().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// The node's store takes the feeds (or declines, or finds them bad), stores them,
    /// tells every session of the node that they changed, then answers.
    fn answer_write(&mut self, l: usize, side: usize, feeds: Vec<ArrivedWhole>) {
        let node = self.links[l].ends[side].node;
        let mut outcomes = Vec::new();
        let mut stored = Vec::new();
        for arrived in &feeds {
            let store = &mut self.stores[node];
            let expected = toy_blocks(&arrived.feed, arrived.whole.head.length, store.block_size);
            let held = store.lengths.get(&arrived.feed).copied().unwrap_or(0);
            let outcome = if store.decline.contains(&arrived.feed) {
                WholeOutcome::Declined
            } else if held > 0 {
                // Got it meanwhile (or a part of it), as a feed store would say.
                if held >= arrived.whole.head.length {
                    WholeOutcome::Stored { length: held }
                } else {
                    WholeOutcome::Declined
                }
            } else if !arrived.head_verified && arrived.whole.head.signature != GOOD_SIGNATURE {
                // A store checks a head the session did not (decision 250).
                WholeOutcome::Failed("the head's signature does not verify".into())
            } else if store.bad_whole.contains(&arrived.feed) || arrived.whole.blocks != expected {
                WholeOutcome::Failed("a block does not match the head's tree hash".into())
            } else {
                let length = arrived.whole.head.length;
                store.lengths.insert(arrived.feed, length);
                stored.push((arrived.feed, length));
                WholeOutcome::Stored { length }
            };
            outcomes.push(outcome);
        }
        self.stores[node]
            .whole_writes
            .push(feeds.iter().map(|f| (f.feed, f.head_verified)).collect());
        // A feed store reports the change to every session before it answers.
        for (feed, length) in stored {
            self.updated(node, feed, length);
        }
        let keys: Vec<FeedKey> = feeds.iter().map(|f| f.feed).collect();
        self.links[l].ends[side]
            .session
            .handle_whole_written(&keys, Ok(outcomes));
    }

    /// Answers every head check kept so far (see [`Net::hold_checks`]).
    pub fn release_checks(&mut self) {
        for (l, side, check) in std::mem::take(&mut self.held_checks) {
            let bad = toy_verify(&check);
            self.links[l].ends[side]
                .session
                .handle_heads_verified(check, &bad);
        }
    }

    pub fn add_store(&mut self, name: &'static str, policy: Policy) -> usize {
        self.stores.push(Store {
            name,
            lengths: BTreeMap::new(),
            headers: HashMap::new(),
            policy,
            forward: false,
            offers_seen: Vec::new(),
            heads: false,
            forked: HashSet::new(),
            forged: HashSet::new(),
            whole: false,
            block_size: 16,
            read_none: HashSet::new(),
            read_at_most: None,
            decline: HashSet::new(),
            bad_whole: HashSet::new(),
            whole_reads: 0,
            whole_writes: Vec::new(),
        });
        self.stores.len() - 1
    }

    /// Connects two nodes; `dialer` dials. Returns the link index.
    pub fn connect(&mut self, dialer: usize, acceptor: usize, exporter: [u8; 32]) -> usize {
        self.connect_with(
            dialer,
            self.config.clone(),
            acceptor,
            self.config.clone(),
            exporter,
        )
    }

    pub fn connect_with(
        &mut self,
        dialer: usize,
        dialer_config: SessionConfig,
        acceptor: usize,
        acceptor_config: SessionConfig,
        exporter: [u8; 32],
    ) -> usize {
        let end = |node, config, role| End {
            node,
            session: Session::new(config, role, ExporterSecret(exporter), self.now),
            attached: HashSet::new(),
            ever_attached: HashSet::new(),
            verified_heads: HashMap::new(),
            events: Vec::new(),
            sent: Vec::new(),
            wire: Vec::new(),
            max_open: 0,
        };
        self.links.push(Link {
            ends: [
                end(dialer, dialer_config, Role::Dialer),
                end(acceptor, acceptor_config, Role::Acceptor),
            ],
            control: [VecDeque::new(), VecDeque::new()],
            streams: Vec::new(),
        });
        self.links.len() - 1
    }

    pub fn end(&mut self, link: usize, node: usize) -> &mut End {
        let link = &mut self.links[link];
        if link.ends[0].node == node {
            &mut link.ends[0]
        } else {
            assert_eq!(link.ends[1].node, node, "node {node} is not on this link");
            &mut link.ends[1]
        }
    }

    pub fn register(&mut self, link: usize, node: usize, ns: &str, secret: Option<[u8; 32]>) {
        let whole = self.stores[node].whole;
        let session = &mut self.end(link, node).session;
        session
            .handle_register_namespace(ns, secret.map(NamespaceSecret))
            .unwrap();
        if whole {
            session.handle_store_takes_whole(ns).unwrap();
        }
    }

    /// Creates feeds in a node's store.
    pub fn create(&mut self, node: usize, feeds: &[(FeedKey, u64, Headers)]) {
        for (key, length, headers) in feeds {
            self.stores[node].lengths.insert(*key, *length);
            self.stores[node].headers.insert(*key, headers.clone());
        }
    }

    pub fn share(&mut self, link: usize, node: usize, ns: &str, feeds: &[FeedKey]) -> usize {
        let list = feeds
            .iter()
            .map(|k| {
                (
                    *k,
                    self.stores[node]
                        .headers
                        .get(k)
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect();
        self.end(link, node).session.handle_share(ns, list).unwrap()
    }

    /// The store appends to a feed: every session replicating it hears of the change.
    pub fn append(&mut self, node: usize, feed: FeedKey, blocks: u64) {
        let len = self.stores[node].lengths.entry(feed).or_insert(0);
        *len += blocks;
        let len = *len;
        self.updated(node, feed, len);
    }

    fn updated(&mut self, node: usize, feed: FeedKey, len: u64) {
        for link in &mut self.links {
            for end in &mut link.ends {
                if end.node == node {
                    end.session.handle_feed_updated(&feed, len);
                }
            }
        }
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        for link in &mut self.links {
            for end in &mut link.ends {
                end.session.handle_timeout(self.now);
            }
        }
    }

    /// Moves everything, in order, until nothing moves. Panics if it does not settle.
    pub fn drive(&mut self) {
        self.run(None, 0, usize::MAX);
    }

    /// Moves everything in a random order (control frames stay in order on their
    /// stream; feed streams race each other and the control stream), with `appends`
    /// random appends along the way, until nothing moves.
    pub fn drive_random(&mut self, rng: &mut StdRng, appends: usize) {
        self.run(Some(rng), appends, usize::MAX);
    }

    /// As `drive_random`, but stops after `steps` steps even if things still move.
    pub fn drive_random_steps(&mut self, rng: &mut StdRng, steps: usize) {
        self.run(Some(rng), 0, steps);
    }

    fn run(&mut self, mut rng: Option<&mut StdRng>, mut appends: usize, steps: usize) {
        for _round in 0..steps.min(10_000_000) {
            for l in 0..self.links.len() {
                self.collect(l);
            }
            let mut actions = Vec::new();
            for l in 0..self.links.len() {
                for a in self.actions(l) {
                    actions.push((l, a));
                }
            }
            if actions.is_empty() {
                return;
            }
            let Some(rng) = rng.as_deref_mut() else {
                let (l, action) = actions[0];
                self.act(l, action);
                continue;
            };
            if appends > 0 && rng.gen_range(0..4) == 0 {
                appends -= 1;
                let node = rng.gen_range(0..self.stores.len());
                let held: Vec<FeedKey> = self.stores[node].lengths.keys().copied().collect();
                if !held.is_empty() {
                    let feed = held[rng.gen_range(0..held.len())];
                    self.append(node, feed, rng.gen_range(1..4));
                }
                continue;
            }
            let (l, action) = actions[rng.gen_range(0..actions.len())];
            self.act(l, action);
        }
        assert!(steps < 10_000_000, "the network did not settle");
    }

    /// Takes every output of both ends of link `l`.
    fn collect(&mut self, l: usize) {
        loop {
            let mut moved = false;
            for side in 0..2 {
                let link = &mut self.links[l];
                let end = &mut link.ends[side];
                while let Some(bytes) = end.session.poll_transmit() {
                    moved = true;
                    let (payload, used) = frame::parse(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
                    assert_eq!(used, bytes.len(), "one frame per transmit");
                    end.sent.push(message::decode(payload).unwrap());
                    end.wire.extend_from_slice(&bytes);
                    link.control[side].push_back(bytes);
                }
                while let Some(command) = end.session.poll_stream() {
                    moved = true;
                    assert_eq!(side, 0, "only the dialer opens or closes feed streams");
                    match command {
                        StreamCommand::Open {
                            feed,
                            header,
                            stream,
                            verified_head,
                            ..
                        } => {
                            if let Some(head) = verified_head {
                                end.verified_heads.insert(feed, head);
                            }
                            let mut bytes = Vec::new();
                            message::encode_stream_header(&header, &mut bytes).unwrap();
                            end.wire.extend_from_slice(&bytes);
                            assert!(end.attached.insert(feed), "two streams for one feed");
                            end.ever_attached.insert(feed);
                            end.max_open = end.max_open.max(end.session.open_streams());
                            link.streams.push(SimStream {
                                feed,
                                dialer: stream,
                                acceptor: None,
                                header: bytes,
                                fin: false,
                                synced_at: None,
                            });
                        }
                        StreamCommand::Close { feed, stream, .. } => {
                            assert!(
                                end.attached.remove(&feed),
                                "closing a stream that is not open"
                            );
                            let s = link
                                .streams
                                .iter_mut()
                                .find(|s| s.dialer == stream && !s.fin)
                                .expect("close of an unknown stream");
                            s.fin = true;
                        }
                    }
                }
                // The toy store holds every block of its feeds: complete at its length.
                let store = &mut self.stores[end.node];
                while let Some(call) = end.session.poll_store() {
                    moved = true;
                    if let StoreCall::ReadWhole { feeds, .. } = &call {
                        assert!(store.whole, "{}: asked to read whole", store.name);
                        store.whole_reads += 1;
                        let answer = feeds
                            .iter()
                            .take(store.read_at_most.unwrap_or(usize::MAX))
                            .map(|f| {
                                let length = store.lengths.get(f).copied().filter(|l| *l > 0)?;
                                if store.read_none.contains(f) {
                                    return None;
                                }
                                Some(WholeFeed {
                                    head: toy_head(
                                        length,
                                        store.forked.contains(f),
                                        store.forged.contains(f),
                                    ),
                                    blocks: toy_blocks(f, length, store.block_size),
                                    hold: WholeHold::default(),
                                })
                            })
                            .collect();
                        end.session.handle_whole_read(feeds, Ok(answer));
                    }
                    if let StoreCall::WriteWhole { feeds, .. } = call {
                        assert!(store.whole, "{}: asked to write whole", store.name);
                        self.writes.push((l, side, feeds));
                        continue;
                    }
                    if let StoreCall::Heads { feeds, .. } = call {
                        let heads = feeds
                            .iter()
                            .map(|f| {
                                let length = store.lengths.get(f).copied().filter(|l| *l > 0)?;
                                store.heads.then(|| {
                                    toy_head(
                                        length,
                                        store.forked.contains(f),
                                        store.forged.contains(f),
                                    )
                                })
                            })
                            .collect();
                        end.session.handle_heads(&feeds, Ok(heads));
                    }
                }
                while let Some(check) = end.session.poll_verify() {
                    moved = true;
                    if self.hold_checks {
                        self.held_checks.push((l, side, check));
                    } else {
                        let bad = toy_verify(&check);
                        end.session.handle_heads_verified(check, &bad);
                    }
                }
                moved |= self.handle_events(l, side);
                if !self.hold_writes {
                    for (l, side, feeds) in std::mem::take(&mut self.writes) {
                        self.answer_write(l, side, feeds);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn actions(&self, l: usize) -> Vec<Action> {
        let link = &self.links[l];
        let mut out = Vec::new();
        for side in 0..2 {
            if !link.control[side].is_empty() {
                out.push(Action::Control(side));
            }
        }
        for (i, s) in link.streams.iter().enumerate() {
            if s.acceptor.is_none() {
                out.push(Action::Open(i));
            } else if s.fin {
                out.push(Action::Fin(i));
            } else if self.needs_sync(l, s) {
                out.push(Action::Sync(i));
            }
        }
        out
    }

    fn needs_sync(&self, l: usize, s: &SimStream) -> bool {
        let link = &self.links[l];
        if !link.ends[1].attached.contains(&s.feed) || !link.ends[0].attached.contains(&s.feed) {
            return false;
        }
        let (la, lb) = self.lengths(l, s.feed);
        la != lb || s.synced_at != Some(la)
    }

    fn lengths(&self, l: usize, feed: FeedKey) -> (u64, u64) {
        let link = &self.links[l];
        let len = |end: &End| {
            self.stores[end.node]
                .lengths
                .get(&feed)
                .copied()
                .unwrap_or(0)
        };
        (len(&link.ends[0]), len(&link.ends[1]))
    }

    fn act(&mut self, l: usize, action: Action) {
        match action {
            Action::Control(side) => {
                let bytes = self.links[l].control[side].pop_front().unwrap();
                // The writer wrote it: it no longer counts as queued on the sender.
                self.links[l].ends[side]
                    .session
                    .handle_control_written(bytes.len());
                let to = &mut self.links[l].ends[1 - side].session;
                // Deliver in two pieces to exercise the reader's buffering.
                let cut = bytes.len() / 2;
                to.handle_control_bytes(&bytes[..cut]);
                to.handle_control_bytes(&bytes[cut..]);
            }
            Action::Open(i) => {
                let link = &mut self.links[l];
                let (payload, _) = frame::parse(&link.streams[i].header, MAX_FRAME_LEN)
                    .unwrap()
                    .unwrap();
                let header = message::decode_stream_header(payload).unwrap();
                let feed = link.streams[i].feed;
                match link.ends[1].session.handle_incoming_stream(header) {
                    Ok(incoming) => {
                        assert_eq!(incoming.feed, feed, "both ends attach the same feed");
                        link.streams[i].acceptor = Some(incoming.stream);
                        link.ends[1].attached.insert(feed);
                        link.ends[1].ever_attached.insert(feed);
                        if let Some(head) = incoming.verified_head {
                            link.ends[1].verified_heads.insert(feed, head);
                        }
                        if let Some(old) = incoming.replaces {
                            // The store detaches the old stream; its end arrives later.
                            assert!(link
                                .streams
                                .iter()
                                .any(|s| s.acceptor == Some(old) && s.fin));
                        }
                    }
                    Err(_) => {
                        link.streams.remove(i);
                    }
                }
            }
            Action::Fin(i) => {
                let link = &mut self.links[l];
                let s = link.streams.remove(i);
                let acceptor = s.acceptor.unwrap();
                let still_current = !link
                    .streams
                    .iter()
                    .any(|o| o.feed == s.feed && o.acceptor.is_some());
                if still_current {
                    link.ends[1].attached.remove(&s.feed);
                }
                link.ends[1].session.handle_stream_closed(&s.feed, acceptor);
            }
            Action::Sync(i) => {
                let feed = self.links[l].streams[i].feed;
                let (la, lb) = self.lengths(l, feed);
                let len = la.max(lb);
                let nodes = [self.links[l].ends[0].node, self.links[l].ends[1].node];
                for (node, old) in nodes.into_iter().zip([la, lb]) {
                    if old < len {
                        self.stores[node].lengths.insert(feed, len);
                        self.updated(node, feed, len);
                    }
                }
                let link = &mut self.links[l];
                link.streams[i].synced_at = Some(len);
                for end in &mut link.ends {
                    end.session.handle_feed_synced(&feed, len);
                }
            }
        }
    }

    fn handle_events(&mut self, l: usize, side: usize) -> bool {
        let mut moved = false;
        loop {
            let end = &mut self.links[l].ends[side];
            let Some(event) = end.session.poll_event() else {
                return moved;
            };
            moved = true;
            end.events.push(event.clone());
            let node = end.node;
            if let SessionEvent::Offered {
                namespace,
                offer,
                feeds,
            } = event
            {
                let store = &mut self.stores[node];
                store
                    .offers_seen
                    .push((l, namespace.clone(), feeds.clone()));
                let answer = (store.policy)(&namespace, &feeds);
                let mut new = Vec::new();
                if let Ok(keys) = &answer {
                    for (key, headers) in &feeds {
                        if keys.contains(key) && !store.lengths.contains_key(key) {
                            store.lengths.insert(*key, 0);
                            store.headers.insert(*key, headers.clone());
                            new.push(*key);
                        }
                    }
                }
                self.links[l].ends[side]
                    .session
                    .handle_offer_answer(offer, answer)
                    .unwrap();
                if self.stores[node].forward && !new.is_empty() {
                    for other in 0..self.links.len() {
                        if other == l {
                            continue;
                        }
                        for s in 0..2 {
                            if self.links[other].ends[s].node == node {
                                let list = new
                                    .iter()
                                    .map(|k| (*k, self.stores[node].headers[k].clone()))
                                    .collect();
                                let _ = self.links[other].ends[s]
                                    .session
                                    .handle_share(&namespace, list);
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn ended(&self, link: usize, side: usize) -> Option<&EndReason> {
        self.links[link].ends[side].session.end_reason()
    }
}

pub fn headers(pairs: &[(&str, &[u8])]) -> Headers {
    let mut h = Headers::new();
    for (k, v) in pairs {
        h.insert(*k, v.to_vec()).unwrap();
    }
    h
}

pub fn live() -> SessionConfig {
    SessionConfig::default()
}

pub fn one_shot() -> SessionConfig {
    SessionConfig {
        mode: Mode::OneShot,
        ..SessionConfig::default()
    }
}

/// Whether `key`'s bytes appear anywhere in `wire`.
pub fn contains_key(wire: &[u8], key: &FeedKey) -> bool {
    wire.windows(32).any(|w| w == key.0)
}
