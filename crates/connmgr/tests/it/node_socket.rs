//! `NodeSocket` over loopback: KRPC datagrams go to the DHT's port and QUIC packets to
//! quinn on the one socket, and two endpoints whose only path is their `VirtualPaths`
//! (piped by the test, standing in for a relay) complete the real handshake and move data.

use std::future::poll_fn;
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::udp::RecvMeta;
use quinn::AsyncUdpSocket;
use replic8_connmgr::socket::{endpoint_config, unmap, KrpcPort, NodeSocket, VirtualPaths};
use replic8_connmgr::tls::{self, test_support::quinn_client_config};
use replic8_connmgr::{transport, Identity, DEFAULT_ALPN};

/// Guard on each wait; never the check itself.
const GUARD: Duration = Duration::from_secs(20);

/// A KRPC ping as a Mainline node sends it.
const PING: &[u8] = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";

fn loopback_socket() -> UdpSocket {
    transport::bind_udp((Ipv4Addr::LOCALHOST, 0).into(), None).expect("bind")
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The next datagram quinn would read from `socket`.
async fn quinn_reads(socket: &NodeSocket) -> (Vec<u8>, SocketAddr) {
    let mut storage = vec![0u8; 64 * 1024];
    let mut meta = [RecvMeta::default()];
    let n = within(
        "a datagram for quinn",
        poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut storage)];
            socket.poll_recv(cx, &mut bufs, &mut meta)
        }),
    )
    .await
    .expect("recv");
    assert_eq!(n, 1);
    (storage[..meta[0].len].to_vec(), meta[0].addr)
}

#[tokio::test]
async fn krpc_goes_to_the_dht_and_quic_to_quinn() {
    let paths = VirtualPaths::new(8, 8);
    let (socket, port) = NodeSocket::new(loopback_socket(), paths.clone(), true).expect("socket");
    let KrpcPort {
        mut incoming,
        sender,
    } = port.expect("a krpc port");
    let to = socket.real_addr();
    assert_eq!(sender.local_addr(), to);
    assert!(sender.ipv4() && !sender.ipv6());
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind peer");
    let peer_addr = peer.local_addr().expect("addr");

    // A short header whose first byte is 'd' (0x64) and whose connection id does not
    // start with a digit, as ours never do; then a long header; then a KRPC query.
    let short = [0x64, 0xb3, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
    let long = [0xc3, b'1', 0, 0, 0, 1];
    peer.send_to(&short, to).expect("send");
    peer.send_to(&long, to).expect("send");
    peer.send_to(PING, to).expect("send");

    let (bytes, from) = quinn_reads(&socket).await;
    assert_eq!(bytes, short);
    // quinn sees IPv6 only: IPv4 peers IPv4-mapped.
    assert!(from.is_ipv6());
    assert_eq!(unmap(from), peer_addr);
    assert_eq!(quinn_reads(&socket).await.0, long);
    // The socket is read when quinn reads it (its endpoint driver always does).
    let (krpc, from) = tokio::select! {
        krpc = within("the ping at the dht", incoming.recv()) => krpc.expect("port open"),
        quic = quinn_reads(&socket) => panic!("quinn got the ping: {quic:?}"),
    };
    assert_eq!(&krpc[..], PING);
    assert_eq!(from, peer_addr, "plain IPv4 for the DHT");

    // The DHT answers on the same socket; the peer sees it come from the QUIC port.
    within(
        "the dht's send",
        sender.send_to(
            b"d1:rd2:id20:abcdefghij0123456789e1:t2:aa1:y1:re",
            peer_addr,
        ),
    )
    .await
    .expect("send");
    let mut buf = [0u8; 256];
    peer.set_read_timeout(Some(GUARD)).expect("timeout");
    let (n, from) = peer.recv_from(&mut buf).expect("the answer");
    assert_eq!(from, to);
    assert!(buf[..n].starts_with(b"d1:r"));

    // Injected packets come out as if received from their virtual address.
    let circuit = VirtualPaths::address(7);
    assert!(paths.inject(circuit, Bytes::from_static(&[0x45, 0xa0, 1, 2])));
    assert_eq!(
        quinn_reads(&socket).await,
        (vec![0x45, 0xa0, 1, 2], circuit)
    );
    assert_eq!(socket.krpc_dropped(), 0);
}

#[tokio::test]
async fn without_a_krpc_port_krpc_datagrams_are_dropped_not_given_to_quinn() {
    let (socket, port) =
        NodeSocket::new(loopback_socket(), VirtualPaths::new(1, 1), false).expect("socket");
    assert!(port.is_none());
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind peer");
    peer.send_to(PING, socket.real_addr()).expect("send");
    peer.send_to(&[0x41, 0xa0], socket.real_addr())
        .expect("send");
    // Datagrams on loopback arrive in order: the ping was read (and dropped) first.
    assert_eq!(quinn_reads(&socket).await.0, [0x41, 0xa0]);
    assert_eq!(socket.krpc_dropped(), 1);
}

/// quinn batches up to 10 datagrams per send; 10 of a jumbo frame's payload are more than
/// one UDP send takes (65,507 bytes), so the socket sends them in parts, and every one
/// arrives.
#[tokio::test]
async fn a_batch_of_large_datagrams_above_one_send_arrives_whole() {
    let (socket, _) =
        NodeSocket::new(loopback_socket(), VirtualPaths::new(1, 1), false).expect("socket");
    if socket.max_transmit_segments() < 10 {
        // No segmentation offload here: quinn never makes such a batch.
        return;
    }
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind peer");
    let segment = usize::from(transport::LOCAL_MAX_UDP_PAYLOAD);
    let contents: Vec<u8> = (0..10 * segment).map(|i| (i / segment) as u8).collect();
    let transmit = quinn::udp::Transmit {
        destination: peer.local_addr().expect("addr"),
        ecn: None,
        contents: &contents,
        segment_size: Some(segment),
        src_ip: None,
    };
    let mut poller = socket.clone().create_io_poller();
    loop {
        match socket.try_send(&transmit) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                within(
                    "a writable socket",
                    poll_fn(|cx| poller.as_mut().poll_writable(cx)),
                )
                .await
                .expect("writable");
            }
            result => break result.expect("send"),
        }
    }
    peer.set_read_timeout(Some(GUARD)).expect("timeout");
    let mut buf = vec![0u8; 65536];
    for i in 0..10u8 {
        let (n, _) = peer
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of 10: {e}"));
        assert_eq!(n, segment, "datagram {i}");
        assert!(buf[..n].iter().all(|&b| b == i), "datagram {i}");
    }
}

