//! `ConnManager` over real loopback sockets: authentication, dedup, restart, policy,
//! shutdown. Every test waits for the event that proves its step.

use crate::util;

use std::time::Duration;

use replic8_connmgr::{
    tls, Ban, Close, DialError, DownReason, Identity, Initiator, Peers, RefuseReason,
    RefusedReason, Shutdown, Stats, CLOSE_SHUTDOWN,
};
use util::*;

#[test]
fn mutual_auth_learns_the_key_both_ways() {
    run(|| async {
        let mut a = Node::spawn("a", Identity::generate()).await;
        let mut b = Node::spawn("b", Identity::generate()).await;
        let got = a.dial(b.addr(), None).await.expect("dial");
        assert_eq!(got, b.key(), "dial reports the key the peer proved");
        let up_a = a.peer_up(b.key()).await;
        let up_b = b.peer_up(a.key()).await;
        assert_eq!(up_a.initiator, Initiator::Local);
        assert_eq!(up_b.initiator, Initiator::Remote);
        assert_eq!(tls::peer_key(&up_a.connection), Ok(b.key()));
        assert_eq!(tls::peer_key(&up_b.connection), Ok(a.key()));
        assert_eq!(up_a.addr, b.addr());
        // Traffic both ways on the one connection.
        send_uni(&up_a.connection, b"ping").await.expect("send");
        assert_eq!(recv_uni(&up_b.connection).await.expect("recv"), b"ping");
        send_uni(&up_b.connection, b"pong").await.expect("send");
        assert_eq!(recv_uni(&up_a.connection).await.expect("recv"), b"pong");
        let peers = a.handle.addr().send(Peers).await.expect("peers");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].key, b.key());
        assert_eq!(peers[0].initiator, Initiator::Local);
        assert!(peers[0].bytes_sent > 0 && peers[0].bytes_received > 0);
        assert!(peers[0].rtt > Duration::ZERO);
        // Dialing a connected key again makes no new connection.
        assert_eq!(a.dial(b.addr(), Some(b.key())).await, Ok(b.key()));
        assert_eq!(a.handle.addr().send(Peers).await.expect("peers").len(), 1);
        let stats = a.handle.addr().send(Stats).await.expect("stats");
        assert_eq!(
            (stats.peers, stats.dials_started, stats.dials_failed),
            (1, 1, 0)
        );
        assert!(stats.bytes_sent >= peers[0].bytes_sent && stats.bytes_received > 0);
        drop((up_a, up_b));
        a.close().await;
        b.close().await;
    });
}

#[test]
fn pinned_key_mismatch_fails_the_handshake() {
    run(|| async {
        let a = Node::spawn("a", Identity::generate()).await;
        let mut b = Node::spawn("b", Identity::generate()).await;
        let other = Identity::generate().key();
        let err = a.dial(b.addr(), Some(other)).await.expect_err("must fail");
        match &err {
            DialError::KeyMismatch(m) => {
                assert_eq!(m.expected, other);
                assert_eq!(m.actual, b.key());
            }
            e => panic!("expected a key mismatch, got {e:?}"),
        }
        assert!(err.to_string().contains("peer key mismatch"), "{err}");
        // The server saw the handshake fail; nobody went up.
        let refused = b.refused().await;
        assert!(
            matches!(refused.reason, RefusedReason::Handshake(_)),
            "{refused:?}"
        );
        assert!(a.handle.addr().send(Peers).await.expect("peers").is_empty());
        assert!(b.handle.addr().send(Peers).await.expect("peers").is_empty());
        a.close().await;
        b.close().await;
    });
}

