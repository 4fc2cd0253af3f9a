//! The story: the nodes' events and the readers' policy turned into steps, in the order
//! they really happened.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::steps::{Step, StepFeed};
use super::{DemoError, NAMES, POLICY_HEADER, READER_1, READER_2, WRITER};
use replic8_node::{AcceptPolicy, FeedKey, Headers, NamespacePolicy, NodeEvent};

/// What the story is told from.
#[derive(Debug)]
pub(super) enum Input {
    /// An event of node `.0`.
    Event(usize, NodeEvent),
    /// The accept policy of node `.0` decided a feed with these headers.
    Decision(usize, Headers, bool),
}

pub(super) fn step_feed(feed: &FeedKey, headers: &Headers) -> StepFeed {
    StepFeed {
        feed: hex::encode(feed.0),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect(),
    }
}

pub(super) fn headers(entries: &[(&str, String)]) -> Result<Headers, DemoError> {
    let mut headers = Headers::new();
    for (k, v) in entries {
        headers
            .insert(*k, v.clone().into_bytes())
            .map_err(|e| DemoError::Options(e.to_string()))?;
    }
    Ok(headers)
}

/// A reader's policy in the namespace: accept only feeds whose headers say
/// `type=photos`, forward what it accepts; every decision is reported on `tx` as it is
/// made.
pub(super) fn reader_policy(node: usize, tx: mpsc::UnboundedSender<Input>) -> NamespacePolicy {
    let accept = AcceptPolicy::Headers(Arc::new(move |h: &Headers| {
        let ok = h.get(POLICY_HEADER.0) == Some(POLICY_HEADER.1.as_bytes());
        let _ = tx.send(Input::Decision(node, h.clone(), ok));
        ok
    }));
    NamespacePolicy {
        accept,
        forward: true,
    }
}

/// The narrator: turns the nodes' events into steps, and knows when the story is done.
pub(super) struct Story<F> {
    pub(super) on_step: F,
    pub(super) keys: [replic8_node::PeerKey; 3],
    /// The feed the readers accept, its blocks and bytes.
    pub(super) feed: FeedKey,
    pub(super) blocks: u64,
    pub(super) bytes: u64,
    /// What the writer shared, to name the feed a policy decided by its headers.
    pub(super) shared: Vec<(FeedKey, Headers)>,
    /// Bytes of `feed` each node received.
    pub(super) received: [u64; 3],
    /// Each reader is in sync at the feed's full length.
    pub(super) synced: [bool; 3],
    /// The nodes each node was ever connected to.
    pub(super) connected: [HashSet<usize>; 3],
    /// Steps told once only (a connection both sides report, a repeated decision).
    pub(super) told: HashSet<String>,
    /// The feeds whose offer each node was told to have received.
    pub(super) offered: HashSet<(usize, FeedKey)>,
    /// Steps about a feed at a node whose offer event has not come yet: the policy
    /// decides (and the store accepts and downloads) before the session layer's
    /// `Offered` event reaches the subscriber, so these wait for it to be told in the
    /// order they happened in.
    pub(super) waiting: Vec<(usize, FeedKey, Step)>,
}

impl<F: FnMut(&Step)> Story<F> {
    pub(super) fn tell(&mut self, step: Step) {
        (self.on_step)(&step);
    }

    pub(super) fn once(&mut self, key: String, step: Step) {
        if self.told.insert(key) {
            self.tell(step);
        }
    }

    /// Tells a step about `feed` at `node` once its offer was told.
    pub(super) fn after_offer(&mut self, node: usize, feed: FeedKey, step: Step) {
        if self.offered.contains(&(node, feed)) {
            self.tell(step);
        } else {
            self.waiting.push((node, feed, step));
        }
    }

    /// Tells the waiting steps whose offer was told (every one with `all`).
    pub(super) fn flush(&mut self, all: bool) {
        let waiting = std::mem::take(&mut self.waiting);
        for (node, feed, step) in waiting {
            self.after_offer(node, feed, step);
        }
        if all {
            for (_, _, step) in std::mem::take(&mut self.waiting) {
                self.tell(step);
            }
        }
    }

