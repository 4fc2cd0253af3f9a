//! The `Discovery` actor: finds peers for 32-byte topics.
//!
//! Backends are the BitTorrent Mainline DHT (BEP 5), the local network (mDNS) and static
//! addresses from config. `Join`, `Leave` and `Flushed` come in; `PeerFound` goes out to a
//! subscriber, which the node wires to the connection manager. The topic bookkeeping
//! (timers, the flushed state, deduplication of found peers) is a core without I/O.