/// An endpoint on a `NodeSocket` with the real TLS for `identity`.
fn endpoint(identity: &Identity, paths: &VirtualPaths) -> (quinn::Endpoint, Option<KrpcPort>) {
    let (socket, port) = NodeSocket::new(loopback_socket(), paths.clone(), true).expect("socket");
    let alpn = vec![DEFAULT_ALPN.to_vec()];
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        tls::server_config(identity, &alpn).expect("server tls"),
    ));
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(transport::WIDE_MAX_UDP_PAYLOAD),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("endpoint");
    (endpoint, port)
}

/// Carries what `from` sends to virtual addresses into `to`, as coming from `as_seen`
/// (a relay would do this over its connections).
/// Returns the task and the number of packets it carried.
fn pipe(
    from: &VirtualPaths,
    to: VirtualPaths,
    as_seen: SocketAddr,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let mut outgoing = from.take_outgoing().expect("outgoing");
    let carried = Arc::new(AtomicU64::new(0));
    let count = carried.clone();
    let task = tokio::spawn(async move {
        while let Some((_, packet)) = outgoing.recv().await {
            count.fetch_add(1, Ordering::Relaxed);
            to.inject(as_seen, packet);
        }
    });
    (task, carried)
}

#[tokio::test]
async fn two_endpoints_connect_and_move_data_through_virtual_paths_only() {
    let (a_id, b_id) = (Identity::generate(), Identity::generate());
    let (a_paths, b_paths) = (VirtualPaths::new(256, 256), VirtualPaths::new(256, 256));
    let (a, _a_krpc) = endpoint(&a_id, &a_paths);
    let (b, _b_krpc) = endpoint(&b_id, &b_paths);
    // a reaches b on circuit 1; b sees a on circuit 2.
    let (b_at_a, a_at_b) = (VirtualPaths::address(1), VirtualPaths::address(2));
    let (a_to_b, a_sent) = pipe(&a_paths, b_paths.clone(), a_at_b);
    let (b_to_a, b_sent) = pipe(&b_paths, a_paths.clone(), b_at_a);

    let alpn = vec![DEFAULT_ALPN.to_vec()];
    let client = quinn_client_config(&a_id, &alpn, Some(b_id.key())).expect("client tls");
    let dial = a
        .connect_with(client, b_at_a, tls::SERVER_NAME)
        .expect("connect");
    let accept = async {
        let incoming = b.accept().await.expect("incoming");
        assert_eq!(incoming.remote_address(), a_at_b);
        incoming.await.expect("accept")
    };
    let (a_conn, b_conn) = within("the handshake", async { tokio::join!(dial, accept) }).await;
    let a_conn = a_conn.expect("dial");
    assert_eq!(tls::peer_key(&a_conn), Ok(b_id.key()));
    assert_eq!(tls::peer_key(&b_conn), Ok(a_id.key()));
    assert_eq!(a_conn.remote_address(), b_at_a);

    // A megabyte one way, its length back the other.
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = async move {
        let (mut send, mut recv) = a_conn.open_bi().await.expect("open");
        send.write_all(&sent).await.expect("write");
        send.finish().expect("finish");
        let echo = recv.read_to_end(16).await.expect("read echo");
        (a_conn, echo)
    };
    let reader = async {
        let (mut send, mut recv) = b_conn.accept_bi().await.expect("accept stream");
        let got = recv.read_to_end(2 << 20).await.expect("read");
        send.write_all(&(got.len() as u64).to_be_bytes())
            .await
            .expect("write");
        send.finish().expect("finish");
        got
    };
    let ((a_conn, echo), got) =
        within("the transfer", async { tokio::join!(writer, reader) }).await;
    assert_eq!(got, data);
    assert_eq!(echo, (data.len() as u64).to_be_bytes());

    a_conn.close(0u32.into(), b"done");
    within("a closes", a.wait_idle()).await;
    within("b closes", b.wait_idle()).await;
    a_to_b.abort();
    b_to_a.abort();
    // Every packet went through the pipes: a megabyte is more than 700 packets.
    let (a_sent, b_sent) = (
        a_sent.load(Ordering::Relaxed),
        b_sent.load(Ordering::Relaxed),
    );
    assert!(
        a_sent > 700 && b_sent > 0,
        "carried {a_sent} and {b_sent} packets"
    );
}

