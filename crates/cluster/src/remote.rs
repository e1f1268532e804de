//! Classic queues every node knows (docs/cluster-plan.md, step 6;
//! `cluster.classic_queues_everywhere`). A durable classic queue lives on its home node, the
//! node that declared it; every other node has a stand-in whose [`Replica`] is a
//! [`RemoteReplica`]: its commands (publishes, consumers, acks, basic.get, purge) go to the
//! home node in order, in batches ([`Forwarder::home`](crate::transport::Forwarder::home)),
//! where [`HomeService`] applies them to the queue; its consumers' deliveries come back as
//! pushes ([`HomePusher`]), and its counts are what the home node reported a moment ago.
//!
//! The home node going down: commands are answered with an error (a publish is nacked), and
//! its consumers there are cancelled. A node going down: the home node closes the proxy
//! channels of that node's owners, and what they held goes back to the queue.

use crate::node::{Cluster, FORWARD_ATTEMPT, PROBE_EVERY, WRITE_TIMEOUT};
use crate::replica::STALE_RETRY;
use crate::transport::{Pushed, PushedDelivery};
use crate::types::NodeId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use warren_broker::queue::home::{HomeDelivery, HomeLink};
use warren_broker::queue::replica::{
    Answer, GroupMembers, OutputSink, RemoteStats, Replica, ReplicaOutput,
};
use warren_broker::queue::{LoggedMessage, Owner, QueueCommand, QueueEngine, QueueOptions};

/// How old the home node's counts may be before they are asked again.
const STATS_REFRESH: Duration = Duration::from_secs(1);

/// Commands sent to the home node in one request at most.
const BATCH: usize = 512;

/// The stand-in of a classic queue of another node, as the broker reaches it.
pub(crate) struct RemoteReplica {
    vhost: String,
    name: String,
    home: NodeId,
    cluster: Arc<Cluster>,
    commands: mpsc::UnboundedSender<(QueueCommand, Option<Answer>)>,
    queued: Arc<AtomicUsize>,
    outputs: OutputSink,
    /// An empty engine with the queue's options: what `read` shows (the counts come from
    /// [`Replica::remote_stats`]).
    placeholder: Mutex<QueueEngine<Owner>>,
    stats: Mutex<Option<(RemoteStats, Instant)>>,
    /// Whether the counts were asked for once (the first reader waits for them).
    asked: AtomicBool,
    refreshing: AtomicBool,
    /// The last push taken (each push is taken once).
    pushed_through: Mutex<u64>,
    stale_asked: Mutex<HashMap<Owner, Instant>>,
    /// This node's consumers of the queue (subscribed, not yet removed).
    consumers: Mutex<std::collections::HashSet<Owner>>,
    /// The home node's run they were subscribed under, once known.
    incarnation: Mutex<Option<u64>>,
    /// Whether [`watch_home`] runs (it does while this node has consumers of the queue).
    watching: AtomicBool,
    removed: AtomicBool,
    handle: tokio::runtime::Handle,
    this: Weak<RemoteReplica>,
}

