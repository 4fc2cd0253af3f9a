//! The greater key's confirmation over real loopback sockets: a connection initiated by
//! the smaller key goes up on the confirmation, not after the settle window, and without
//! a confirmation (a peer that does not send one) the settle window still applies.

use crate::util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use replic8_connmgr::{tls, Initiator, Peers, PolicyConfig, Stats, DEFAULT_ALPN};
use util::*;

/// Longer than every wait of the tests (`GUARD`): a connection held for it can only go up
/// in time through the confirmation.
const NEVER: Duration = Duration::from_secs(600);

fn settle_never(config: &mut replic8_connmgr::ConnManagerConfig) {
    config.policy = PolicyConfig {
        settle_window: NEVER,
        dial_wait: NEVER,
        ..PolicyConfig::default()
    };
}

#[test]
fn smaller_key_dial_goes_up_on_the_greater_keys_confirmation() {
    run(|| async {
        for round in 0..10 {
            let (gi, si) = ordered_pair();
            let mut g = Node::spawn_with(&format!("great#{round}"), gi, settle_never).await;
            let mut s = Node::spawn_with(&format!("small#{round}"), si, settle_never).await;
            // A `Dial` answers when the key is up: with the windows at 10 min, only the
            // confirmation can make that happen within the guard.
            assert_eq!(s.dial(g.addr(), None).await, Ok(g.key()), "round {round}");
            let up_s = s.peer_up(g.key()).await;
            let up_g = g.peer_up(s.key()).await;
            assert_eq!(up_s.initiator, Initiator::Local, "round {round}");
            assert_eq!(up_g.initiator, Initiator::Remote, "round {round}");
            send_uni(&up_s.connection, b"from small")
                .await
                .expect("send");
            assert_eq!(
                recv_uni(&up_g.connection).await.as_deref(),
                Ok(&b"from small"[..])
            );
            send_uni(&up_g.connection, b"from great")
                .await
                .expect("send");
            assert_eq!(
                recv_uni(&up_s.connection).await.as_deref(),
                Ok(&b"from great"[..])
            );
            // The greater side committed: its own dial to that address is answered by the
            // connection it has, and no second one is made.
            assert_eq!(g.dial(s.addr(), None).await, Ok(s.key()), "round {round}");
            assert_eq!(g.dial(s.addr(), Some(s.key())).await, Ok(s.key()));
            let stats = g.handle.addr().send(Stats).await.expect("stats");
            assert_eq!(stats.dials_started, 0, "round {round}");
            assert_eq!(g.handle.addr().send(Peers).await.expect("peers").len(), 1);
            assert_eq!(s.handle.addr().send(Peers).await.expect("peers").len(), 1);
            for ev in g.pending_events().into_iter().chain(s.pending_events()) {
                assert!(
                    !matches!(ev, Ev::Down(_) | Ev::Up(_)),
                    "round {round}: extra {ev:?}"
                );
            }
            drop((up_s, up_g));
            tokio::join!(g.close(), s.close());
        }
    });
}

/// A peer with the greater key that never confirms (an implementation without the rule:
/// here a bare quinn endpoint with the same TLS): the smaller side holds its connection
/// for the whole settle window, then goes up as before.
#[test]
fn without_a_confirmation_the_settle_window_applies() {
    run(|| async {
        let (gi, si) = ordered_pair();
        let server = quinn::ServerConfig::with_crypto(Arc::new(
            tls::server_config(&gi, &[DEFAULT_ALPN.to_vec()]).expect("tls"),
        ));
        let endpoint = quinn::Endpoint::server(server, loopback()).expect("bare endpoint binds");
        let accept = {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let incoming = endpoint.accept().await.expect("incoming");
                incoming.await.expect("handshake")
            })
        };
        let settle = PolicyConfig::default().settle_window;
        let mut s = Node::spawn("small", si).await;
        let started = Instant::now();
        assert_eq!(
            s.dial(endpoint.local_addr().expect("addr"), Some(gi.key()))
                .await,
            Ok(gi.key())
        );
        let up = s.peer_up(gi.key()).await;
        // Held until the window ended (a lower bound: it cannot be earlier).
        assert!(started.elapsed() >= settle, "{:?}", started.elapsed());
        let conn = accept.await.expect("accept task");
        send_uni(&up.connection, b"late but fine")
            .await
            .expect("send");
        assert_eq!(recv_uni(&conn).await.as_deref(), Ok(&b"late but fine"[..]));
        drop((up, conn));
        s.close().await;
        endpoint.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    });
}

