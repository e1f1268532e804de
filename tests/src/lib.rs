//! Test support: starts a Warren broker in-process on a free loopback port, so integration
//! tests can drive it with real clients over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use warren_broker::{Broker, BrokerConfig};
pub use warren_server::ServerConfig;

pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestBroker {
    /// A broker with default settings.
    pub fn start() -> Self {
        Self::with_config(ServerConfig::default())
    }

    pub fn with_config(config: ServerConfig) -> Self {
        let broker = Broker::new(BrokerConfig::default());
        let (stop, stop_rx) = watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let b = broker.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
                warren_server::serve(listener, b, Arc::new(config), stop_rx).await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            });
        });
        let addr = addr_rx.recv().expect("broker started");
        TestBroker { addr, broker, stop, thread: Some(thread) }
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