#[tokio::test]
async fn quic_and_krpc_share_one_port_at_once() {
    let (server_id, client_id) = (Identity::generate(), Identity::generate());
    let (server, krpc) = endpoint(&server_id, &VirtualPaths::new(1, 1));
    let mut krpc = krpc.expect("krpc port");
    let server_addr = unmap(server.local_addr().expect("addr"));
    let client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).expect("client");
    let dht_peer = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let dht_addr = dht_peer.local_addr().expect("addr");

    let alpn = vec![DEFAULT_ALPN.to_vec()];
    let config = quinn_client_config(&client_id, &alpn, Some(server_id.key())).expect("tls");
    let dial = client
        .connect_with(config, server_addr, tls::SERVER_NAME)
        .expect("connect");
    let accept = async {
        server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("accept")
    };
    // KRPC queries interleaved with the handshake, then their answers.
    let krpc_side = async {
        for _ in 0..20 {
            dht_peer.send_to(PING, server_addr).await.expect("send");
            let (ping, from) = krpc.incoming.recv().await.expect("port open");
            assert_eq!((&ping[..], from), (PING, dht_addr));
            krpc.sender
                .send_to(b"d1:y1:re", dht_addr)
                .await
                .expect("answer");
            let mut buf = [0u8; 64];
            let (n, from) = dht_peer.recv_from(&mut buf).await.expect("recv");
            assert_eq!((&buf[..n], from), (&b"d1:y1:re"[..], server_addr));
        }
    };
    let (dialed, accepted, ()) = within("handshake and krpc", async {
        tokio::join!(dial, accept, krpc_side)
    })
    .await;
    let dialed = dialed.expect("dial");
    assert_eq!(tls::peer_key(&dialed), Ok(server_id.key()));
    assert_eq!(
        unmap(accepted.remote_address()),
        client.local_addr().expect("addr")
    );
    dialed.close(0u32.into(), b"done");
    within("idle", client.wait_idle()).await;
}

#[tokio::test]
async fn a_socket_carries_the_families_its_address_allows() {
    let families = |addr: SocketAddr| {
        let socket = transport::bind_udp(addr, None).expect("bind");
        let (socket, _) = NodeSocket::new(socket, VirtualPaths::new(1, 1), false).expect("socket");
        socket.families()
    };
    let v4 = families((Ipv4Addr::LOCALHOST, 0).into());
    assert!(v4.ipv4 && !v4.ipv6, "{v4:?}");
    // An IPv6 address as a source has no IPv4 counterpart.
    let v6 = families((std::net::Ipv6Addr::LOCALHOST, 0).into());
    assert!(!v6.ipv4 && v6.ipv6, "{v6:?}");
    // `bind_udp` makes `::` dual-stack where the OS allows it (Linux does by default).
    let dual = families((std::net::Ipv6Addr::UNSPECIFIED, 0).into());
    assert!(dual.ipv6, "{dual:?}");
    let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().expect("addr");
    assert!(v4.carries(mapped) && !v6.carries(mapped));
    assert!(dual.carries(mapped) == dual.ipv4);
}
