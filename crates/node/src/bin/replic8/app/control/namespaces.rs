//! `namespace open/list/close`, `accept`/`reject` and `offers`: namespaces opened by the
//! user and the offers peers made in them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::events::headers_json;
use super::parse_key;
use super::{Answer, Request};
use replic8_node::node::{parse_secret, AcceptMode, NamespaceSpec, NodeHandle, OfferRecord};
use replic8_node::FeedKey;

/// Answers the namespace and offer requests.
pub(super) async fn handle(node: &NodeHandle, req: Request) -> Result<Answer, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    Ok(Answer::One(match req {
        Request::NamespaceOpen {
            name,
            secret,
            accept,
            headers,
            forward,
        } => {
            let secret = secret
                .as_deref()
                .map(parse_secret)
                .transpose()
                .map_err(|x| e(&x))?;
            let accept = accept
                .as_deref()
                .map(str::parse::<AcceptMode>)
                .transpose()
                .map_err(|x| e(&x))?;
            let mut wanted = BTreeMap::new();
            for (k, v) in headers {
                if wanted.insert(k.clone(), v).is_some() {
                    return Err(format!("accept header {k:?} is given twice"));
                }
            }
            let spec = NamespaceSpec::new(accept, wanted, forward).map_err(|x| e(&x))?;
            node.open_namespace_spec(&name, secret, spec.clone())
                .await
                .map_err(|x| e(&x))?;
            json!({ "name": name, "policy": spec_json(Some(&spec)) })
        }
        Request::NamespaceList => Value::Array(
            node.namespaces()
                .await
                .iter()
                .map(|ns| {
                    json!({
                        "name": ns.name,
                        "secret": ns.secret,
                        "origin": ns.origin,
                        "policy": spec_json(ns.spec.as_ref()),
                    })
                })
                .collect(),
        ),
        Request::NamespaceClose { name } => {
            node.close_namespace(&name).await.map_err(|x| e(&x))?;
            json!({ "name": name })
        }
        Request::Decide {
            namespace,
            keys,
            accept,
        } => {
            let feeds = keys
                .iter()
                .map(|k| parse_key(k).map(FeedKey))
                .collect::<Result<Vec<_>, _>>()?;
            let told = node
                .decide_offers(&namespace, feeds.clone(), accept)
                .await
                .map_err(|x| e(&x))?;
            Value::Array(
                feeds
                    .iter()
                    .zip(told)
                    .map(|(feed, offers)| json!({ "feed": hex::encode(feed.0), "offers": offers }))
                    .collect(),
            )
        }
        Request::Offers { follow } => {
            if follow {
                return Ok(follow_offers(node));
            }
            Value::Array(node.offers().iter().map(offer_json).collect())
        }
        _ => return Err("not a namespace request".to_owned()),
    }))
}

/// The log, then each decision as it happens (a decision may show twice, never not at
/// all).
fn follow_offers(node: &NodeHandle) -> Answer {
    let decisions = node.subscribe_offers();
    let log = node.offers().iter().map(offer_json).collect();
    super::events::stream_with(decisions, log, |record| Some(offer_json(record)))
}

/// A namespace's policy as JSON (`null`: one that cannot be written down).
fn spec_json(spec: Option<&NamespaceSpec>) -> Value {
    match spec {
        None => Value::Null,
        Some(spec) => json!({
            "accept": spec.accept.as_str(),
            "accept_headers": spec.accept_headers,
            "forward": spec.forward,
        }),
    }
}

/// One offered feed as JSON.
pub(super) fn offer_json(record: &OfferRecord) -> Value {
    json!({
        "at": record.at,
        "peer": hex::encode(record.peer.as_bytes()),
        "namespace": record.namespace,
        "feed": hex::encode(record.feed.0),
        "headers": headers_json(&record.headers),
        "decision": record.decision.as_str(),
    })
}
