//! Embedding replic8: two nodes on a private DHT (127.0.0.1 only) find each other by a
//! feed's discovery key; one writes and shares the feed, the other accepts and follows it.
//!
//! Run: `cargo run -p replic8-node --example embed`

use replic8_node::{Headers, JoinOptions, NamespacePolicy, Node, NodeEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let testnet = replic8_node::KrpcTestnet::new(4)?;
    let node = || {
        Node::builder()
            .in_memory()
            .listen(([127, 0, 0, 1], 0).into())
            .testnet(&testnet.bootstrap)
            .lan(false)
    };
    let writer = node().spawn().await?;
    let reader = node().spawn().await?;

    let feed = writer.create_feed().await?;
    writer
        .append(feed, vec![b"hello".to_vec(), b"world".to_vec()])
        .await?;
    let mut headers = Headers::new();
    headers.insert("title", b"greetings".to_vec())?;
    writer.share("examples", feed, headers).await?;
    reader
        .open_namespace("examples", None, NamespacePolicy::accept_all())
        .await?;

    let mut events = reader.subscribe();
    writer.join_feed(feed, JoinOptions::default()).await?;
    reader.join_feed(feed, JoinOptions::default()).await?;
    while let Ok(event) = events.recv().await {
        match event {
            NodeEvent::PeerUp { key, addr, .. } => {
                println!("connected to {} at {addr}", key.fmt_short())
            }
            NodeEvent::Offered { feeds, .. } => println!("offered {} feed(s)", feeds.len()),
            NodeEvent::FeedSynced {
                feed: f, length, ..
            } if f == feed && length == 2 => break,
            _ => {}
        }
    }
    for block in reader.read(feed, 0..2).await? {
        println!("{}", String::from_utf8_lossy(&block));
    }
    writer.close().await;
    reader.close().await;
    Ok(())
}