impl RemoteReplica {
    pub(crate) fn new(
        vhost: &str,
        name: &str,
        home: NodeId,
        cluster: Arc<Cluster>,
        handle: tokio::runtime::Handle,
        opts: QueueOptions,
        outputs: OutputSink,
    ) -> Arc<RemoteReplica> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let r = Arc::new_cyclic(|this| RemoteReplica {
            vhost: vhost.to_string(),
            name: name.to_string(),
            home,
            cluster,
            commands: tx,
            queued: queued.clone(),
            outputs,
            placeholder: Mutex::new(QueueEngine::new(opts, 0)),
            stats: Mutex::default(),
            asked: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
            pushed_through: Mutex::new(0),
            stale_asked: Mutex::default(),
            consumers: Mutex::default(),
            incarnation: Mutex::new(None),
            watching: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            handle: handle.clone(),
            this: this.clone(),
        });
        handle.spawn(send_in_batches(Arc::downgrade(&r), rx, queued));
        r
    }

    /// The home node went down or restarted: the consumers it served from here are gone
    /// there, and are cancelled here.
    fn home_lost(&self, why: &str) {
        let n = std::mem::take(&mut *self.consumers.lock()).len();
        if n > 0 {
            tracing::warn!(queue = %self.name, vhost = %self.vhost, consumers = n, "a classic queue's home node {why}: its consumers on this node are cancelled");
            (self.outputs)(ReplicaOutput {
                home_lost: true,
                ..Default::default()
            });
        }
    }

    /// Deliveries the home node sent for this node's consumers.
    pub(crate) fn take_pushed(&self, p: Pushed) {
        if !self.removed.load(Ordering::Acquire) {
            p.hand_on(&self.pushed_through, &self.outputs);
        }
    }

    /// The home node's run, as a status answer gave it: another than the one this node's
    /// consumers were subscribed under means the home node restarted.
    fn seen_incarnation(&self, now: u64) {
        let before = self.incarnation.lock().replace(now);
        if before.is_some_and(|b| b != now) {
            self.home_lost("restarted");
        }
    }

    fn home_addr(&self) -> Option<String> {
        self.cluster.addr(self.home)
    }

    /// Asks the home node for the queue's counts, in the background.
    fn refresh(&self) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.this.upgrade() else {
            return;
        };
        self.handle.spawn(async move {
            me.fetch_stats().await;
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Asks the home node for the queue's counts (and its run).
    async fn fetch_stats(&self) {
        let Some(addr) = self.home_addr() else { return };
        let r = self
            .cluster
            .control
            .home_status(&addr, &self.vhost, &self.name, FORWARD_ATTEMPT)
            .await;
        if let Ok(Some(s)) = r {
            self.seen_incarnation(s.incarnation);
            *self.stats.lock() = Some((
                RemoteStats {
                    stats: s.stats,
                    len: s.len,
                    backlogged: s.backlogged,
                },
                Instant::now(),
            ));
        }
    }
}

impl Replica for RemoteReplica {
    fn submit(&self, cmd: QueueCommand, answer: Option<Answer>) {
        if let Some(home) = self.home_down() {
            // As RabbitMQ: nothing waits for a queue whose node is down.
            if let Some(a) = answer {
                a(Err(format!("the queue's home node {home} is down")));
            }
            return;
        }
        match &cmd {
            QueueCommand::AddConsumer { owner, .. } => {
                let mut consumers = self.consumers.lock();
                if consumers.is_empty() {
                    // Subscribed under whichever run answers next.
                    *self.incarnation.lock() = None;
                    if !self.watching.swap(true, Ordering::AcqRel) {
                        self.handle.spawn(watch_home(self.this.clone()));
                    }
                }
                consumers.insert(*owner);
            }
            QueueCommand::RemoveConsumer { owner, .. } | QueueCommand::ReturnAll { owner, .. } => {
                self.consumers.lock().remove(owner);
            }
            _ => {}
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError((_, Some(a)))) = self.commands.send((cmd, answer)) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            a(Err("the queue's stand-in is closed".into()));
        }
    }

    fn read(&self, f: &mut dyn FnMut(&QueueEngine<Owner>)) {
        f(&self.placeholder.lock())
    }

    fn remove(&self) {
        self.removed.store(true, Ordering::Release);
    }

    fn touch(&self, _now: u64) {}

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    fn is_leader(&self) -> bool {
        false
    }

    fn is_stale(&self, owner: Owner) -> bool {
        self.cluster.owner_is_stale(owner)
    }

    fn remove_stale(&self, owners: &[Owner]) {
        let now = Instant::now();
        let mut asked = self.stale_asked.lock();
        asked.retain(|_, at| now.duration_since(*at) < STALE_RETRY);
        for &o in owners {
            if self.is_stale(o) && asked.insert(o, now).is_none() {
                self.remove_owner(o, warren_broker::clock::now_ms());
            }
        }
    }

    fn home_down(&self) -> Option<String> {
        self.cluster
            .is_down(self.home)
            .then(|| self.cluster.name_of(self.home).unwrap_or_default())
    }

    fn members(&self) -> Option<GroupMembers> {
        let home = self.cluster.name_of(self.home)?;
        let online = match self.home_down() {
            Some(_) => Vec::new(),
            None => vec![home.clone()],
        };
        Some(GroupMembers {
            leader: Some(home.clone()),
            members: vec![home],
            online,
        })
    }

    fn remote_stats(&self) -> Option<RemoteStats> {
        if !self.asked.swap(true, Ordering::AcqRel)
            && self.home_down().is_none()
            && !crate::node::on_raft_thread()
        {
            // Never asked yet (a passive declaration's counts): asked now, once, briefly.
            let (tx, rx) = std::sync::mpsc::channel();
            let me = self.this.upgrade()?;
            self.handle.spawn(async move {
                me.fetch_stats().await;
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(FORWARD_ATTEMPT);
        }
        let cached = self.stats.lock().clone();
        if cached
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= STATS_REFRESH)
        {
            self.refresh();
        }
        Some(cached.map(|(s, _)| s).unwrap_or_default())
    }
}

/// Watches the home node for the stand-in while this node has consumers of the queue: asks
/// it for its run (and the queue's counts) every [`PROBE_EVERY`]; a home node that goes down
/// or restarts loses them ([`RemoteReplica::home_lost`]). (A task per stand-in with
/// consumers only: idle stand-ins cost nothing.)
async fn watch_home(r: Weak<RemoteReplica>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(r) = r.upgrade() else { return };
        if r.removed.load(Ordering::Acquire) {
            return;
        }
        {
            // Ends with the last consumer (the next one starts it again).
            let consumers = r.consumers.lock();
            if consumers.is_empty() {
                r.watching.store(false, Ordering::Release);
                return;
            }
        }
        if r.home_down().is_some() {
            r.home_lost("is down");
            continue;
        }
        r.refresh();
    }
}

