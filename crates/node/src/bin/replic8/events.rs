//! `replic8 events`: the daemon's events as they happen.

use std::io::Write;
use std::ops::ControlFlow;

use crate::app::control::Request;
use replic8_node::config::NodeConfig;
use serde_json::Value;

use crate::client::follow;

/// Runs `replic8 events`: a line per event until interrupted (or the daemon stops).
pub(crate) fn run(config: &NodeConfig, json: bool) -> anyhow::Result<()> {
    follow(config, &Request::Events, |event| {
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer(&mut out, &event)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", text(&event))?;
        }
        out.flush()?;
        Ok(ControlFlow::Continue(()))
    })
}

/// An event as one line: its name, then its fields as `name=value`.
pub(crate) fn text(event: &Value) -> String {
    let mut line = event["event"].as_str().unwrap_or("event").to_owned();
    for (name, value) in event.as_object().into_iter().flatten() {
        if name == "event" {
            continue;
        }
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        line.push_str(&format!(" {name}={value}"));
    }
    line
}