#[test]
fn simultaneous_dial_converges_50_of_50_and_streams_arrive() {
    run(|| async {
        for round in 0..50 {
            let (gi, si) = ordered_pair();
            let mut g = Node::spawn(&format!("great#{round}"), gi).await;
            let mut s = Node::spawn(&format!("small#{round}"), si).await;
            let (rg, rs) = tokio::join!(
                g.dial(s.addr(), Some(s.key())),
                s.dial(g.addr(), Some(g.key()))
            );
            assert_eq!(rg, Ok(s.key()), "round {round}");
            assert_eq!(rs, Ok(g.key()), "round {round}");
            // Right after dialing, each side opens a stream on the connection it was given.
            let up_g = g.peer_up(s.key()).await;
            let up_s = s.peer_up(g.key()).await;
            let (sent_g, sent_s) = tokio::join!(
                send_uni(&up_g.connection, b"from great"),
                send_uni(&up_s.connection, b"from small")
            );
            sent_g.unwrap_or_else(|e| panic!("round {round}: great send: {e}"));
            sent_s.unwrap_or_else(|e| panic!("round {round}: small send: {e}"));
            let got_s = recv_uni(&up_s.connection).await;
            let got_g = recv_uni(&up_g.connection).await;
            assert_eq!(got_s.as_deref(), Ok(&b"from great"[..]), "round {round}");
            assert_eq!(got_g.as_deref(), Ok(&b"from small"[..]), "round {round}");
            // Both kept the connection initiated by the greater key, and only that one.
            assert_eq!(up_g.initiator, Initiator::Local, "round {round}");
            assert_eq!(up_s.initiator, Initiator::Remote, "round {round}");
            assert_eq!(g.handle.addr().send(Peers).await.expect("peers").len(), 1);
            assert_eq!(s.handle.addr().send(Peers).await.expect("peers").len(), 1);
            for ev in g.pending_events().into_iter().chain(s.pending_events()) {
                assert!(
                    !matches!(ev, Ev::Down(_) | Ev::Up(_)),
                    "round {round}: extra {ev:?}"
                );
            }
            drop((up_g, up_s));
            tokio::join!(g.close(), s.close());
        }
    });
}

#[test]
fn restarted_peer_reconnects_at_once() {
    run(|| async {
        // a has the greater key and dials b: that connection wins the key rule, so only
        // the liveness probe can let b's new connection in.
        let (ai, bi) = ordered_pair();
        let mut a = Node::spawn("a", ai).await;
        let b_old = Node::spawn("b-old", bi.clone()).await;
        let relay = Relay::start(b_old.addr(), false).await;
        assert_eq!(a.dial(relay.addr, Some(b_old.key())).await, Ok(b_old.key()));
        let old = a.peer_up(b_old.key()).await;
        // b "crashes": its packets stop, nothing is closed.
        relay.cut();
        let mut b_new = Node::spawn("b-new", bi).await;
        let started = std::time::Instant::now();
        assert_eq!(b_new.dial(a.addr(), Some(a.key())).await, Ok(a.key()));
        let down = a.peer_down(b_new.key()).await;
        assert_eq!(down.reason, DownReason::Replaced);
        assert_eq!(down.connection_id, old.connection.stable_id());
        let up = a.peer_up(b_new.key()).await;
        assert_eq!(up.initiator, Initiator::Remote);
        assert_ne!(up.connection.stable_id(), old.connection.stable_id());
        let up_b = b_new.peer_up(a.key()).await;
        // Far below the 30 s idle timeout that would otherwise free the key.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        send_uni(&up_b.connection, b"back").await.expect("send");
        assert_eq!(recv_uni(&up.connection).await.expect("recv"), b"back");
        drop((old, up, up_b, relay));
        a.close().await;
        b_new.close().await;
        b_old.close().await;
    });
}

#[test]
fn self_dial_is_refused() {
    run(|| async {
        let mut a = Node::spawn("a", Identity::generate()).await;
        assert_eq!(
            a.dial(a.addr(), Some(a.key())).await,
            Err(DialError::Refused(RefuseReason::SelfConnection))
        );
        // Unpinned: the handshake reveals our own key, and both halves refuse it.
        assert_eq!(
            a.dial(a.addr(), None).await,
            Err(DialError::Refused(RefuseReason::SelfConnection))
        );
        let refused = a.refused().await;
        assert_eq!(
            refused.reason,
            RefusedReason::Policy(RefuseReason::SelfConnection)
        );
        assert!(a.handle.addr().send(Peers).await.expect("peers").is_empty());
        a.close().await;
    });
}

#[test]
fn max_peers_refuses_the_next_connection_with_its_reason() {
    run(|| async {
        // b allows one peer; c has the smaller key so its connection is held, and the
        // refusal reaches its dial.
        let (bi, ci) = ordered_pair();
        let mut b = Node::spawn_with("b", bi, |c| c.policy.max_peers = 1).await;
        let a = Node::spawn("a", Identity::generate()).await;
        let c = Node::spawn("c", ci).await;
        assert_eq!(a.dial(b.addr(), Some(b.key())).await, Ok(b.key()));
        b.peer_up(a.key()).await;
        let err = c.dial(b.addr(), Some(b.key())).await.expect_err("refused");
        assert_eq!(err, DialError::RefusedByPeer("too many peers".into()));
        let refused = b.refused().await;
        assert_eq!(refused.key, Some(c.key()));
        assert_eq!(
            refused.reason,
            RefusedReason::Policy(RefuseReason::TooManyPeers(1))
        );
        // Our own dials are refused before any packet is sent.
        assert_eq!(
            b.handle
                .addr()
                .send(replic8_connmgr::Dial {
                    addr: c.addr(),
                    expected_key: None
                })
                .await
                .expect("actor"),
            Err(DialError::Refused(RefuseReason::TooManyPeers(1)))
        );
        // The peer that was there is unaffected.
        assert_eq!(b.handle.addr().send(Peers).await.expect("peers").len(), 1);
        a.close().await;
        b.close().await;
        c.close().await;
    });
}