/// Sends the stand-in's commands to the home node, in order: what waits goes as one request,
/// and the answers are handed out when it returns. A request that fails fails its commands
/// (a publish is nacked): a command is never sent twice.
async fn send_in_batches(
    r: Weak<RemoteReplica>,
    mut rx: mpsc::UnboundedReceiver<(QueueCommand, Option<Answer>)>,
    queued: Arc<AtomicUsize>,
) {
    let mut batch = Vec::new();
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let (cmds, answers): (Vec<QueueCommand>, Vec<Option<Answer>>) =
            std::mem::take(&mut batch).into_iter().unzip();
        let result = match r.upgrade() {
            None => Err("the queue was deleted".to_string()),
            Some(r) => match r.home_addr() {
                None => Err("the queue's home node is not in the cluster".to_string()),
                Some(addr) => {
                    let home = r.cluster.name_of(r.home).unwrap_or_default();
                    r.cluster
                        .homes
                        .home(&addr, &r.vhost, &r.name, cmds, WRITE_TIMEOUT)
                        .await
                        .map_err(|e| format!("the queue's home node {home}: {e}"))
                }
            },
        };
        match result {
            Ok(applied) if applied.len() == answers.len() => {
                for (a, applied) in answers.into_iter().zip(applied) {
                    if let Some(a) = a {
                        a(Ok(applied));
                    }
                }
            }
            Ok(_) => fail(
                answers,
                "the home node answered a different number of commands",
            ),
            Err(e) => {
                tracing::debug!(error = %e, "commands for a classic queue of another node failed");
                fail(answers, &e);
            }
        }
    }
}

fn fail(answers: Vec<Option<Answer>>, why: &str) {
    for a in answers.into_iter().flatten() {
        a(Err(why.to_string()));
    }
}

/// Sends deliveries of the queues homed here to their consumers' nodes, each as a push of
/// its own (in order per node: [`Cluster::push`]).
pub(crate) struct HomePusher {
    pub(crate) cluster: Weak<Cluster>,
    /// Numbers the pushes: a node takes each once, in order, and a restart of this node
    /// starts above its earlier run's numbers (the clock's microseconds). Held while a push
    /// is queued, so that numbers reach each node in order.
    pub(crate) next: Mutex<u64>,
}

impl HomePusher {
    pub(crate) fn new(cluster: &Arc<Cluster>) -> HomePusher {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        HomePusher {
            cluster: Arc::downgrade(cluster),
            next: Mutex::new(start),
        }
    }
}

impl HomeLink for HomePusher {
    fn deliver(&self, vhost: &str, queue: &str, d: HomeDelivery) {
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        let Some(node) = c.node_of(d.owner) else {
            return;
        };
        let mut next = self.next.lock();
        *next += 1;
        let p = Pushed {
            index: *next,
            deliveries: vec![PushedDelivery {
                owner: d.owner,
                checkout: d.checkout,
                seq: 0,
                msg: LoggedMessage(d.msg),
                redelivered: d.redelivered,
                delivery_count: 0,
            }],
            removed: Vec::new(),
        };
        c.push(node, crate::node::group_id(vhost, queue), p);
    }
}
