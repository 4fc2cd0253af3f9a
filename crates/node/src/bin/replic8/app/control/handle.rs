//! The answers to each [`Request`]: the node's handle turned into JSON.

use serde_json::{json, Value};

use super::{parse_key, Answer, Request};
use replic8_node::node::{JoinOptions, NodeHandle};
use replic8_node::{FeedKey, FeedStoreStats, Headers, Topic};

/// A topic for `join`/`leave`: a held feed's discovery key, else the bytes as a topic.
async fn target_topic(node: &NodeHandle, text: &str) -> Result<(Topic, bool), String> {
    let bytes = parse_key(text)?;
    let feed = FeedKey(bytes);
    if node.open_feed(feed).await.is_ok() {
        Ok((Topic(feed.discovery_key().0), true))
    } else {
        Ok((Topic(bytes), false))
    }
}

/// Answers `req`.
pub(super) async fn handle(node: &NodeHandle, req: Request) -> Result<Answer, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    Ok(Answer::One(match req {
        Request::Events => return Ok(super::events::stream(node)),
        Request::NamespaceOpen { .. }
        | Request::NamespaceList
        | Request::NamespaceClose { .. }
        | Request::Decide { .. }
        | Request::Offers { .. } => return super::namespaces::handle(node, req).await,
        Request::FeedNew => return super::feeds::new(node).await,
        Request::FeedAppendBlocks { .. } | Request::FeedReadBlocks { .. } => {
            return Err("a binary-mode request is served by the connection itself".into())
        }
        Request::FeedInfo { key } => return super::feeds::info(node, &key).await,
        Request::FeedList => return super::feeds::list(node).await,
        Request::FeedGet { key, follow } => return super::feeds::get(node, &key, follow).await,
        Request::Share {
            namespace,
            key,
            headers,
        } => {
            let mut h = Headers::new();
            for (k, v) in headers {
                h.insert(k, v.into_bytes()).map_err(|x| e(&x))?;
            }
            let offered = node
                .share(&namespace, FeedKey(parse_key(&key)?), h)
                .await
                .map_err(|x| e(&x))?;
            json!({ "offered_to": offered })
        }
        Request::Join {
            target,
            announce,
            lookup,
            topic,
            watch,
        } => {
            let (topic, feed) = if topic {
                (Topic(parse_key(&target)?), false)
            } else {
                match target_topic(node, &target).await? {
                    (topic, true) => (topic, true),
                    (_, false) => {
                        return Err(format!(
                            "no feed {} is held here, so its discovery key is unknown; to \
                             join these 64 hex digits as a topic, add --topic",
                            &target[..10.min(target.len())]
                        ))
                    }
                }
            };
            // Subscribed before the join, so that no peer it finds falls before the watch.
            let events = watch.then(|| node.subscribe());
            node.join_in_background(topic, JoinOptions { announce, lookup })
                .await
                .map_err(|x| e(&x))?;
            let joined = json!({ "event": "joined", "topic": topic.to_hex(), "feed": feed });
            match events {
                Some(events) => return Ok(super::events::watch_join(node, topic, events, joined)),
                None => joined,
            }
        }
        Request::Leave { target } => {
            let (topic, feed) = target_topic(node, &target).await?;
            node.leave(topic).await.map_err(|x| e(&x))?;
            json!({ "topic": topic.to_hex(), "feed": feed })
        }
        Request::Peers => {
            let peers = node.peers().await.map_err(|x| e(&x))?;
            Value::Array(
                peers
                    .iter()
                    .map(|p| {
                        json!({
                            "key": hex::encode(p.key.as_bytes()),
                            "addr": p.addr.to_string(),
                            "initiator": format!("{:?}", p.initiator).to_lowercase(),
                            "path": if p.relayed { "relayed" } else { "direct" },
                            "rtt_ms": p.rtt.as_secs_f64() * 1e3,
                            "bytes_sent": p.bytes_sent,
                            "bytes_received": p.bytes_received,
                        })
                    })
                    .collect(),
            )
        }
        Request::Status => {
            let topics = node.topics().await.map_err(|x| e(&x))?;
            let peers = node.peers().await.map_err(|x| e(&x))?;
            let feeds = node.feed_stats().await.map_err(|x| e(&x))?;
            let sessions = node.session_totals().await.map_err(|x| e(&x))?;
            let held = node.feed_totals().await.map_err(|x| e(&x))?;
            let dht = node.dht_status().await.map_err(|x| e(&x))?;
            let nat = node.nat_status().await.map_err(|x| e(&x))?;
            let c = node.counters();
            json!({
                "nat": {
                    "public_addrs": nat.public_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "nat_type": nat.nat_type.to_string(),
                    "reachability": nat.reachability.to_string(),
                    "reporters": nat.reporters,
                    "relays": nat.relays,
                    "registered_with": nat.registered_with,
                    "registered_here": nat.registered_here,
                },
                "dht": dht.map(|d| json!({
                    "id": hex::encode(d.id.0),
                    "addrs": d.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "server": d.server,
                    "nodes_v4": d.nodes_v4,
                    "nodes_v6": d.nodes_v6,
                    "queries_in": d.stats.queries_in,
                    "queries_answered": d.stats.queries_answered,
                    "queries_rate_limited": d.stats.queries_rate_limited,
                    "queries_out": d.stats.queries_out,
                    "responses_in": d.stats.responses_in,
                    "timeouts": d.stats.timeouts,
                    "announces_stored": d.stats.announces_stored,
                    "peers_stored": d.peers_stored,
                    "peers_found": d.peers_found.iter().map(|(ih, n)| json!({
                        "infohash": hex::encode(ih),
                        "peers": n,
                    })).collect::<Vec<_>>(),
                })),
                "key": hex::encode(node.key().as_bytes()),
                "listen": node.local_addr().to_string(),
                "topics": topics.iter().map(|t| json!({
                    "topic": t.topic.to_hex(),
                    "announce": t.announce,
                    "lookup": t.lookup,
                    "flushed": t.flushed,
                    "peers_found": t.peers_found,
                    "peers": t.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "peers": peers.len(),
                "sessions": c.sessions.get(),
                "bytes_in": c.bytes_in.get(),
                "bytes_out": c.bytes_out.get(),
                "blocks_verified": c.blocks_verified.get(),
                "feed_blocks_in": feeds.blocks_in,
                "feed_blocks_out": feeds.blocks_out,
                "feed_streams": feeds.streams,
                "feeds_held": held.feeds,
                "blocks_stored": held.blocks_stored,
                "bytes_stored": held.bytes_stored,
                "feed_bytes_in": feeds.bytes_in,
                "feed_bytes_out": feeds.bytes_out,
                "feed_store": feed_store_json(&feeds),
                "session_totals": {
                    "feeds_sent_whole": sessions.feeds_sent_whole,
                    "feeds_received_whole": sessions.feeds_received_whole,
                },
            })
        }
    }))
}

/// Every counter of the feed store since the daemon started, as `status` shows them
/// under `feed_store`: traffic, streams, what serving holds, open feeds, refusals.
fn feed_store_json(s: &FeedStoreStats) -> Value {
    json!({
        "blocks_in": s.blocks_in,
        "bytes_in": s.bytes_in,
        "blocks_out": s.blocks_out,
        "bytes_out": s.bytes_out,
        "streams": s.streams,
        "open_streams": s.open_streams,
        "stream_tasks": s.stream_tasks,
        "streams_failed": s.streams_failed,
        "serve_stalls": s.serve_stalls,
        "serve_stall_session_ends": s.serve_stall_session_ends,
        "serve_bytes_held": s.serve_bytes_held,
        "serve_bytes_peak": s.serve_bytes_peak,
        "receive_bytes_held": s.receive_bytes_held,
        "receive_bytes_peak": s.receive_bytes_peak,
        "receive_bytes_peer_peak": s.receive_bytes_peer_peak,
        "feeds_held": s.feeds_held,
        "feeds_open": s.feeds_open,
        "feeds_opened": s.feeds_opened,
        "feeds_closed": s.feeds_closed,
        "membership_writes": s.membership_writes,
        "replicas": s.replicas,
        "offers_waiting": s.offers_waiting,
        "refused_policy": s.refused_policy,
        "refused_namespace": s.refused_namespace,
        "refused_quota": s.refused_quota,
    })
}
