//! What the loopback Nova ([`crate::nova`]) and Heat ([`crate::heat`]) share: a cloud's
//! state behind a lock, which the test changes between polls, answered over real HTTP
//! (`synchronizer_openstack::testing::Server`) by the service's handler.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use synchronizer_openstack::testing::{Reply, Request, Server};

/// A running loopback service answering from a cloud of type `C`; it stops when dropped.
pub struct Replay<C> {
    /// The HTTP server (its base URL, the requests it got).
    pub server: Server,
    /// The cloud it answers from.
    pub cloud: Arc<Mutex<C>>,
}

impl<C: Send + 'static> Replay<C> {
    /// Starts on a free loopback port: every request is answered by `handle(cloud,
    /// request, base_url)`, the cloud locked.
    pub async fn serve(cloud: C, handle: fn(&mut C, &Request, &str) -> Reply) -> Replay<C> {
        let cloud = Arc::new(Mutex::new(cloud));
        let state = cloud.clone();
        let server = Server::start(move |req: &Request, base: &str| {
            handle(&mut state.lock().unwrap(), req, base)
        })
        .await
        .expect("a loopback server");
        Replay { server, cloud }
    }

    /// The cloud, to read or change between polls.
    pub fn cloud(&self) -> MutexGuard<'_, C> {
        self.cloud.lock().unwrap()
    }
}

/// `config` with the top-level entries of `extra` put in (replacing those it has).
pub fn merged(mut config: Value, extra: Value) -> Value {
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    config
}
