//! Transport benchmark: two `ConnManager`s on loopback, one connection, one stream, N MiB
//! from one to the other; prints MB/s and the loss / datagram counters.
//!
//! ```text
//! cargo run --release -p replic8-connmgr --example transport -- [options]
//!   --mib N            bytes to send, in MiB (default 1024)
//!   --runs R           repetitions per setting (default 3; the median is reported)
//!   --preset NAME      one named setting (see `presets()`), or `all` (default: default)
//!   --cc cubic|bbr|newreno, --stream-window B, --conn-window B, --send-window B,
//!   --sockbuf B|os, --gso on|off, --mtu B (initial), --mtud on|off,
//!   --mtu-max B (largest UDP payload on loopback),
//!   --ack-every N|off, --ack-delay-ms MS (what we ask of the peer's ACKs on loopback)
//!                      override single knobs of the chosen preset
//! ```
//! Not a test: nothing is asserted, numbers go to `docs/PERFORMANCE.md`.

use std::time::Duration;

use actix::System;
use replic8_connmgr::bench::loopback_transfer;
use replic8_connmgr::{Congestion, TransportTuning};

fn presets() -> Vec<(&'static str, TransportTuning)> {
    let node = TransportTuning::default();
    let quinn_defaults = TransportTuning {
        stream_receive_window: None,
        receive_window: None,
        send_window: None,
        congestion: Congestion::Cubic,
        gso: true,
        initial_mtu: 1200,
        mtu_discovery: true,
        local_max_udp_payload: replic8_connmgr::transport::WIDE_MAX_UDP_PAYLOAD,
        socket_buffer: None,
        ..node.clone()
    };
    let mut out = vec![
        ("default", node.clone()),
        ("quinn-defaults", quinn_defaults.clone()),
        (
            "sockbuf-1m",
            TransportTuning {
                socket_buffer: Some(1 << 20),
                ..node.clone()
            },
        ),
        (
            "sockbuf-8m",
            TransportTuning {
                socket_buffer: Some(8 << 20),
                ..node.clone()
            },
        ),
        (
            "sockbuf-16m",
            TransportTuning {
                socket_buffer: Some(16 << 20),
                ..node.clone()
            },
        ),
        (
            "bbr",
            TransportTuning {
                congestion: Congestion::Bbr,
                ..node.clone()
            },
        ),
        (
            "newreno",
            TransportTuning {
                congestion: Congestion::NewReno,
                ..node.clone()
            },
        ),
        (
            "no-gso",
            TransportTuning {
                gso: false,
                ..node.clone()
            },
        ),
        (
            "mtu-1452",
            TransportTuning {
                initial_mtu: 1452,
                ..node.clone()
            },
        ),
        (
            "mtu-wide",
            TransportTuning {
                local_max_udp_payload: replic8_connmgr::transport::WIDE_MAX_UDP_PAYLOAD,
                ..node.clone()
            },
        ),
        (
            "no-mtud",
            TransportTuning {
                mtu_discovery: false,
                ..node.clone()
            },
        ),
        (
            "windows-small",
            TransportTuning {
                stream_receive_window: Some(512 << 10),
                send_window: Some(2 << 20),
                ..node.clone()
            },
        ),
        (
            "windows-large",
            TransportTuning {
                stream_receive_window: Some(8 << 20),
                receive_window: Some(16 << 20),
                send_window: Some(16 << 20),
                ..node.clone()
            },
        ),
    ];
    out.push((
        "quinn-defaults-bbr",
        TransportTuning {
            congestion: Congestion::Bbr,
            ..quinn_defaults
        },
    ));
    out
}

fn parse_size(s: &str) -> u64 {
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<u64>().expect("size") * mul
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut mib = 1024u64;
    let mut runs = 3usize;
    let mut preset = "default".to_string();
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--mib" => mib = value.parse().expect("--mib N"),
            "--runs" => runs = value.parse().expect("--runs R"),
            "--preset" => preset = value,
            flag => overrides.push((flag.trim_start_matches("--").to_string(), value)),
        }
        i += 2;
    }
    let all = presets();
    let chosen: Vec<(String, TransportTuning)> = all
        .iter()
        .filter(|(name, _)| preset == "all" || *name == preset)
        .map(|(name, t)| {
            let mut t = t.clone();
            let mut label = name.to_string();
            for (k, v) in &overrides {
                label.push_str(&format!(" {k}={v}"));
                match k.as_str() {
                    "cc" => {
                        t.congestion = match v.as_str() {
                            "bbr" => Congestion::Bbr,
                            "newreno" => Congestion::NewReno,
                            _ => Congestion::Cubic,
                        }
                    }
                    "stream-window" => t.stream_receive_window = Some(parse_size(v) as u32),
                    "conn-window" => t.receive_window = Some(parse_size(v) as u32),
                    "send-window" => t.send_window = Some(parse_size(v)),
                    "sockbuf" => {
                        t.socket_buffer = (v != "os").then(|| parse_size(v) as usize);
                    }
                    "gso" => t.gso = v == "on",
                    "mtu" => t.initial_mtu = v.parse().expect("--mtu B"),
                    "mtud" => t.mtu_discovery = v == "on",
                    "mtu-max" => t.local_max_udp_payload = v.parse().expect("--mtu-max B"),
                    "ack-every" => {
                        t.local_acks = match v.as_str() {
                            "off" => None,
                            n => Some(replic8_connmgr::AckTuning {
                                after_packets: n.parse().expect("--ack-every N|off"),
                                ..t.local_acks.unwrap_or_default()
                            }),
                        }
                    }
                    "ack-delay-ms" => {
                        let mut acks = t.local_acks.unwrap_or_default();
                        acks.max_delay =
                            Some(Duration::from_millis(v.parse().expect("--ack-delay-ms MS")));
                        t.local_acks = Some(acks);
                    }
                    other => panic!("unknown option --{other}"),
                }
            }
            (label, t)
        })
        .collect();
    assert!(!chosen.is_empty(), "unknown preset {preset}");
    let bytes = mib << 20;
    let system = System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
    });
    system.block_on(async move {
        println!("{mib} MiB, one stream, {runs} runs each, median MB/s (10^6 B/s)");
        println!(
            "{:<36} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>6} {:>9}",
            "setting", "median", "min", "max", "MB/cpu-s", "lost/GiB", "dg/io", "mtu", "acks/MiB"
        );
        for (label, tuning) in chosen {
            let mut rates = Vec::new();
            let mut per_cpu = Vec::new();
            let mut last = None;
            for _ in 0..runs {
                let r = loopback_transfer(&tuning, bytes).await.expect("transfer");
                rates.push(r.mb_per_s());
                per_cpu.push(r.mb_per_cpu_s().unwrap_or(0.0));
                last = Some(r);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rates.sort_by(|a, b| a.total_cmp(b));
            per_cpu.sort_by(|a, b| a.total_cmp(b));
            let r = last.expect("one run");
            let gib = bytes as f64 / (1u64 << 30) as f64;
            println!(
                "{:<36} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>8.2} {:>6} {:>9.1}",
                label,
                rates[rates.len() / 2],
                rates[0],
                rates[rates.len() - 1],
                per_cpu[per_cpu.len() / 2],
                r.lost_packets as f64 / gib,
                r.datagrams as f64 / r.send_calls.max(1) as f64,
                r.mtu,
                r.acks as f64 / mib as f64
            );
        }
    });
}
