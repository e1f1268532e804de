//! The registry of open client connections, as the management API and warrenctl see them:
//! who is connected, from where, with which channels, and a way to close a connection.

use crate::delivery::DeliveryChannel;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Asks a connection to close with 320 CONNECTION_FORCED and the given reason.
pub trait CloseHandle: Send + Sync {
    fn force_close(&self, reason: &str);
}

pub struct ConnectionEntry {
    pub id: u64,
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub client_properties: Vec<(String, String)>,
    pub connected_at: SystemTime,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub channels: Mutex<Vec<Arc<DeliveryChannel>>>,
    pub closer: Arc<dyn CloseHandle>,
}

#[derive(Default)]
pub struct Connections {
    map: RwLock<HashMap<u64, Arc<ConnectionEntry>>>,
}

impl Connections {
    pub fn register(&self, e: Arc<ConnectionEntry>) {
        self.map.write().insert(e.id, e);
    }
    pub fn unregister(&self, id: u64) {
        self.map.write().remove(&id);
    }
    pub fn list(&self) -> Vec<Arc<ConnectionEntry>> {
        let mut v: Vec<_> = self.map.read().values().cloned().collect();
        v.sort_by_key(|e| e.id);
        v
    }
    pub fn by_name(&self, name: &str) -> Option<Arc<ConnectionEntry>> {
        self.map.read().values().find(|e| e.name == name).cloned()
    }
    pub fn len(&self) -> usize {
        self.map.read().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
