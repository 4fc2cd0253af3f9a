//! `events`: the node's [`NodeEvent`]s as JSON lines, as they happen.

use replic8_connmgr::NatEvent;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::{Answer, STREAM_QUEUE};
use replic8_node::node::NodeHandle;
use replic8_node::{NodeEvent, Topic};

/// A stream of the node's events from now on. A client that reads too slowly for the
/// node's event buffer gets a `lagged` line saying how many it missed, then the rest.
pub(super) fn stream(node: &NodeHandle) -> Answer {
    stream_with(node.subscribe(), Vec::new(), |event| Some(to_json(event)))
}

/// A stream of `first`, then of what arrives on `events` that `line` turns into a line.
/// Subscribe before taking `first`, so that nothing falls between (an item may show in
/// both, never in neither).
pub(super) fn stream_with<T: Clone + Send + 'static>(
    mut events: broadcast::Receiver<T>,
    first: Vec<Value>,
    line: impl Fn(&T) -> Option<Value> + Send + 'static,
) -> Answer {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(async move {
        for item in first {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        loop {
            let line = match events.recv().await {
                Ok(event) => match line(&event) {
                    Some(line) => line,
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    json!({ "event": "lagged", "missed": missed })
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            // The client hung up (the server dropped the receiver): stop.
            if tx.send(Ok(line)).await.is_err() {
                break;
            }
        }
    });
    Answer::Stream(rx)
}

/// `join --watch`: `joined`, then a `peer_up` or `peer_down` line per connection that
/// comes up or goes down, and a `lookup_done` line (with the peers found for the topic)
/// once the first announce and lookup round finished, until the client hangs up or the
/// topic is left.
pub(super) fn watch_join(
    node: &NodeHandle,
    topic: Topic,
    mut events: broadcast::Receiver<NodeEvent>,
    joined: Value,
) -> Answer {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let node = node.clone();
    tokio::spawn(async move {
        if tx.send(Ok(joined)).await.is_err() {
            return;
        }
        let flushed = node.flushed(topic);
        tokio::pin!(flushed);
        let mut round_done = false;
        loop {
            let line = tokio::select! {
                event = events.recv() => match event {
                    Ok(event @ (NodeEvent::PeerUp { .. } | NodeEvent::PeerDown { .. })) => {
                        to_json(&event)
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        json!({ "event": "lagged", "missed": missed })
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                done = &mut flushed, if !round_done => {
                    round_done = true;
                    if let Err(e) = done {
                        let _ = tx.send(Err(e.to_string())).await;
                        return;
                    }
                    let found = node
                        .topics()
                        .await
                        .ok()
                        .and_then(|topics| topics.into_iter().find(|t| t.topic == topic))
                        .map_or(0, |t| t.peers_found);
                    json!({ "event": "lookup_done", "topic": topic.to_hex(), "peers_found": found })
                }
                () = tx.closed() => return,
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    Answer::Stream(rx)
}

fn key(bytes: &[u8; 32]) -> String {
    hex::encode(bytes)
}

/// One event as a JSON object: `event` names it (snake case), keys are hex, reasons
/// are the text the node logs.
pub(crate) fn to_json(event: &NodeEvent) -> Value {
    match event {
        NodeEvent::PeerUp {
            key: peer,
            addr,
            initiator,
        } => json!({
            "event": "peer_up",
            "peer": key(peer.as_bytes()),
            "addr": addr.to_string(),
            "initiator": format!("{initiator:?}").to_lowercase(),
        }),
        NodeEvent::PeerDown { key: peer, reason } => json!({
            "event": "peer_down",
            "peer": key(peer.as_bytes()),
            "reason": reason.to_string(),
        }),
        NodeEvent::SessionUp { peer } => json!({
            "event": "session_up",
            "peer": key(peer.as_bytes()),
        }),
        NodeEvent::Offered {
            peer,
            namespace,
            feeds,
        } => json!({
            "event": "offered",
            "peer": key(peer.as_bytes()),
            "namespace": namespace,
            "feeds": feeds.iter().map(|(feed, headers)| json!({
                "feed": key(&feed.0),
                "headers": headers_json(headers),
            })).collect::<Vec<_>>(),
        }),
        NodeEvent::Accepted {
            peer,
            namespace,
            feeds,
        } => json!({
            "event": "accepted",
            "peer": key(peer.as_bytes()),
            "namespace": namespace,
            "feeds": feeds.iter().map(|f| key(&f.0)).collect::<Vec<_>>(),
        }),
        NodeEvent::FeedSynced { peer, feed, length } => json!({
            "event": "feed_synced",
            "peer": key(peer.as_bytes()),
            "feed": key(&feed.0),
            "length": length,
        }),
        NodeEvent::FeedAccepted {
            peer,
            namespace,
            feed,
        } => json!({
            "event": "feed_accepted",
            "peer": key(peer.as_bytes()),
            "namespace": namespace,
            "feed": key(&feed.0),
        }),
        NodeEvent::Downloaded {
            peer,
            feed,
            blocks,
            bytes,
        } => json!({
            "event": "downloaded",
            "peer": key(peer.as_bytes()),
            "feed": key(&feed.0),
            "blocks": blocks,
            "bytes": bytes,
        }),
        NodeEvent::SyncFailed { peer, feed, reason } => json!({
            "event": "sync_failed",
            "peer": key(peer.as_bytes()),
            "feed": key(&feed.0),
            "reason": reason,
        }),
        NodeEvent::FeedStopped { peer, feed, reason } => json!({
            "event": "feed_stopped",
            "peer": key(peer.as_bytes()),
            "feed": key(&feed.0),
            "reason": reason,
        }),
        NodeEvent::SessionEnded { peer, reason } => json!({
            "event": "session_ended",
            "peer": key(peer.as_bytes()),
            "reason": reason,
        }),
        NodeEvent::PeerBanned {
            peer,
            reason,
            duration,
        } => json!({
            "event": "peer_banned",
            "peer": key(peer.as_bytes()),
            "reason": reason,
            "seconds": duration.as_secs(),
        }),
        NodeEvent::Nat(nat) => nat_json(nat),
    }
}

/// A NAT event as a JSON object (`event`: `nat_public_addrs`, `nat_type`,
/// `nat_dial_back_asked`, `nat_reachability`, `nat_dial_back_served`, `nat_circuit_up`,
/// `nat_circuit_down`, `nat_relaying`, `nat_punched`, `nat_relay_registered`,
/// `nat_located`, `nat_relayed_dial`).
fn nat_json(event: &NatEvent) -> Value {
    match event {
        NatEvent::PublicAddrs { addrs } => json!({
            "event": "nat_public_addrs",
            "addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        NatEvent::NatType { nat_type } => json!({
            "event": "nat_type",
            "nat_type": nat_type.to_string(),
        }),
        NatEvent::DialBackAsked { peer } => json!({
            "event": "nat_dial_back_asked",
            "peer": key(peer.as_bytes()),
        }),
        NatEvent::Reachability { reachability, peer } => json!({
            "event": "nat_reachability",
            "reachability": reachability.to_string(),
            "peer": key(peer.as_bytes()),
        }),
        NatEvent::CircuitUp { peer, relay } => json!({
            "event": "nat_circuit_up",
            "peer": key(peer.as_bytes()),
            "relay": key(relay.as_bytes()),
        }),
        NatEvent::CircuitDown { peer, reason } => json!({
            "event": "nat_circuit_down",
            "peer": key(peer.as_bytes()),
            "reason": reason.to_string(),
        }),
        NatEvent::Punched { peer, addr, ok } => json!({
            "event": "nat_punched",
            "peer": key(peer.as_bytes()),
            "addr": addr.to_string(),
            "ok": ok,
        }),
        NatEvent::Relaying { opener, target } => json!({
            "event": "nat_relaying",
            "opener": key(opener.as_bytes()),
            "target": key(target.as_bytes()),
        }),
        NatEvent::RelayRegistered { relay, accepted } => json!({
            "event": "nat_relay_registered",
            "relay": key(relay.as_bytes()),
            "accepted": accepted,
        }),
        NatEvent::Located { relay, addr, peers } => json!({
            "event": "nat_located",
            "relay": key(relay.as_bytes()),
            "addr": addr.to_string(),
            "peers": peers.iter().map(|p| key(p.as_bytes())).collect::<Vec<_>>(),
        }),
        NatEvent::RelayedDial { peer, relay, ok } => json!({
            "event": "nat_relayed_dial",
            "peer": key(peer.as_bytes()),
            "relay": key(relay.as_bytes()),
            "ok": ok,
        }),
        NatEvent::DialBackServed {
            peer,
            addr,
            reached,
        } => json!({
            "event": "nat_dial_back_served",
            "peer": key(peer.as_bytes()),
            "addr": addr.to_string(),
            "reached": reached,
        }),
    }
}

/// Headers as a JSON object; a value that is not UTF-8 is given as `hex:...`.
pub(crate) fn headers_json(headers: &replic8_node::Headers) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(k, v)| {
                let text = match std::str::from_utf8(v) {
                    Ok(text) => text.to_owned(),
                    Err(_) => format!("hex:{}", hex::encode(v)),
                };
                (k.to_owned(), Value::String(text))
            })
            .collect(),
    )
}
