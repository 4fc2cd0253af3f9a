//! A store that is not a feed store: a replicated key-value map, written against
//! `replic8-node` alone (`docs/STORES.md` is the guide).
//!
//! Two nodes on 127.0.0.1, without DHT or LAN, each run a `KvStore` in the secret
//! namespace `kv-example`. Node A holds a map with three entries and shares it; node B
//! connects to A (a static connection, A's key pinned), is offered the map, accepts it
//! (headers `kind=kv-map`) and the two stores run their own protocol on the QUIC stream
//! the session gives them: each side sends its whole map, each merges what it received
//! (the higher version of a key wins, the larger value on a tie, so both sides end
//! equal). Then B puts an entry of its own; the session reopens the map's stream and A
//! receives it. The run exits 0 once both maps are equal with four entries, non-zero on
//! any failure or after 60 s.
//!
//! Run: `cargo run -p replic8-node --example custom_store`

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use replic8_node::actix::{Actor, AsyncContext, Context, Handler, Message};
use replic8_node::store::{
    Attach, Detach, FeedFailed, FeedStalled, FeedStream, FeedSynced, FeedUpdated, KnownFeeds,
    Offer, PeerKey, SessionsActor, Share, SharedFeed, Shares, StoreError, StreamEnded, StreamId,
};
use replic8_node::tokio::sync::watch;
use replic8_node::tokio::task::AbortHandle;
use replic8_node::{actix, tokio, FeedKey, Headers, NamespaceSecret, Node, NodeHandle};

/// The namespace both stores serve.
const NAMESPACE: &str = "kv-example";
/// The header a map is offered with, and its value.
const KIND: (&str, &str) = ("kind", "kv-map");
/// Most maps a store accepts: a peer may offer any number.
const MAX_MAPS: usize = 64;
/// Most entries in one map; a peer's entries past it are dropped.
const MAX_ENTRIES: usize = 1024;
/// Longest key, in bytes.
const MAX_KEY: usize = 256;
/// Longest value, in bytes.
const MAX_VALUE: usize = 4096;
/// Most bytes of one encoded map, what a peer may make us read on a stream: every
/// entry at its largest (a 2-byte key length, an 8-byte version, a 4-byte value length).
const MAX_MAP_BYTES: usize = 4 + MAX_ENTRIES * (2 + MAX_KEY + 8 + 4 + MAX_VALUE);
/// How long an exchange may take before the store gives up on the peer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the whole example may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// One value with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    version: u64,
    value: Vec<u8>,
}

/// A map: keys to entries.
type Map = BTreeMap<String, Entry>;
/// Every map a store holds, by its 32-byte id; the program watches it change.
type Maps = Arc<watch::Sender<HashMap<FeedKey, Map>>>;

/// The number both sides report when their copies agree: the sum of the versions,
/// which a merge never lowers and which is equal on two equal maps.
fn sync_length(map: &Map) -> u64 {
    map.values()
        .fold(0u64, |sum, e| sum.saturating_add(e.version))
}

/// The wire form of a map: `count:u32`, then per entry `key_len:u16 key version:u64
/// value_len:u32 value`, all big-endian.
fn encode(map: &Map) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_be_bytes());
    for (key, entry) in map {
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&entry.version.to_be_bytes());
        out.extend_from_slice(&(entry.value.len() as u32).to_be_bytes());
        out.extend_from_slice(&entry.value);
    }
    out
}

/// Takes `n` bytes from the front of `input`.
fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if input.len() < n {
        return Err("truncated map".into());
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn take_array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    out.copy_from_slice(take(input, N)?);
    Ok(out)
}

