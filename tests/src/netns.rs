//! A small internet of network namespaces, wired only to each other, for NAT tests.
//!
//! A [`Topology`] has one "public" segment, 203.0.113.0/24 (TEST-NET-3, a documentation
//! range that is never routed anywhere): a bridge in a namespace of its own that no host
//! uses, with one veth per public host. Each home segment, 192.168.N.0/24, is a bridge
//! inside its NAT's namespace; the NAT has a leg on the public segment and rewrites what
//! leaves through it with nftables, as an endpoint-independent or an endpoint-dependent
//! ("symmetric") NAT ([`Nat`]). Every host is a namespace of its own, so a process is
//! placed on a host with [`Host::command`] (`ip netns exec`) and a socket with
//! [`Host::udp_socket`].
//!
//! Nothing can leave the machine: no interface is ever created in the machine's own
//! namespace (each veth is created with both ends already inside test namespaces), no
//! namespace has a default route, and the only routes are the two test ranges. Names are
//! `r8nat-PID-N-ROLE`, unique per process and topology; [`Topology::create`] first removes the
//! namespaces of runs that died without cleaning up (their PID is gone), and dropping a
//! [`Topology`], also while a test panics, kills what still runs in its namespaces and
//! deletes them.
//!
//! Needs root and the `ip` (iproute2) and `nft` (nftables) tools; [`Topology::create`]
//! panics with one line saying which is missing.

use std::cell::RefCell;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The prefix of every namespace a [`Topology`] creates.
pub const PREFIX: &str = "r8nat-";

/// The public segment, 203.0.113.0/24: TEST-NET-3 (RFC 5737), reserved for examples and
/// never routed on the internet, so a packet that escaped could reach no one.
pub const PUBLIC_NET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);

/// Numbers topologies within this process, for unique namespace names.
static TOPOLOGIES: AtomicUsize = AtomicUsize::new(0);

/// How a NAT maps an inside socket to an outside port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// One outside port per inside socket, whatever the destination (`masquerade`, which
    /// keeps the inside port when it is free): what hole punching needs.
    EndpointIndependent,
    /// A new random outside port for every destination (`masquerade fully-random`): the
    /// port a third party sees is not the one a new peer must use, so punching fails.
    EndpointDependent,
}

/// A host: a namespace with one address on one segment.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its role in the test (`boot`, `relay`, `alice`).
    pub role: String,
    /// The namespace's name.
    pub netns: String,
    /// Its address on its segment.
    pub addr: Ipv4Addr,
}

/// A home segment behind a NAT.
#[derive(Debug, Clone)]
pub struct Home {
    /// The NAT: its namespace and its address on the public segment.
    pub nat: Host,
    /// The kind of NAT.
    pub kind: Nat,
    /// The segment's third octet: the segment is 192.168.`lan`.0/24, the NAT .1.
    pub lan: u8,
}

/// Namespaces wired into a public segment and home segments behind NATs; removed when
/// dropped.
#[derive(Debug)]
pub struct Topology {
    /// `r8nat-PID-N`: the prefix of this topology's namespaces.
    id: String,
    /// Every namespace created so far, in order, so that a half-built topology is removed
    /// too; and how many hosts each segment has.
    state: RefCell<State>,
}

#[derive(Debug, Default)]
struct State {
    namespaces: Vec<String>,
    public_hosts: u8,
    homes: u8,
    home_hosts: Vec<u8>,
}

impl Topology {
    /// An empty public segment. Panics with one line if not root or a tool is missing,
    /// or with the failed command if the kernel refuses.
    pub fn create() -> Topology {
        require();
        remove_stale();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            TOPOLOGIES.fetch_add(1, Ordering::Relaxed)
        );
        let net = Topology {
            id,
            state: RefCell::new(State::default()),
        };
        let wire = net.namespace("wire");
        ip(&["-n", &wire, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &wire, "link", "set", "br0", "up"]);
        net
    }

    /// A host on the public segment (203.0.113.2, .3, ...).
    pub fn public_host(&self, role: &str) -> Host {
        let n = {
            let mut state = self.state.borrow_mut();
            state.public_hosts += 1;
            state.public_hosts
        };
        self.on_public(role, "eth0", Ipv4Addr::new(203, 0, 113, 1 + n))
    }

    /// A home segment 192.168.N.0/24 behind a new NAT of `kind`, whose public address is
    /// 203.0.113.(100 + N).
    pub fn home(&self, role: &str, kind: Nat) -> Home {
        let lan = {
            let mut state = self.state.borrow_mut();
            state.homes += 1;
            state.home_hosts.push(0);
            state.homes
        };
        let nat = self.on_public(role, "wan", Ipv4Addr::new(203, 0, 113, 100 + lan));
        let ns = &nat.netns;
        ip(&["-n", ns, "link", "add", "lan", "type", "bridge"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("192.168.{lan}.1/24"),
            "dev",
            "lan",
        ]);
        ip(&["-n", ns, "link", "set", "lan", "up"]);
        sysctl(ns, &["net.ipv4.ip_forward=1"]);
        run(
            Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
            Some(&nat_rules(kind)),
        );
        Home { nat, kind, lan }
    }

    /// A host on `home`'s segment (192.168.N.2, .3, ...) whose one route beyond it is
    /// the public segment, through the NAT.
    pub fn home_host(&self, home: &Home, role: &str) -> Host {
        let n = {
            let mut state = self.state.borrow_mut();
            let count = &mut state.home_hosts[usize::from(home.lan) - 1];
            *count += 1;
            *count
        };
        let addr = Ipv4Addr::new(192, 168, home.lan, 1 + n);
        let host = self.plug(
            role,
            "eth0",
            addr,
            (&home.nat.netns, "lan", &format!("h{n}")),
        );
        let gateway = format!("192.168.{}.1", home.lan);
        host.ip(&["route", "add", &format!("{PUBLIC_NET}/24"), "via", &gateway]);
        host
    }

    /// The names of this topology's namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        self.state.borrow().namespaces.clone()
    }

    /// A host on the public segment at `addr` with interface `ifname`; its bridge port
    /// is named for the role (15 bytes at most: IFNAMSIZ).
    fn on_public(&self, role: &str, ifname: &str, addr: Ipv4Addr) -> Host {
        let port: String = role.chars().take(15).collect();
        self.plug(role, ifname, addr, (&self.wire(), "br0", &port))
    }

    /// A new host namespace `role` whose interface `ifname` has `addr`/24 and is plugged
    /// into `bridge` in namespace `switch` as port `port`.
    fn plug(
        &self,
        role: &str,
        ifname: &str,
        addr: Ipv4Addr,
        (switch, bridge, port): (&str, &str, &str),
    ) -> Host {
        let ns = self.namespace(role);
        veth(&ns, ifname, switch, port);
        ip(&["-n", switch, "link", "set", port, "master", bridge]);
        ip(&["-n", switch, "link", "set", port, "up"]);
        let host = Host {
            role: role.to_owned(),
            netns: ns,
            addr,
        };
        host.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname]);
        host.ip(&["link", "set", ifname, "up"]);
        host
    }

    fn wire(&self) -> String {
        format!("{}-wire", self.id)
    }

    /// Creates namespace `ID-role` with its loopback up, recorded before it exists so
    /// that a failure after this point still removes it.
    fn namespace(&self, role: &str) -> String {
        let name = format!("{}-{role}", self.id);
        self.state.borrow_mut().namespaces.push(name.clone());
        ip(&["netns", "add", &name]);
        // IPv4 only: no link-local IPv6 on the veths, one address family to reason about.
        sysctl(
            &name,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.state.borrow().namespaces.iter().rev() {
            remove(ns);
        }
    }
}