/// Both sides dial each other without a pinned key, as the node does on `PeerFound`,
/// sometimes at the same moment, sometimes one a little after the other: both end up on
/// one connection (a stream sent on each side's `PeerUp` connection arrives on the
/// other's), and a close on one side is seen on the other. The windows are 10 min:
/// convergence must not depend on a window ending first (a crossing handshake that
/// finishes late on a loaded machine would otherwise make an extra `PeerUp`/`PeerDown`).
#[test]
fn unpinned_dials_from_both_sides_end_on_one_connection() {
    run(|| async {
        for round in 0..30u64 {
            let (gi, si) = ordered_pair();
            let mut g = Node::spawn_with(&format!("great#{round}"), gi, settle_never).await;
            let mut s = Node::spawn_with(&format!("small#{round}"), si, settle_never).await;
            // Rounds alternate who starts, and how far ahead (0 to 4 ms).
            let lead = Duration::from_millis(round % 5);
            let (first, second) = if round % 2 == 0 { (&g, &s) } else { (&s, &g) };
            let (r1, r2) = tokio::join!(first.dial(second.addr(), None), async {
                tokio::time::sleep(lead).await;
                second.dial(first.addr(), None).await
            });
            assert_eq!(r1, Ok(second.key()), "round {round}");
            assert_eq!(r2, Ok(first.key()), "round {round}");
            let up_g = g.peer_up(s.key()).await;
            let up_s = s.peer_up(g.key()).await;
            send_uni(&up_g.connection, b"g").await.expect("send");
            send_uni(&up_s.connection, b"s").await.expect("send");
            assert_eq!(recv_uni(&up_s.connection).await.as_deref(), Ok(&b"g"[..]));
            assert_eq!(recv_uni(&up_g.connection).await.as_deref(), Ok(&b"s"[..]));
            for ev in g.pending_events().into_iter().chain(s.pending_events()) {
                assert!(
                    !matches!(ev, Ev::Down(_) | Ev::Up(_)),
                    "round {round}: extra {ev:?}"
                );
            }
            let (closer, other) = if round % 2 == 0 {
                (&mut g, &mut s)
            } else {
                (&mut s, &mut g)
            };
            let other_key = other.key();
            closer
                .handle
                .addr()
                .send(replic8_connmgr::Close { key: other_key })
                .await
                .expect("alive")
                .expect("connected");
            let closer_key = closer.key();
            other.peer_down(closer_key).await;
            drop((up_g, up_s));
            tokio::join!(g.close(), s.close());
        }
    });
}

/// The smaller key reaches the greater one at two addresses at once (here: directly and
/// through a UDP relay), as a node may when discovery finds a peer on the DHT and on the
/// LAN. The greater side keeps the first it sees and confirms it; the smaller side waits
/// for that verdict with the other one as a candidate: both keep the same one, neither
/// ever reports the other up, and the windows (10 min here) are never waited for.
#[test]
fn two_addresses_of_one_peer_end_on_the_connection_the_greater_key_confirmed() {
    run(|| async {
        for round in 0..10 {
            let (gi, si) = ordered_pair();
            let mut g = Node::spawn_with(&format!("great#{round}"), gi, settle_never).await;
            let mut s = Node::spawn_with(&format!("small#{round}"), si, settle_never).await;
            let relay = Relay::start(g.addr(), false).await;
            let (direct, relayed) = tokio::join!(s.dial(g.addr(), None), s.dial(relay.addr, None));
            assert_eq!(direct, Ok(g.key()), "round {round}");
            assert_eq!(relayed, Ok(g.key()), "round {round}");
            let up_s = s.peer_up(g.key()).await;
            let up_g = g.peer_up(s.key()).await;
            send_uni(&up_s.connection, b"one").await.expect("send");
            assert_eq!(
                recv_uni(&up_g.connection).await.as_deref(),
                Ok(&b"one"[..]),
                "round {round}: not the same connection"
            );
            assert_eq!(s.handle.addr().send(Peers).await.expect("peers").len(), 1);
            assert_eq!(g.handle.addr().send(Peers).await.expect("peers").len(), 1);
            // Two connections were made; wait until the other one is closed as a
            // duplicate (the greater side probes the one it has first).
            let deadline = Instant::now() + GUARD;
            loop {
                let stats_s = s.handle.addr().send(Stats).await.expect("stats");
                let stats_g = g.handle.addr().send(Stats).await.expect("stats");
                assert_eq!(stats_s.dials_started, 2, "round {round}");
                if stats_s.duplicates_closed + stats_g.duplicates_closed >= 1 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no duplicate closed: {stats_s:?} {stats_g:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(s.handle.addr().send(Peers).await.expect("peers").len(), 1);
            assert_eq!(g.handle.addr().send(Peers).await.expect("peers").len(), 1);
            for ev in g.pending_events().into_iter().chain(s.pending_events()) {
                assert!(
                    !matches!(ev, Ev::Down(_) | Ev::Up(_)),
                    "round {round}: extra {ev:?}"
                );
            }
            drop((up_s, up_g));
            // The relay outlives the close, so that the close reaches the relayed side.
            tokio::join!(g.close(), s.close());
            drop(relay);
        }
    });
}
