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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use replic8::frame::{self, MAX_FRAME_LEN};
use replic8::keys::{ExporterSecret, FeedKey, NamespaceSecret, Role};
use replic8::message::{self, Headers, Message};
use replic8::session::{EndReason, Mode, Session, SessionConfig, SessionEvent, StreamCommand};

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
}

pub struct End {
    pub node: usize,
    pub session: Session,
    pub attached: HashSet<FeedKey>,
    pub ever_attached: HashSet<FeedKey>,
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
    /// Feed lengths each end last reported synced, to report once per length.
    reported: HashMap<FeedKey, u64>,
}

pub struct Net {
    pub stores: Vec<Store>,
    pub links: Vec<Link>,
    pub now: Instant,
    pub config: SessionConfig,
}

impl Net {
    pub fn new(config: SessionConfig) -> Net {
        Net {
            stores: Vec::new(),
            links: Vec::new(),
            now: Instant::now(),
            config,
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
            reported: HashMap::new(),
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
        self.end(link, node)
            .session
            .handle_register_namespace(ns, secret.map(NamespaceSecret))
            .unwrap();
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

    /// Moves everything until nothing moves. Panics if it does not settle.
    pub fn drive(&mut self) {
        for _round in 0..1_000_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the network did not settle");
    }

    fn step(&mut self) -> bool {
        let mut moved = false;
        for l in 0..self.links.len() {
            for side in 0..2 {
                moved |= self.move_frames(l, side);
                moved |= self.move_streams(l, side);
                moved |= self.handle_events(l, side);
            }
            moved |= self.sync(l);
        }
        moved
    }

    fn move_frames(&mut self, l: usize, side: usize) -> bool {
        let mut moved = false;
        let [a, b] = &mut self.links[l].ends;
        let (from, to) = if side == 0 { (a, b) } else { (b, a) };
        while let Some(bytes) = from.session.poll_transmit() {
            moved = true;
            let (payload, used) = frame::parse(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
            assert_eq!(used, bytes.len(), "one frame per transmit");
            from.sent.push(message::decode(payload).unwrap());
            from.wire.extend_from_slice(&bytes);
            // Deliver in two pieces to exercise the reader's buffering.
            let cut = bytes.len() / 2;
            to.session.handle_control_bytes(&bytes[..cut]);
            to.session.handle_control_bytes(&bytes[cut..]);
        }
        moved
    }

    fn move_streams(&mut self, l: usize, side: usize) -> bool {
        let mut moved = false;
        let [a, b] = &mut self.links[l].ends;
        let (from, to) = if side == 0 { (a, b) } else { (b, a) };
        while let Some(command) = from.session.poll_stream() {
            moved = true;
            match command {
                StreamCommand::Open { feed, header, .. } => {
                    let mut bytes = Vec::new();
                    message::encode_stream_header(&header, &mut bytes).unwrap();
                    from.wire.extend_from_slice(&bytes);
                    let (payload, _) = frame::parse(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
                    let header = message::decode_stream_header(payload).unwrap();
                    from.attached.insert(feed);
                    from.ever_attached.insert(feed);
                    from.max_open = from.max_open.max(from.session.open_streams());
                    if let Ok(incoming) = to.session.handle_incoming_stream(header) {
                        assert_eq!(incoming.feed, feed, "both ends attach the same feed");
                        to.attached.insert(feed);
                        to.ever_attached.insert(feed);
                    }
                }
                StreamCommand::Close { feed } => {
                    assert!(
                        from.attached.remove(&feed),
                        "closing a stream that is not open"
                    );
                    to.attached.remove(&feed);
                    to.session.handle_stream_closed(&feed);
                }
            }
        }
        moved
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

    /// Simulated feed sync on every stream open at both ends: the shorter copy catches
    /// up with the longer one, then both report synced at that length.
    fn sync(&mut self, l: usize) -> bool {
        let mut moved = false;
        let (na, nb) = (self.links[l].ends[0].node, self.links[l].ends[1].node);
        let open: Vec<FeedKey> = self.links[l].ends[0]
            .attached
            .intersection(&self.links[l].ends[1].attached)
            .copied()
            .collect();
        for feed in open {
            let la = self.stores[na].lengths.get(&feed).copied().unwrap_or(0);
            let lb = self.stores[nb].lengths.get(&feed).copied().unwrap_or(0);
            let len = la.max(lb);
            for (node, old) in [(na, la), (nb, lb)] {
                if old < len {
                    self.stores[node].lengths.insert(feed, len);
                    self.updated(node, feed, len);
                    moved = true;
                }
            }
            if self.links[l].reported.get(&feed) != Some(&len) {
                self.links[l].reported.insert(feed, len);
                for end in &mut self.links[l].ends {
                    end.session.handle_feed_synced(&feed, len);
                }
                moved = true;
            }
        }
        moved
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
