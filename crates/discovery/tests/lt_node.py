"""libtorrent DHT sessions on 127.0.0.1, driven over stdin/stdout lines (tests/libtorrent.rs).

Run with Debian's python3-libtorrent: /usr/bin/python3 lt_node.py. Commands, one a line:
  start N                  N sessions on 127.0.0.1, any port, that know each other
                           -> "ports P1 P2 ..." once each has the others in its table
  add HOST:PORT ...        every session adds these as DHT nodes (not routers: libtorrent
                           keeps bootstrap routers out of its routing table)
                           -> "added N1 N2 ..." (table sizes) once each has grown
  announce I IH            session I adds a torrent for infohash IH (hex), which announces
                           it on the DHT -> "announced I IH MS" (MS: from its first
                           get_peers to the end of that lookup, as libtorrent logs it)
  get_peers I IH           session I looks up IH -> "peers I IH MS ip:port,..." per reply
                           and "lookup_done I IH MS"
  nodes                    -> "nodes N1 N2 ..." (routing table sizes)
  quit
Events: "stored I ip:port IH" when session I stores an announce.
Every session's DHT answers any number of queries from one IP (all of us are 127.0.0.1:
libtorrent otherwise blocks an IP after 5 queries a second) and routing and searches
accept many nodes per IP.
"""

import os
import queue
import sys
import threading
import time
import warnings

import libtorrent as lt

# session.status() is deprecated in libtorrent 2.0 but is what gives dht_nodes.
warnings.simplefilter("ignore", DeprecationWarning)

sessions = []
commands = queue.Queue()
# Per session: the infohash being announced, when its get_peers started, when added.
announcing = {}
looking = {}
# What must hold before a reply is printed: (predicate, line maker).
waiting = []


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def reader():
    for line in sys.stdin:
        commands.put(line.split())
    commands.put(["quit"])


def start(n):
    for _ in range(n):
        s = lt.session({
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": True,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "dht_bootstrap_nodes": "",
            "dht_restrict_routing_ips": False,
            "dht_restrict_search_ips": False,
            "dht_block_ratelimit": 1000000,
            "alert_mask": lt.alert_category.dht
            | lt.alert_category.dht_operation
            | lt.alert_category.dht_log,
        })
        sessions.append(s)
    ports = [s.listen_port() for s in sessions]
    for i, s in enumerate(sessions):
        for j, p in enumerate(ports):
            if i != j:
                s.add_dht_node(("127.0.0.1", p))
    waiting.append((
        lambda: all(table_size(s) >= n - 1 for s in sessions),
        lambda: "ports " + " ".join(str(p) for p in ports),
    ))


def table_size(s):
    return s.status().dht_nodes


def handle(cmd):
    if cmd[0] == "start":
        start(int(cmd[1]))
    elif cmd[0] == "add":
        before = [table_size(s) for s in sessions]
        for entry in cmd[1:]:
            host, port = entry.rsplit(":", 1)
            for s in sessions:
                s.add_dht_node((host, int(port)))
        waiting.append((
            lambda: all(table_size(s) > b for s, b in zip(sessions, before)),
            lambda: "added " + " ".join(str(table_size(s)) for s in sessions),
        ))
    elif cmd[0] == "announce":
        i, ih = int(cmd[1]), cmd[2]
        atp = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + ih)
        atp.save_path = os.path.join("/tmp", "lt_node_%d_%d" % (os.getpid(), i))
        announcing[i] = [ih, None]
        sessions[i].add_torrent(atp)
    elif cmd[0] == "get_peers":
        i, ih = int(cmd[1]), cmd[2]
        looking[i] = [ih, time.time()]
        sessions[i].dht_get_peers(lt.sha1_hash(bytes.fromhex(ih)))
    elif cmd[0] == "nodes":
        out("nodes " + " ".join(str(table_size(s)) for s in sessions))
    elif cmd[0] == "quit":
        sys.exit(0)


def alerts(i, s):
    for a in s.pop_alerts():
        name = type(a).__name__
        if name == "dht_announce_alert":
            out("stored %d %s:%d %s" % (i, a.ip, a.port, a.info_hash))
        elif name == "dht_outgoing_get_peers_alert":
            ann = announcing.get(i)
            if ann and ann[1] is None and str(a.info_hash) == ann[0]:
                ann[1] = time.time()
        elif name == "dht_get_peers_reply_alert":
            look = looking.get(i)
            if look and str(a.info_hash) == look[0]:
                peers = ",".join("%s:%d" % p for p in a.peers())
                ms = (time.time() - look[1]) * 1000
                out("peers %d %s %.1f %s" % (i, look[0], ms, peers))
        elif name == "dht_log_alert":
            msg = a.message()
            if "COMPLETED" not in msg or "type: get_peers" not in msg:
                continue
            # One lookup per session at a time in these tests: the next one to
            # complete is the one we started.
            ann = announcing.get(i)
            if ann and ann[1] is not None:
                out("announced %d %s %.1f" % (i, ann[0], (time.time() - ann[1]) * 1000))
                del announcing[i]
                continue
            look = looking.pop(i, None)
            if look:
                out("lookup_done %d %s %.1f" % (i, look[0], (time.time() - look[1]) * 1000))


def main():
    threading.Thread(target=reader, daemon=True).start()
    while True:
        try:
            while True:
                handle(commands.get_nowait())
        except queue.Empty:
            pass
        for i, s in enumerate(sessions):
            alerts(i, s)
        for entry in list(waiting):
            if entry[0]():
                out(entry[1]())
                waiting.remove(entry)
        # Alerts are polled (the python binding gives them no timestamp): times above are
        # as exact as this interval, and it is not a wait for a result.
        time.sleep(0.001)


main()
