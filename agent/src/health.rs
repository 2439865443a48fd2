//! What `/readyz` reports: the agent is ready once each of its parts has
//! programmed the node from a full sync of the API.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    ipam: AtomicBool,
    routes: AtomicBool,
    services: AtomicBool,
}

impl Health {
    pub fn ipam_synced(&self) {
        self.ipam.store(true, Ordering::Relaxed);
    }

    pub fn routes_synced(&self) {
        self.routes.store(true, Ordering::Relaxed);
    }

    pub fn services_synced(&self) {
        self.services.store(true, Ordering::Relaxed);
    }

    /// `Err` names what is not synced yet.
    pub fn ready(&self) -> Result<(), String> {
        let pending: Vec<&str> = [
            (&self.ipam, "IPAM blocks"),
            (&self.routes, "routes to other nodes"),
            (&self.services, "services"),
        ]
        .into_iter()
        .filter(|(flag, _)| !flag.load(Ordering::Relaxed))
        .map(|(_, what)| what)
        .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!("not yet synced: {}", pending.join(", ")))
        }
    }
}
