//! A Warren broker served in-process on a free loopback port, so integration tests can drive
//! it with real clients over real sockets and look at its state directly.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use warren_broker::persist::Persistence;
use warren_broker::{Broker, BrokerConfig};
use warren_server::ServerConfig;
use warren_store::Backend;

pub struct TestBroker {
    pub addr: SocketAddr,
    /// The stream protocol's listener (RabbitMQ's port 5552), served beside the AMQP one.
    pub stream_addr: SocketAddr,
    pub broker: Arc<Broker>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Of a broker made by [`TestBroker::with_backend`], for [`TestBroker::stop`].
    persistence: Option<Arc<Persistence>>,
}

impl TestBroker {
    /// A broker with default settings.
    pub fn start() -> Self {
        Self::with_config(ServerConfig::default())
    }

    pub fn with_config(config: ServerConfig) -> Self {
        Self::serve(Broker::new(BrokerConfig::default()), config)
    }

    /// A broker that persists under `data_dir` through `backend` (`Broker::open`: durable
    /// queues get message stores and publisher confirms wait for group commit), with
    /// default settings. Pass a [`crate::FaultyBackend`] to inject disk faults.
    pub fn with_backend(data_dir: &std::path::Path, backend: Arc<dyn Backend>) -> Self {
        Self::with_persistence(Persistence::new(data_dir, backend))
    }

    /// A broker on `data_dir` whose quorum queues are Raft groups on the node's write-ahead
    /// log in `data_dir/raft` (as `warren` with `quorum_queues.replicated = true`).
    pub fn replicated(data_dir: &std::path::Path) -> Self {
        let p = Persistence::new(data_dir, warren_store::FileBackend::shared());
        let node = warren_cluster::LocalNode::open(
            warren_store::FileBackend::shared(),
            &data_dir.join("raft"),
        )
        .unwrap_or_else(|e| panic!("open the Raft log in {}: {e}", data_dir.display()));
        p.set_replica_host(node);
        Self::with_persistence(p)
    }

    /// As [`TestBroker::with_backend`], on a persistence the test made (to set its store
    /// options, say).
    pub fn with_persistence(persistence: Arc<Persistence>) -> Self {
        let data_dir = persistence.dir().to_path_buf();
        let broker = Broker::open(BrokerConfig::default(), persistence.clone())
            .unwrap_or_else(|e| panic!("open data directory {}: {e}", data_dir.display()));
        let mut b = Self::serve(broker, ServerConfig::default());
        b.persistence = Some(persistence);
        b
    }

    /// Stops the broker as `warren` does on SIGTERM (close connections, then a last group
    /// commit that also saves the definitions) and waits until its message stores are closed
    /// and its flusher has exited, so another broker can open the same data directory.
    pub fn stop(mut self) {
        self.shutdown();
        self.broker.flush_all();
        let persistence = self.persistence.take();
        drop(self);
        if let Some(p) = persistence {
            wait_until_released(p);
        }
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn serve(broker: Arc<Broker>, config: ServerConfig) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let b = broker.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let streams = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send((
                        listener.local_addr().expect("addr"),
                        streams.local_addr().expect("addr"),
                    ))
                    .expect("send addr");
                let stream_config = Arc::new(warren_stream::StreamConfig {
                    peers_are_remote: config.peers_are_remote,
                    ..Default::default()
                });
                tokio::join!(
                    warren_stream::serve(streams, b.clone(), stream_config, stop_rx.clone()),
                    warren_server::serve(listener, b, Arc::new(config), stop_rx),
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            });
        });
        let (addr, stream_addr) = addr_rx.recv().expect("broker started");
        TestBroker {
            addr,
            stream_addr,
            broker,
            stop,
            thread: Some(thread),
            persistence: None,
        }
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits until `p` (a dropped broker's persistence) is held by nothing else: the broker's
/// flusher thread, which may be saving the definitions when the broker is dropped, has exited
/// and its message stores are closed. Then another broker can open the data directory, or a
/// [`crate::TempDir`] remove it without the flusher writing into it afterwards.
pub fn wait_until_released(p: Arc<Persistence>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Arc::strong_count(&p) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stopped broker still holds its data directory {}",
            p.dir().display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
