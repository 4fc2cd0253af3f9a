//! The connection manager's NAT events turned into node events and counters.

use std::sync::Arc;

use actix::prelude::*;
use replic8_connmgr::{NatEvent, Reachability};
use tokio::sync::broadcast;

use crate::events::NodeEvent;
use crate::metrics::Counters;

/// Receives `NatEvent`s (`replic8_connmgr::SubscribeNat`) for the node.
#[derive(Debug)]
pub(super) struct NatForwarder {
    pub(super) events: broadcast::Sender<NodeEvent>,
    pub(super) counters: Arc<Counters>,
}

impl Actor for NatForwarder {
    type Context = Context<Self>;
}

impl Handler<NatEvent> for NatForwarder {
    type Result = ();

    fn handle(&mut self, event: NatEvent, _ctx: &mut Context<Self>) {
        match &event {
            NatEvent::Reachability { reachability, .. } => {
                self.counters.nat_reachability.set(match reachability {
                    Reachability::Unknown => 0,
                    Reachability::Reachable => 1,
                    Reachability::Unreachable => 2,
                })
            }
            NatEvent::DialBackAsked { .. } => self.counters.nat_dial_backs_asked.add(1),
            NatEvent::DialBackServed { .. } => self.counters.nat_dial_backs_served.add(1),
            NatEvent::Relaying { .. } => self.counters.nat_circuits_relayed.add(1),
            NatEvent::CircuitUp { .. } => self.counters.nat_circuits.add(1),
            NatEvent::CircuitDown { .. } => self.counters.nat_circuits.sub(1),
            NatEvent::Punched { ok: true, .. } => self.counters.nat_punches_ok.add(1),
            NatEvent::RelayRegistered { accepted: true, .. } => {
                self.counters.nat_relay_registrations.add(1)
            }
            NatEvent::Located { .. } => self.counters.nat_locates.add(1),
            NatEvent::RelayedDial { ok, .. } => {
                self.counters.nat_relayed_dials.add(1);
                if *ok {
                    self.counters.nat_relayed_dials_ok.add(1);
                }
            }
            NatEvent::RelayRegistered {
                accepted: false, ..
            }
            | NatEvent::Punched { ok: false, .. }
            | NatEvent::PublicAddrs { .. }
            | NatEvent::NatType { .. } => {}
        }
        // Nobody subscribed is not an error.
        let _ = self.events.send(NodeEvent::Nat(event));
    }
}