/// Decodes a peer's map, checking every bound before it allocates.
fn decode(mut input: &[u8]) -> Result<Map, String> {
    let count = u32::from_be_bytes(take_array(&mut input)?) as usize;
    if count > MAX_ENTRIES {
        return Err(format!("{count} entries, more than {MAX_ENTRIES}"));
    }
    let mut map = Map::new();
    for _ in 0..count {
        let key_len = u16::from_be_bytes(take_array(&mut input)?) as usize;
        if key_len > MAX_KEY {
            return Err(format!("a key of {key_len} bytes"));
        }
        let key = std::str::from_utf8(take(&mut input, key_len)?)
            .map_err(|_| "a key that is not UTF-8".to_string())?
            .to_owned();
        let version = u64::from_be_bytes(take_array(&mut input)?);
        let value_len = u32::from_be_bytes(take_array(&mut input)?) as usize;
        if value_len > MAX_VALUE {
            return Err(format!("a value of {value_len} bytes"));
        }
        let value = take(&mut input, value_len)?.to_vec();
        if map.insert(key, Entry { version, value }).is_some() {
            return Err("a key twice".into());
        }
    }
    if !input.is_empty() {
        return Err("bytes after the last entry".into());
    }
    Ok(map)
}

/// Merges `theirs` into `ours`; true if `ours` changed. The higher version wins, the
/// larger value on a tie, so both sides reach the same map whatever the order.
fn merge(ours: &mut Map, theirs: Map) -> bool {
    let mut changed = false;
    for (key, entry) in theirs {
        let newer = match ours.get(&key) {
            Some(old) => (entry.version, &entry.value) > (old.version, &old.value),
            None => ours.len() < MAX_ENTRIES,
        };
        if newer {
            ours.insert(key, entry);
            changed = true;
        }
    }
    changed
}

/// The store: maps replicated whole on each stream.
#[derive(Debug)]
struct KvStore {
    maps: Maps,
    sessions: actix::Addr<SessionsActor>,
    /// The exchange running on each attached stream, aborted when it is detached.
    streams: HashMap<StreamId, AbortHandle>,
}

impl Actor for KvStore {
    type Context = Context<Self>;
}

/// The headers every map is offered with.
fn map_headers() -> Headers {
    let mut headers = Headers::new();
    // Two short strings are far within the header bounds.
    let _ = headers.insert(KIND.0, KIND.1.as_bytes().to_vec());
    headers
}

