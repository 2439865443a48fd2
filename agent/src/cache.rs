//! Watched API objects kept in a kube-runtime reflector, with what its
//! store does not tell safely: whether the first full list is in, and that
//! something changed since a reader last looked.
//!
//! The task driving the watch also notes which objects changed
//! ([`Cache::take_changes`]), so a reader with ten thousand objects in
//! view can look at the few that changed instead of comparing them all.
//!
//! kube-runtime's `Store::wait_until_ready` keeps one waker only: of two
//! tasks waiting on it (or one waiting and one polling it once), only the
//! last registered is woken, and the other waits forever. So nothing here
//! awaits it; the task driving the watch counts its events instead.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
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
    changes: Arc<Mutex<Changes<K>>>,
}

/// What changed in a cache since its reader last looked.
pub struct Changes<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// Look at every object: the first list, a relist after a lost watch
    /// (objects deleted meanwhile are simply absent), or more changes than
    /// are worth naming.
    pub all: bool,
    /// The objects changed or deleted, when not `all`.
    pub objects: HashSet<ObjectRef<K>>,
}

/// Past this many changes between two looks, a reader is told to look at
/// everything: it costs a pass over the store instead of a growing set.
const MAX_NAMED_CHANGES: usize = 4096;

impl<K: Resource + 'static> Changes<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn everything() -> Changes<K> {
        Changes {
            all: true,
            objects: HashSet::new(),
        }
    }

    fn note(&mut self, object: ObjectRef<K>) {
        if self.all {
            return;
        }
        self.objects.insert(object);
        if self.objects.len() > MAX_NAMED_CHANGES {
            *self = Changes::everything();
        }
    }
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
        let changes = Arc::new(Mutex::new(Changes::everything()));
        let noted = changes.clone();
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
                    Ok(Event::InitDone) => {
                        *noted.lock().expect("not poisoned") = Changes::everything();
                        generation.send_modify(|g| *g += 1);
                    }
                    Ok(Event::Apply(o) | Event::Delete(o)) if *generation.borrow() > 0 => {
                        noted
                            .lock()
                            .expect("not poisoned")
                            .note(ObjectRef::from_obj(&o));
                        generation.send_modify(|g| *g += 1);
                    }
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
            changes,
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

    /// The changes since the last call (the first call: everything). One
    /// reader per cache takes them; a change noted after it read the store
    /// is seen twice, never missed.
    pub fn take_changes(&self) -> Changes<K> {
        let mut changes = self.changes.lock().expect("not poisoned");
        std::mem::replace(
            &mut *changes,
            Changes {
                all: false,
                objects: HashSet::new(),
            },
        )
    }

    /// Waits for a change this reader has not seen yet. `false` when the
    /// watch is gone (the agent is stopping).
    pub async fn changed(&mut self) -> bool {
        self.generation.changed().await.is_ok()
    }
}