impl Host {
    /// `program` to be run on this host (`ip netns exec NS program`); the process is
    /// `program` itself (`ip` executes it in place).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// A UDP socket bound on this host to 0.0.0.0:`port` (0: any), usable from any thread.
    /// A thread of ours enters the namespace, binds, and ends: a socket stays in the
    /// namespace it was created in.
    pub fn udp_socket(&self, port: u16) -> UdpSocket {
        let path = format!("/run/netns/{}", self.netns);
        let bound = std::thread::scope(|scope| {
            scope
                .spawn(|| -> std::io::Result<UdpSocket> {
                    use std::os::fd::AsFd;
                    let file = std::fs::File::open(&path)?;
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
                })
                .join()
        });
        match bound {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => panic!("host {}: udp socket on port {port}: {e}", self.role),
            Err(_) => panic!(
                "host {}: the thread binding a udp socket panicked",
                self.role
            ),
        }
    }

    /// The output of `ip ARGS` run on this host, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.netns];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Whether this host has a route to `dest` (`ip route get`).
    pub fn routes_to(&self, dest: Ipv4Addr) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "route", "get", &dest.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("ip route get: {e}"));
        out.status.success()
    }
}

/// The NAT's ruleset: rewrite what leaves by the public leg (`wan`), and drop what comes
/// in on it unasked. Dropping in `input`/`forward` keeps an unasked packet from leaving a
/// conntrack entry (an entry is confirmed only when its first packet passes), so an
/// early punch packet from a peer cannot claim the outside port that our own first
/// packet to that peer would map to: home routers drop such packets silently too.
fn nat_rules(kind: Nat) -> String {
    let masquerade = match kind {
        Nat::EndpointIndependent => "masquerade",
        Nat::EndpointDependent => "masquerade fully-random",
    };
    format!(
        "table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" {masquerade}
  }}
}}
table ip filter {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"wan\" ct state new drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"wan\" ct state new drop
  }}
}}
"
    )
}

/// A veth pair created with its ends already in `ns_a` (named `a`) and `ns_b` (named
/// `b`): neither end ever exists in the machine's own namespace.
fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) {
    ip(&[
        "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
    ]);
}

/// Sets kernel `settings` (`name=value`) in namespace `ns`.
fn sysctl(ns: &str, settings: &[&str]) {
    run(
        Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw"])
            .args(settings),
        None,
    );
}

/// Runs `ip ARGS`, which must succeed; its output.
fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args), None)
}

/// Runs `cmd` with `input` on its stdin; panics with the command and its error unless it
/// succeeds; its stdout.
fn run(cmd: &mut Command, input: Option<&str>) -> String {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(input) = input {
            stdin
                .write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("{shown}: writing stdin: {e}"));
        }
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics with one line unless this process is root and `ip` and `nft` run.
pub fn require() {
    let uid = rustix::process::geteuid().as_raw();
    assert!(
        uid == 0,
        "the NAT tests need root (they create network namespaces, veth pairs and nftables \
         rules): running as uid {uid}; run them as root"
    );
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let works = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            works,
            "the NAT tests need `{tool}` (package {package}); it does not run here: install it \
             (.ci/run does)"
        );
    }
}

/// Removes the namespaces of runs that ended without removing theirs: those named
/// `r8nat-PID-...` whose PID no longer runs.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove(&name);
        }
    }
}

/// Kills what still runs in namespace `ns` and deletes it (its veths and bridges go
/// with it). Errors are printed, not raised: this runs in `drop`, maybe while panicking.
fn remove(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    match Command::new("ip").args(["netns", "del", ns]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "netns: cannot delete {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("netns: cannot delete {ns}: {e}"),
    }
}