#[test]
fn banned_key_is_closed_and_refused_until_the_ban_expires() {
    run(|| async {
        let (ai, bi) = ordered_pair();
        let mut a = Node::spawn("a", ai).await;
        // b's backoff after a failure (30 s) and the first ban (60 s) outlast any stall of
        // a loaded machine, so the refusals below cannot race their expiry.
        let mut b = Node::spawn_with("b", bi.clone(), |c| {
            c.policy.backoff = vec![Duration::from_secs(30)];
        })
        .await;
        assert_eq!(b.dial(a.addr(), None).await, Ok(a.key()));
        a.peer_up(b.key()).await;
        let b_key = b.key();
        let ban = move |secs| Ban {
            key: b_key,
            duration: Duration::from_secs(secs),
        };
        assert!(a.handle.addr().send(ban(60)).await.expect("ban"));
        assert_eq!(a.peer_down(b.key()).await.reason, DownReason::Banned);
        let down = b.peer_down(a.key()).await;
        assert!(
            down.reason == DownReason::RefusedByPeer("banned".into()),
            "{down:?}"
        );
        // b backs off from the peer that refused it.
        assert!(matches!(
            b.dial(a.addr(), Some(a.key())).await,
            Err(DialError::Backoff { .. })
        ));
        // a refuses to dial b, and refuses b's key from a fresh socket too (b has the
        // smaller key: its connection is held, then refused).
        assert_eq!(
            a.dial(b.addr(), Some(b.key())).await,
            Err(DialError::Refused(RefuseReason::Banned(b.key())))
        );
        let b2 = Node::spawn("b2", bi).await;
        let err = b2.dial(a.addr(), Some(a.key())).await.expect_err("banned");
        assert_eq!(err, DialError::RefusedByPeer("banned".into()));
        let refused = a.refused().await;
        assert_eq!(
            refused.reason,
            RefusedReason::Policy(RefuseReason::Banned(b.key()))
        );
        // A new ban replaces the old one; after it expires (1 s; b2's backoff after a
        // refusal is at most 1.2 s), b gets in.
        let closed = a.handle.addr().send(ban(1)).await.expect("re-ban");
        assert!(!closed, "no connection of b's key is up to close");
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            match b2.dial(a.addr(), Some(a.key())).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "never let in: {e}");
                    // Paces the retries; the check is the dial's answer.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        a.peer_up(b.key()).await;
        b2.close().await;
        a.close().await;
        b.close().await;
    });
}

