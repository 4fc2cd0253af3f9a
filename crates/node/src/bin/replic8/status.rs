//! `replic8 peers` and `replic8 status`: what a running daemon sees.

use crate::app::control::Request;
use replic8_node::config::NodeConfig;

use crate::client::{ask, print_json};

/// Runs `replic8 peers`.
pub(crate) fn peers(config: &NodeConfig, json: bool) -> anyhow::Result<()> {
    let v = ask(config, &Request::Peers)?;
    if json {
        return print_json(&v);
    }
    for p in v.as_array().into_iter().flatten() {
        println!(
            "{} {} {} {} rtt {:.1} ms",
            p["key"].as_str().unwrap_or_default(),
            p["addr"].as_str().unwrap_or_default(),
            p["initiator"].as_str().unwrap_or_default(),
            p["path"].as_str().unwrap_or("direct"),
            p["rtt_ms"].as_f64().unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs `replic8 status`.
pub(crate) fn status(config: &NodeConfig, json: bool) -> anyhow::Result<()> {
    let v = ask(config, &Request::Status)?;
    if json {
        return print_json(&v);
    }
    println!("key       {}", v["key"].as_str().unwrap_or_default());
    println!("listen    {}", v["listen"].as_str().unwrap_or_default());
    println!("peers     {}   sessions {}", v["peers"], v["sessions"]);
    let nat = &v["nat"];
    let public: Vec<&str> = nat["public_addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    println!(
        "nat       public {}   mapping {}   reachability {} ({} peer report(s))",
        if public.is_empty() {
            "unknown".to_owned()
        } else {
            public.join(" ")
        },
        nat["nat_type"].as_str().unwrap_or("unknown"),
        nat["reachability"].as_str().unwrap_or("unknown"),
        nat["reporters"]
    );
    println!(
        "relays    {} relay(s) for us, registered with {}; {} peer(s) registered here",
        nat["relays"], nat["registered_with"], nat["registered_here"]
    );
    println!(
        "stored    {} feed(s), {} blocks, {} bytes",
        v["feeds_held"], v["blocks_stored"], v["bytes_stored"]
    );
    println!(
        "traffic   since start: {} bytes in, {} bytes out",
        v["bytes_in"], v["bytes_out"]
    );
    println!(
        "blocks    since start: {} received and verified, {} sent",
        v["blocks_verified"], v["feed_blocks_out"]
    );
    let s = &v["feed_store"];
    println!(
        "streams   {} open, {} since start; {} failed, {} cut for not reading (serve stalls, \
         {} of them ending the peer's session)",
        s["open_streams"],
        s["streams"],
        s["streams_failed"],
        s["serve_stalls"],
        s["serve_stall_session_ends"]
    );
    println!(
        "serving   {} bytes held for peers now, peak {}",
        s["serve_bytes_held"], s["serve_bytes_peak"]
    );
    println!(
        "receiving {} bytes held to verify now, peak {} (one peer's peak {})",
        s["receive_bytes_held"], s["receive_bytes_peak"], s["receive_bytes_peer_peak"]
    );
    println!(
        "feeds     {} open now; since start {} opened, {} closed",
        s["feeds_open"], s["feeds_opened"], s["feeds_closed"]
    );
    println!(
        "offers    {} waiting; refused {} by policy, {} held elsewhere, {} over a quota",
        s["offers_waiting"], s["refused_policy"], s["refused_namespace"], s["refused_quota"]
    );
    let w = &v["session_totals"];
    println!(
        "whole     since start: {} feed(s) sent whole, {} received whole (small feeds, no stream)",
        w["feeds_sent_whole"], w["feeds_received_whole"]
    );
    for t in v["topics"].as_array().into_iter().flatten() {
        println!(
            "topic     {} announce={} lookup={} flushed={} peers_found={}",
            t["topic"].as_str().unwrap_or_default(),
            t["announce"],
            t["lookup"],
            t["flushed"],
            t["peers_found"]
        );
    }
    Ok(())
}
