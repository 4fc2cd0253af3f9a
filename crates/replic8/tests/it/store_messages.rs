//! Any actor that handles the store messages is a store.
#![allow(clippy::unwrap_used)]

use actix::{Actor, Context, Handler};
use replic8::keys::{FeedKey, PeerKey};
use replic8::message::Headers;
use replic8::store::*;

/// A store that is not a feed store: it keeps counters, shares them, and accepts only
/// offers whose `kind` header is `counter`.
#[derive(Debug, Default)]
struct CounterStore {
    counters: Vec<FeedKey>,
    attached: usize,
}

impl Actor for CounterStore {
    type Context = Context<Self>;
}

impl Handler<Shares> for CounterStore {
    type Result = Result<Vec<SharedFeed>, StoreError>;
    fn handle(&mut self, msg: Shares, _: &mut Context<Self>) -> Self::Result {
        if msg.namespace != "counters" {
            return Err(StoreError::UnknownNamespace(msg.namespace));
        }
        let mut headers = Headers::new();
        headers.insert("kind", b"counter".to_vec()).unwrap();
        Ok(self
            .counters
            .iter()
            .map(|key| SharedFeed {
                key: *key,
                headers: headers.clone(),
            })
            .collect())
    }
}

impl Handler<KnownFeeds> for CounterStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, _: KnownFeeds, _: &mut Context<Self>) -> Self::Result {
        Ok(self.counters.clone())
    }
}

impl Handler<Offer> for CounterStore {
    type Result = Result<Vec<FeedKey>, StoreError>;
    fn handle(&mut self, msg: Offer, _: &mut Context<Self>) -> Self::Result {
        let accepted: Vec<FeedKey> = msg
            .feeds
            .iter()
            .filter(|f| f.headers.get("kind") == Some(b"counter"))
            .map(|f| f.key)
            .collect();
        self.counters.extend(&accepted);
        Ok(accepted)
    }
}

impl Handler<Attach> for CounterStore {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: Attach, _: &mut Context<Self>) -> Self::Result {
        self.attached += 1;
        Ok(())
    }
}

impl Handler<Detach> for CounterStore {
    type Result = ();
    fn handle(&mut self, _: Detach, _: &mut Context<Self>) {
        self.attached = self.attached.saturating_sub(1);
    }
}

#[test]
fn a_custom_actor_is_a_store() {
    actix::System::new().block_on(async {
        let addr = CounterStore::default().start();
        let store = StoreRecipients::of(&addr);
        let peer = PeerKey([1; 32]);
        let mut counter = Headers::new();
        counter.insert("kind", b"counter".to_vec()).unwrap();
        let offer = Offer {
            peer,
            namespace: "counters".into(),
            feeds: vec![
                SharedFeed {
                    key: FeedKey([1; 32]),
                    headers: counter.clone(),
                },
                SharedFeed {
                    key: FeedKey([2; 32]),
                    headers: Headers::new(),
                },
            ],
        };
        let accepted = store.offer.send(offer).await.unwrap().unwrap();
        assert_eq!(accepted, vec![FeedKey([1; 32])]);
        let shares = store
            .shares
            .send(Shares {
                peer,
                namespace: "counters".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            shares,
            vec![SharedFeed {
                key: FeedKey([1; 32]),
                headers: counter
            }]
        );
        let err = store
            .shares
            .send(Shares {
                peer,
                namespace: "photos".into(),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.to_string(), "store does not serve namespace \"photos\"");
    });
}