#[test]
fn close_on_request_and_shutdown_leave_no_task_and_no_socket() {
    run(|| async {
        let mut a = Node::spawn("a", Identity::generate()).await;
        let mut b = Node::spawn("b", Identity::generate()).await;
        let c = Node::spawn("c", Identity::generate()).await;
        a.dial(b.addr(), None).await.expect("dial b");
        a.dial(c.addr(), None).await.expect("dial c");
        let up = a.peer_up(b.key()).await;
        b.peer_up(a.key()).await;
        a.handle
            .addr()
            .send(Close { key: c.key() })
            .await
            .expect("actor")
            .expect("close c");
        assert_eq!(a.peer_down(c.key()).await.reason, DownReason::Closed);
        assert!(a
            .handle
            .addr()
            .send(Close { key: c.key() })
            .await
            .expect("actor")
            .is_err());
        assert!(a.handle.live_tasks() > 0);
        let local = a.addr();
        drop(up);
        let handle = a.close().await;
        // The peer learns why.
        let down = b.peer_down(handle.key()).await;
        assert!(
            matches!(&down.reason, DownReason::Lost(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == CLOSE_SHUTDOWN),
            "{down:?}"
        );
        assert_eq!(handle.live_tasks(), 0, "tasks left after close");
        assert!(handle.addr().send(Shutdown).await.is_err(), "actor stopped");
        // The socket is released once quinn's driver has seen the last handle go.
        wait_until_unbound(local).await;
        b.close().await;
        c.close().await;
    });
}

#[test]
fn firewall_hook_refuses_by_key_and_address() {
    run(|| async {
        let (bi, ci) = ordered_pair();
        let c_key = ci.key();
        let mut b = Node::spawn_with("b", bi, move |cfg| {
            cfg.policy.firewall = Some(std::sync::Arc::new(move |key, addr| {
                *key != c_key && addr.ip().is_loopback()
            }));
        })
        .await;
        let a = Node::spawn("a", Identity::generate()).await;
        let c = Node::spawn("c", ci).await;
        assert_eq!(a.dial(b.addr(), Some(b.key())).await, Ok(b.key()));
        b.peer_up(a.key()).await;
        assert_eq!(
            c.dial(b.addr(), Some(b.key())).await,
            Err(DialError::RefusedByPeer("firewall".into()))
        );
        let refused = b.refused().await;
        assert_eq!(refused.key, Some(c_key));
        assert_eq!(
            refused.reason,
            RefusedReason::Policy(RefuseReason::Firewall)
        );
        a.close().await;
        b.close().await;
        c.close().await;
    });
}

#[test]
fn alpn_is_configurable_and_must_match() {
    run(|| async {
        let alpn = |name: &[u8]| vec![name.to_vec()];
        let a = Node::spawn_with("a", Identity::generate(), |c| c.alpn = alpn(b"test/2")).await;
        let mut b = Node::spawn_with("b", Identity::generate(), |c| c.alpn = alpn(b"test/2")).await;
        let mut c = Node::spawn_with("c", Identity::generate(), |c| c.alpn = alpn(b"test/1")).await;
        assert_eq!(a.dial(b.addr(), None).await, Ok(b.key()));
        let up = b.peer_up(a.key()).await;
        assert_eq!(
            up.connection
                .handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol),
            Some(b"test/2".to_vec())
        );
        let err = c.dial(b.addr(), None).await.expect_err("alpn mismatch");
        assert!(matches!(err, DialError::Connection(_)), "{err:?}");
        let refused = b.refused().await;
        assert!(
            matches!(refused.reason, RefusedReason::Handshake(_)),
            "{refused:?}"
        );
        assert!(c.pending_events().iter().all(|e| !matches!(e, Ev::Up(_))));
        drop(up);
        a.close().await;
        b.close().await;
        c.close().await;
    });
}

#[test]
fn keep_alive_holds_idle_connections_and_idle_timeout_ends_dead_ones() {
    run(|| async {
        let fast = |c: &mut replic8_connmgr::ConnManagerConfig| {
            c.transport.idle_timeout = Duration::from_secs(1);
            c.transport.keep_alive = Duration::from_millis(250);
        };
        let mut a = Node::spawn_with("a", Identity::generate(), fast).await;
        let b = Node::spawn_with("b", Identity::generate(), fast).await;
        let c = Node::spawn_with("c", Identity::generate(), fast).await;
        let relay = Relay::start(b.addr(), false).await;
        assert_eq!(a.dial(relay.addr, Some(b.key())).await, Ok(b.key()));
        assert_eq!(a.dial(c.addr(), Some(c.key())).await, Ok(c.key()));
        a.peer_up(b.key()).await;
        a.peer_up(c.key()).await;
        let cut_at = std::time::Instant::now();
        relay.cut();
        let down = a.peer_down(b.key()).await;
        assert_eq!(
            down.reason,
            DownReason::Lost(quinn::ConnectionError::TimedOut)
        );
        assert!(
            cut_at.elapsed() >= Duration::from_millis(900),
            "{:?}",
            cut_at.elapsed()
        );
        // c sent nothing either for as long, and is still up thanks to the keep-alives.
        let peers = a.handle.addr().send(Peers).await.expect("peers");
        assert_eq!(
            peers.iter().map(|p| p.key).collect::<Vec<_>>(),
            vec![c.key()]
        );
        drop(relay);
        a.close().await;
        b.close().await;
        c.close().await;
    });
}

