//! Watched API objects kept in a kube-runtime reflector, with what its
//! store does not tell safely: whether the first full list is in, and that
//! something changed since a reader last looked.
//!
//! kube-runtime's `Store::wait_until_ready` keeps one waker only: of two
//! tasks waiting on it (or one waiting and one polling it once), only the
//! last registered is woken, and the other waits forever. So nothing here
//! awaits it; the task driving the watch counts its events instead.

use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// A reflector's store and its generation: 0 until the first full list,
/// then one more for every event.
#[derive(Clone)]
pub struct Cache<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    generation: watch::Receiver<u64>,
}

impl<K: Resource + 'static> Cache<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// Watches `api` (with `config`) for as long as the agent runs.
    pub fn spawn(
        api: Api<K>,
        config: watcher::Config,
        what: &'static str,
        metrics: std::sync::Arc<Metrics>,
    ) -> Cache<K>
    where
        K: Clone + Debug + DeserializeOwned + Send + Sync,
        K::DynamicType: Default + Send + Sync,
    {
        let (store, writer) = reflector::store();
        let (generation, rx) = watch::channel(0u64);
        // managedFields are often the larger half of an object, and
        // nothing here reads them: not kept (ten thousand Services).
        let events = reflector(
            writer,
            watcher::watcher(api, config)
                .default_backoff()
                .modify(|o| o.managed_fields_mut().clear()),
        );
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::InitDone) => generation.send_modify(|g| *g += 1),
                    Ok(_) if *generation.borrow() > 0 => generation.send_modify(|g| *g += 1),
                    Ok(_) => {}
                    Err(e) => {
                        metrics.api_error(what);
                        tracing::warn!("watching {what}: {e} (retrying)");
                    }
                }
            }
        });
        Cache {
            store,
            generation: rx,
        }
    }

    /// The first full list is in the store.
    pub fn is_listed(&self) -> bool {
        *self.generation.borrow() > 0
    }

    /// Waits for the first full list.
    pub async fn listed(&mut self) {
        let _ = self.generation.wait_for(|g| *g > 0).await;
    }

    /// Waits for a change this reader has not seen yet. `false` when the
    /// watch is gone (the agent is stopping).
    pub async fn changed(&mut self) -> bool {
        self.generation.changed().await.is_ok()
    }
}