    pub(super) fn index(&self, key: &replic8_node::PeerKey) -> Option<usize> {
        self.keys.iter().position(|k| k == key)
    }

    pub(super) fn name(&self, key: &replic8_node::PeerKey) -> String {
        match self.index(key) {
            Some(i) => NAMES[i].to_owned(),
            None => format!("peer {}", key.fmt_short()),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.synced[READER_1] && self.synced[READER_2]
    }

    pub(super) fn handle(&mut self, input: Input) {
        match input {
            Input::Decision(node, headers, accepted) => {
                let feed = self
                    .shared
                    .iter()
                    .find(|(_, h)| *h == headers)
                    .map(|(key, _)| *key)
                    .unwrap_or(FeedKey([0; 32]));
                let value = String::from_utf8_lossy(headers.get(POLICY_HEADER.0).unwrap_or(b""))
                    .into_owned();
                let (want_key, want_value) = POLICY_HEADER;
                let reason = if accepted {
                    format!("{want_key}={value}: the policy accepts {want_key}={want_value}")
                } else {
                    format!("{want_key}={value}: the policy accepts only {want_key}={want_value}")
                };
                if self
                    .told
                    .insert(format!("decision {node} {feed:?} {accepted}"))
                {
                    let step = Step::Decision {
                        node: NAMES[node].to_owned(),
                        feed: step_feed(&feed, &headers),
                        accepted,
                        reason,
                    };
                    self.after_offer(node, feed, step);
                }
            }
            Input::Event(node, event) => self.handle_event(node, event),
        }
    }

    pub(super) fn handle_event(&mut self, node: usize, event: NodeEvent) {
        let who = NAMES[node].to_owned();
        match event {
            NodeEvent::PeerUp { key, addr, .. } => {
                let other = self.index(&key);
                if let Some(other) = other {
                    self.connected[node].insert(other);
                }
                let pair = match other {
                    Some(o) => format!("up {} {}", node.min(o), node.max(o)),
                    None => format!("up {node} {key}"),
                };
                let peer = self.name(&key);
                self.once(
                    pair,
                    Step::Connected {
                        node: who,
                        peer,
                        addr,
                    },
                );
            }
            NodeEvent::Offered {
                peer,
                namespace,
                feeds,
            } => {
                let peer = self.name(&peer);
                let told = feeds.iter().map(|(k, h)| step_feed(k, h)).collect();
                self.tell(Step::Offer {
                    node: who,
                    peer,
                    namespace,
                    feeds: told,
                });
                self.offered
                    .extend(feeds.iter().map(|(key, _)| (node, *key)));
                self.flush(false);
            }
            NodeEvent::FeedAccepted {
                peer,
                namespace,
                feed,
            } => {
                let forwarded = self.index(&peer) != Some(WRITER);
                let peer = self.name(&peer);
                let step = Step::Accepted {
                    node: who,
                    peer,
                    namespace,
                    feed: hex::encode(feed.0),
                    forwarded,
                };
                self.after_offer(node, feed, step);
            }
            NodeEvent::Downloaded {
                peer, feed, bytes, ..
            } if feed == self.feed => {
                self.received[node] = (self.received[node] + bytes).min(self.bytes);
                let peer = self.name(&peer);
                let step = Step::Progress {
                    node: who,
                    peer,
                    feed: hex::encode(feed.0),
                    bytes: self.received[node],
                    total: self.bytes,
                };
                self.after_offer(node, feed, step);
            }
            NodeEvent::FeedSynced { peer, feed, length }
                if feed == self.feed && length == self.blocks && node != WRITER =>
            {
                self.synced[node] = true;
                let peer_name = self.name(&peer);
                if self.told.insert(format!("synced {node} {peer}")) {
                    let step = Step::Synced {
                        node: who,
                        peer: peer_name,
                        feed: hex::encode(feed.0),
                        length,
                    };
                    self.after_offer(node, feed, step);
                }
            }
            _ => {}
        }
    }
}