#[test]
fn late_duplicate_replaces_the_settled_connection_and_streams_retry_on_the_survivor() {
    run(|| async {
        let (bi, ai) = ordered_pair();
        let mut a = Node::spawn("a", ai).await;
        let mut b = Node::spawn("b", bi).await;
        // a (smaller key) dials: held for the settle window, then up on both sides.
        assert_eq!(a.dial(b.addr(), Some(b.key())).await, Ok(b.key()));
        let old_a = a.peer_up(b.key()).await;
        let old_b = b.peer_up(a.key()).await;
        // Much later b reaches a under another address (a relay) with no key pinned: the
        // new connection is initiated by the greater key and replaces the settled one.
        let relay = Relay::start(a.addr(), false).await;
        assert_eq!(b.dial(relay.addr, None).await, Ok(a.key()));
        let (ka, kb) = (a.key(), b.key());
        for (node, old, other) in [(&mut a, &old_a, kb), (&mut b, &old_b, ka)] {
            let down = node.peer_down(other).await;
            assert_eq!(down.reason, DownReason::Duplicate, "{}", node.name);
            assert_eq!(
                down.connection_id,
                old.connection.stable_id(),
                "{}",
                node.name
            );
        }
        let new_a = a.peer_up(b.key()).await;
        let new_b = b.peer_up(a.key()).await;
        assert_eq!(new_a.initiator, Initiator::Remote);
        assert_eq!(new_b.initiator, Initiator::Local);
        // The old connection is closed as a duplicate: what a session was doing on it
        // fails and is retried on the survivor.
        let closed = old_a.connection.closed().await;
        assert!(
            replic8_connmgr::is_duplicate_close(&closed)
                || closed == quinn::ConnectionError::LocallyClosed,
            "{closed:?}"
        );
        assert!(send_uni(&old_a.connection, b"lost").await.is_err());
        send_uni(&new_a.connection, b"retried").await.expect("send");
        assert_eq!(recv_uni(&new_b.connection).await.expect("recv"), b"retried");
        assert_eq!(a.handle.addr().send(Peers).await.expect("peers").len(), 1);
        drop((old_a, old_b, new_a, new_b, relay));
        a.close().await;
        b.close().await;
    });
}

#[test]
fn an_unreachable_address_times_out_then_backs_off() {
    run(|| async {
        let a = Node::spawn_with("a", Identity::generate(), |c| {
            c.handshake_timeout = Duration::from_millis(300);
        })
        .await;
        // A socket that never answers.
        let silent = std::net::UdpSocket::bind(loopback()).expect("bind");
        let addr = silent.local_addr().expect("addr");
        assert_eq!(a.dial(addr, None).await, Err(DialError::Timeout));
        match a.dial(addr, None).await {
            Err(DialError::Backoff { retry_in }) => {
                assert!(retry_in <= Duration::from_millis(1200), "{retry_in:?}")
            }
            other => panic!("expected backoff, got {other:?}"),
        }
        let stats = a.handle.addr().send(Stats).await.expect("stats");
        assert_eq!((stats.dials_started, stats.dials_failed), (1, 2));
        a.close().await;
    });
}

/// A client that closes its connection before sending anything: its first packet is the
/// CONNECTION_CLOSE, in an Initial packet. The dial runs on a current-thread runtime of
/// its own, so quinn's driver cannot send the real Initial before the close is queued.
fn dial_closed_before_the_first_packet(target: std::net::SocketAddr) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let endpoint = quinn::Endpoint::client(loopback()).expect("client endpoint");
            let config = tls::test_support::quinn_client_config(
                &Identity::generate(),
                &[replic8_connmgr::DEFAULT_ALPN.to_vec()],
                None,
            )
            .expect("client config");
            let connecting = endpoint
                .connect_with(config, target, tls::SERVER_NAME)
                .expect("connect");
            endpoint.close(0u32.into(), b"gone");
            drop(connecting);
            // Lets the driver send the close; the client's own drain is not our concern.
            let _ = tokio::time::timeout(GUARD, endpoint.wait_idle()).await;
        });
    })
    .join()
    .expect("client thread");
}

#[test]
fn a_peer_that_closes_before_its_first_packet_holds_neither_close_nor_the_socket() {
    run(|| async {
        // quinn keeps such a connection until the idle timeout (decision 156): a long one
        // makes a close that waited for it fail the guard.
        let mut x = Node::spawn_with("x", Identity::generate(), |c| {
            c.transport.idle_timeout = Duration::from_secs(600);
        })
        .await;
        let local = x.addr();
        dial_closed_before_the_first_packet(local);
        let refused = x.refused().await;
        assert_eq!(refused.initiator, Initiator::Remote, "{refused:?}");
        let handle = x.close().await;
        assert_eq!(handle.live_tasks(), 0, "tasks left after close");
        wait_until_unbound(local).await;
    });
}

/// Waits until `local` can be bound again (the closed manager's socket is gone).
async fn wait_until_unbound(local: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while std::net::UdpSocket::bind(local).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "socket {local} still bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