impl Handler<Shares> for KvStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;

    fn handle(&mut self, _: Shares, _: &mut Context<Self>) -> Self::Result {
        Ok(self
            .maps
            .borrow()
            .keys()
            .map(|key| SharedFeed {
                key: *key,
                headers: map_headers(),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for KvStore {
    type Result = Result<Vec<FeedKey>, StoreError>;

    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        // Maps both sides hold replicate without an offer.
        Ok(self.maps.borrow().keys().copied().collect())
    }
}

impl Handler<Offer> for KvStore {
    type Result = Result<Vec<FeedKey>, StoreError>;

    fn handle(&mut self, offer: Offer, _: &mut Context<Self>) -> Self::Result {
        let mut accepted = Vec::new();
        self.maps.send_modify(|maps| {
            for feed in offer.feeds {
                let is_map = feed.headers.get(KIND.0) == Some(KIND.1.as_bytes());
                let room = maps.contains_key(&feed.key) || maps.len() < MAX_MAPS;
                if is_map && room {
                    maps.entry(feed.key).or_default();
                    accepted.push(feed.key);
                }
            }
        });
        Ok(accepted)
    }
}

impl Handler<Attach> for KvStore {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, attach: Attach, ctx: &mut Context<Self>) -> Self::Result {
        let ours = self
            .maps
            .borrow()
            .get(&attach.feed)
            .map(encode)
            .ok_or_else(|| StoreError::Failed("no such map".into()))?;
        let (feed, peer, id) = (attach.feed, attach.peer, attach.id);
        let (store, sessions) = (ctx.address(), self.sessions.clone());
        let FeedStream { mut send, mut recv } = attach.stream;
        let task = tokio::spawn(async move {
            let exchange = async {
                let (sent, received) = tokio::join!(
                    async {
                        send.write_all(&ours).await?;
                        send.finish()?;
                        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                    },
                    recv.read_to_end(MAX_MAP_BYTES)
                );
                sent.map_err(|e| e.to_string())?;
                received.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
                Err(_) => {
                    let reason = "the peer's map did not arrive in time".to_string();
                    sessions.do_send(FeedStalled { feed, peer, reason });
                }
                // The stream was lost: the session ends, or reopens the map.
                Ok(Err(_)) => sessions.do_send(StreamEnded { feed, peer, id }),
                Ok(Ok(bytes)) => store.do_send(Exchanged {
                    feed,
                    peer,
                    id,
                    theirs: decode(&bytes),
                }),
            }
        });
        self.streams.retain(|_, task| !task.is_finished());
        self.streams.insert(id, task.abort_handle());
        Ok(())
    }
}

/// Stream task → store: the peer's map arrived (or broke the protocol). The merge is
/// done by the actor, so that its `FeedSynced` reaches the session before the
/// `FeedUpdated` of a later `Put` (in the other order, the session would take the
/// stale length for the final one and the `Put` would never be sent).
#[derive(Debug)]
struct Exchanged {
    feed: FeedKey,
    peer: PeerKey,
    id: StreamId,
    theirs: Result<Map, String>,
}

impl Message for Exchanged {
    type Result = ();
}

impl Handler<Exchanged> for KvStore {
    type Result = ();

    fn handle(&mut self, exchanged: Exchanged, _: &mut Context<Self>) {
        let Exchanged {
            feed,
            peer,
            id,
            theirs,
        } = exchanged;
        let theirs = match theirs {
            Ok(map) => map,
            Err(reason) => {
                // The peer broke our protocol: the map stops on this session.
                self.sessions.do_send(FeedFailed { feed, peer, reason });
                return;
            }
        };
        let (mut length, mut changed) = (0, false);
        // Watchers wake now, but a `Put` they send is handled after this handler, so
        // after the `FeedSynced` below.
        self.maps.send_if_modified(|maps| {
            if let Some(map) = maps.get_mut(&feed) {
                changed = merge(map, theirs);
                length = sync_length(map);
            }
            changed
        });
        self.sessions.do_send(FeedSynced { feed, peer, length });
        if changed {
            // Other sessions replicating the map reopen its stream.
            self.sessions.do_send(FeedUpdated { feed, length });
        }
        // Our protocol is one exchange per stream: it is over.
        self.sessions.do_send(StreamEnded { feed, peer, id });
    }
}

impl Handler<Detach> for KvStore {
    type Result = ();

    fn handle(&mut self, detach: Detach, _: &mut Context<Self>) {
        if let Some(task) = self.streams.remove(&detach.id) {
            task.abort();
        }
    }
}

/// Program → store: set `key` in map `map` (created if new) to `value`.
#[derive(Debug)]
struct Put {
    map: FeedKey,
    key: String,
    value: Vec<u8>,
}

impl Message for Put {
    type Result = Result<(), StoreError>;
}

impl Handler<Put> for KvStore {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, put: Put, ctx: &mut Context<Self>) -> Self::Result {
        if put.key.len() > MAX_KEY || put.value.len() > MAX_VALUE {
            return Err(StoreError::Refused("key or value too large".into()));
        }
        let mut result = Ok(());
        let mut new_map = false;
        let mut length = 0;
        self.maps.send_modify(|maps| {
            new_map = !maps.contains_key(&put.map);
            let map = maps.entry(put.map).or_default();
            let version = map.get(&put.key).map_or(1, |e| e.version + 1);
            if map.len() >= MAX_ENTRIES && !map.contains_key(&put.key) {
                result = Err(StoreError::Refused("map full".into()));
                return;
            }
            map.insert(
                put.key,
                Entry {
                    version,
                    value: put.value,
                },
            );
            length = sync_length(map);
        });
        result?;
        if new_map {
            // Offer the new map on every session.
            let share = Share {
                namespace: NAMESPACE.into(),
                feeds: vec![SharedFeed {
                    key: put.map,
                    headers: map_headers(),
                }],
                peers: None,
                except: None,
            };
            let sessions = self.sessions.clone();
            ctx.spawn(actix::fut::wrap_future(async move {
                let _ = sessions.send(share).await;
            }));
        } else {
            self.sessions.do_send(FeedUpdated {
                feed: put.map,
                length,
            });
        }
        Ok(())
    }
}

/// A node on loopback with a `KvStore` in the namespace; returns the store's address
/// and its maps.
async fn spawn_node(
    secret: &NamespaceSecret,
) -> Result<(NodeHandle, actix::Addr<KvStore>, Maps), Box<dyn std::error::Error>> {
    let node = Node::builder()
        .in_memory()
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .dht(false)
        .lan(false)
        .spawn()
        .await?;
    let maps: Maps = Arc::new(watch::Sender::new(HashMap::new()));
    let store_maps = maps.clone();
    let store = node
        .add_store(
            vec![(NAMESPACE.to_owned(), Some(secret.clone()))],
            move |ctx| KvStore {
                maps: store_maps,
                sessions: ctx.sessions,
                streams: HashMap::new(),
            },
        )
        .await?;
    Ok((node, store, maps))
}

/// Waits until `maps` holds `map` with `entries` entries; returns it.
async fn wait_for(
    maps: &Maps,
    map: FeedKey,
    entries: usize,
) -> Result<Map, Box<dyn std::error::Error>> {
    let mut watch = maps.subscribe();
    let held = watch
        .wait_for(|maps| maps.get(&map).is_some_and(|m| m.len() == entries))
        .await?;
    Ok(held.get(&map).cloned().unwrap_or_default())
}

/// What the exchange ended with.
#[derive(Debug)]
pub(crate) struct Report {
    /// The map both nodes hold, equal on both.
    pub(crate) map: BTreeMap<String, Vec<u8>>,
}

async fn exchange_maps() -> Result<Report, Box<dyn std::error::Error>> {
    // In a real program, 32 random bytes given to both sides out of band.
    let secret = NamespaceSecret([42; 32]);
    let (a, store_a, maps_a) = spawn_node(&secret).await?;
    let (b, store_b, maps_b) = spawn_node(&secret).await?;
    // A map's id is any 32 bytes its users agree on.
    let map = FeedKey(*b"replic8 custom store example map");
    for (key, value) in [
        ("apple", "red"),
        ("banana", "yellow"),
        ("cherry", "dark red"),
    ] {
        store_a
            .send(Put {
                map,
                key: key.into(),
                value: value.into(),
            })
            .await??;
    }
    println!("A {} holds 3 entries", a.key().fmt_short());
    let peer = b.connect(a.local_addr(), Some(a.key())).await?;
    println!(
        "B {} connected to A {}",
        b.key().fmt_short(),
        peer.fmt_short()
    );
    wait_for(&maps_b, map, 3).await?;
    println!("B received A's 3 entries");
    store_b
        .send(Put {
            map,
            key: "damson".into(),
            value: "purple".into(),
        })
        .await??;
    let on_a = wait_for(&maps_a, map, 4).await?;
    let on_b = wait_for(&maps_b, map, 4).await?;
    println!("A received B's entry");
    a.close().await;
    b.close().await;
    if on_a != on_b {
        return Err(format!("the maps differ: A {on_a:?}, B {on_b:?}").into());
    }
    Ok(Report {
        map: on_a.into_iter().map(|(k, e)| (k, e.value)).collect(),
    })
}

/// Runs the exchange on a runtime of its own, within [`RUN_TIMEOUT`].
pub(crate) fn run() -> Result<Report, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        match tokio::time::timeout(RUN_TIMEOUT, exchange_maps()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no verified exchange within {RUN_TIMEOUT:?}")),
        }
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(report) => {
            for (key, value) in &report.map {
                println!("{key} = {}", String::from_utf8_lossy(value));
            }
            println!(
                "verified: both nodes hold the same {} entries",
                report.map.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("custom_store: {e}");
            ExitCode::FAILURE
        }
    }
}
