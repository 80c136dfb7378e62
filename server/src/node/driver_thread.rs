//! The thread that runs a node's multi-raft driver, and the handle async code talks to it
//! through.
//!
//! The driver is synchronous and deterministic; this thread gives it wall-clock ticks, feeds
//! it the inputs the network and the API send through one bounded channel, iterates while
//! it has work, and hands each answer to the request waiting for it. A full channel is
//! refused at once (the caller answers `Busy`), never waited on, so a burst cannot grow
//! memory without bound.
//!
//! Every `view_interval` the thread publishes a [`NodeView`] (shards, leaders, counters) for
//! the API, placement and metrics to read without touching the driver.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rshard_common::shard::{ShardDescriptor, ShardId};
use rshard_raft::NodeId;
use tokio::sync::oneshot;

use crate::multiraft::{
    Counters, Input, MultiRaft, Request, RequestError, RequestId, Response, Transport,
};

type Reply = oneshot::Sender<Result<Response, RequestError>>;

/// What the thread takes.
#[derive(Debug)]
pub enum Command {
    /// An input and the bytes it holds (counted against the queue's byte limit).
    Input {
        input: Input,
        bytes: usize,
    },
    Request {
        request: Request,
        reply: Reply,
    },
    /// Stop after this iteration (answers waiting requests `Stopped`).
    Stop,
}

/// This node's replica of one shard, as of the last published view.
#[derive(Clone, Debug)]
pub struct ReplicaView {
    pub descriptor: ShardDescriptor,
    pub leader: Option<NodeId>,
    /// As leader: learners that hold every committed entry.
    pub caught_up_learners: Vec<NodeId>,
    /// Installing a snapshot: its data is not all in yet.
    pub installing: bool,
}

/// The driver's state, published for readers outside the thread.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    pub node: NodeId,
    pub replicas: BTreeMap<ShardId, ReplicaView>,
    pub counters: Counters,
    pub stopped: Option<String>,
    pub pending_requests: usize,
}

impl NodeView {
    pub fn leading(&self) -> impl Iterator<Item = &ReplicaView> {
        self.replicas
            .values()
            .filter(move |r| r.leader == Some(self.node))
    }
}

/// How async code reaches the driver thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DriverHandle {
    sender: SyncSender<Command>,
    view: Arc<Mutex<NodeView>>,
    /// Bytes of network inputs queued for the thread, at most `max_queued_bytes`.
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    /// False once the thread has ended, however it ended (a panic included).
    running: Arc<AtomicBool>,
    /// Set by [`DriverHandle::stop`]; the thread checks it every loop, so a stop is never
    /// lost to a full channel.
    stop_requested: Arc<AtomicBool>,
}

#[derive(Clone, Copy, Debug)]
pub struct ThreadConfig {
    pub tick: Duration,
    /// Commands the channel holds; more are refused.
    pub max_queued_commands: usize,
    /// Bytes of network inputs (frames, snapshot chunks) the channel holds; more are
    /// refused.
    pub max_queued_bytes: usize,
    pub view_interval: Duration,
}

impl DriverHandle {
    /// Queues an input; false if the channel is full (the input is dropped).
    pub fn offer(&self, input: Input) -> bool {
        self.offer_sized(input, 0)
    }

    /// Queues an input that arrived as `bytes` bytes; false (the input is dropped) if the
    /// channel is full or holds `max_queued_bytes` already.
    pub fn offer_sized(&self, input: Input, bytes: usize) -> bool {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.max_queued_bytes && bytes > 0 {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        if self
            .sender
            .try_send(Command::Input { input, bytes })
            .is_err()
        {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Sends `request` and waits for its answer, at most `timeout`.
    pub async fn request(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Result<Response, RequestError>, RequestFailure> {
        let (reply, answer) = oneshot::channel();
        match self.sender.try_send(Command::Request { request, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(RequestFailure::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(RequestFailure::NotTaken),
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(RequestFailure::Dropped),
            Err(_) => Err(RequestFailure::Timeout),
        }
    }

    pub fn view(&self) -> NodeView {
        match self.view.lock() {
            Ok(view) => view.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Why the driver stopped (storage failed, or its thread ended), as of the last
    /// published view.
    pub fn failure(&self) -> Option<String> {
        let stopped = match self.view.lock() {
            Ok(view) => view.stopped.clone(),
            Err(poisoned) => poisoned.into_inner().stopped.clone(),
        };
        stopped.or_else(|| {
            (!self.running.load(Ordering::Relaxed))
                .then(|| "the driver thread ended unexpectedly".to_string())
        })
    }

    /// Asks the thread to stop; false if it already has. It stops within a tick.
    pub fn stop(&self) -> bool {
        // Read first: once asked, the thread may end at any moment.
        let was_running = self.running.load(Ordering::Relaxed);
        self.stop_requested.store(true, Ordering::Relaxed);
        // Wakes the thread if it waits; a full channel means it is busy and will see the
        // flag anyway.
        let _woken = self.sender.try_send(Command::Stop);
        was_running
    }
}

/// Why a request got no answer from the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFailure {
    /// The queue was full; the request was not taken.
    Busy,
    /// No answer in time; a write may still apply.
    Timeout,
    /// The thread had ended; the request was not taken.
    NotTaken,
    /// The thread ended (or panicked) without answering; a write may have been proposed.
    Dropped,
}

/// Starts the thread running `driver`; it ends when every handle is dropped or on
/// [`DriverHandle::stop`].
pub fn spawn<T: Transport + Send + 'static>(
    driver: MultiRaft<T>,
    config: ThreadConfig,
) -> std::io::Result<(DriverHandle, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(config.max_queued_commands);
    let view = Arc::new(Mutex::new(NodeView {
        node: driver.node(),
        ..NodeView::default()
    }));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let stop_requested = Arc::new(AtomicBool::new(false));
    let handle = DriverHandle {
        sender,
        view: view.clone(),
        queued_bytes: queued_bytes.clone(),
        max_queued_bytes: config.max_queued_bytes,
        running: running.clone(),
        stop_requested: stop_requested.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("raft-driver".to_string())
        .spawn(move || {
            let _running = Running(running);
            let mut state = ThreadState {
                driver,
                waiting: HashMap::new(),
                next_request: 1,
                view,
                queued_bytes,
                stop_requested,
            };
            state.run(receiver, config);
        })?;
    Ok((handle, thread))
}

/// Hands each answer to the request waiting for it.
fn answer(
    waiting: &mut HashMap<RequestId, Reply>,
    answers: Vec<(RequestId, Result<Response, RequestError>)>,
) {
    for (id, answer) in answers {
        if let Some(reply) = waiting.remove(&id) {
            // The caller may have given up (timeout); nothing to do then.
            let _gone = reply.send(answer);
        }
    }
}

/// Clears the flag when the thread ends, by return or by panic (drop runs on unwinding).
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

struct ThreadState<T: Transport> {
    driver: MultiRaft<T>,
    waiting: HashMap<RequestId, Reply>,
    next_request: RequestId,
    view: Arc<Mutex<NodeView>>,
    queued_bytes: Arc<AtomicUsize>,
    stop_requested: Arc<AtomicBool>,
}

impl<T: Transport> ThreadState<T> {
    fn run(&mut self, receiver: Receiver<Command>, config: ThreadConfig) {
        let mut next_tick = Instant::now() + config.tick;
        let mut next_view = Instant::now();
        let max_commands = 4096;
        loop {
            let now = Instant::now();
            if now >= next_tick {
                let _full = self.driver.offer(Input::Tick);
                next_tick += config.tick;
                if next_tick < now {
                    // Far behind (a long sync or a paused process): do not replay the ticks.
                    next_tick = now + config.tick;
                }
            }
            let mut stop = false;
            for _ in 0..max_commands {
                match receiver.try_recv() {
                    Ok(Command::Stop) => stop = true,
                    Ok(command) => self.take(command),
                    Err(_) => break,
                }
            }
            if stop || self.stop_requested.load(Ordering::Relaxed) {
                break;
            }
            if self.driver.has_work() {
                let waiting = &mut self.waiting;
                let answers = self
                    .driver
                    .iterate_releasing(&mut |early| answer(waiting, early));
                answer(&mut self.waiting, answers);
            } else {
                let wait = next_tick.saturating_duration_since(Instant::now());
                match receiver.recv_timeout(wait) {
                    Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    Ok(command) => self.take(command),
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
            if Instant::now() >= next_view {
                self.publish();
                next_view = Instant::now() + config.view_interval;
            }
        }
        // Requests still in the channel never reached the driver: nothing of them applied.
        while let Ok(command) = receiver.try_recv() {
            if let Command::Request { reply, .. } = command {
                let _gone = reply.send(Err(RequestError::Stopped(
                    "the node is shutting down".to_string(),
                )));
            }
        }
        let answers = self.driver.shut_down("the node is shutting down");
        answer(&mut self.waiting, answers);
        // Anything left was taken by the driver and may have been proposed.
        for (_, reply) in self.waiting.drain() {
            let _gone = reply.send(Err(RequestError::OutcomeUnknown));
        }
        self.publish();
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Input { input, bytes } => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                let _full = self.driver.offer(input);
            }
            Command::Request { request, reply } => {
                let id = self.next_request;
                self.next_request += 1;
                match self.driver.offer(Input::Request { id, request }) {
                    Ok(()) => {
                        self.waiting.insert(id, reply);
                    }
                    Err(_) => {
                        let _gone = reply.send(Err(RequestError::Busy("driver inbox full")));
                    }
                }
            }
            Command::Stop => {}
        }
    }

    fn publish(&self) {
        let driver = &self.driver;
        let node = driver.node();
        let replicas = driver
            .shards()
            .filter_map(|shard| {
                let descriptor = driver.descriptor(shard)?.clone();
                let leader = driver.leader_of(shard);
                let caught_up_learners = if leader == Some(node) {
                    descriptor
                        .learners
                        .iter()
                        .copied()
                        .filter(|&learner| driver.learner_caught_up(shard, learner))
                        .collect()
                } else {
                    Vec::new()
                };
                Some((
                    shard,
                    ReplicaView {
                        descriptor,
                        leader,
                        caught_up_learners,
                        installing: driver.is_installing(shard),
                    },
                ))
            })
            .collect();
        let view = NodeView {
            node,
            replicas,
            counters: driver.counters().clone(),
            stopped: driver.stopped().map(str::to_string),
            pending_requests: self.waiting.len(),
        };
        match self.view.lock() {
            Ok(mut slot) => *slot = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_inputs_past_the_byte_limit_are_refused_without_leaking_the_count() {
        let (sender, receiver) = std::sync::mpsc::sync_channel(8);
        let handle = DriverHandle {
            sender,
            view: Arc::default(),
            queued_bytes: Arc::default(),
            max_queued_bytes: 100,
            running: Arc::new(AtomicBool::new(true)),
            stop_requested: Arc::default(),
        };
        assert!(handle.offer_sized(Input::Tick, 60));
        assert!(!handle.offer_sized(Input::Tick, 60), "160 bytes > 100");
        assert_eq!(handle.queued_bytes.load(Ordering::Relaxed), 60);
        assert!(handle.offer(Input::Tick), "local inputs carry no bytes");
        assert!(handle.offer_sized(Input::Tick, 40), "exactly the limit");
        let queued: Vec<usize> = receiver
            .try_iter()
            .map(|command| match command {
                Command::Input { bytes, .. } => bytes,
                _ => usize::MAX,
            })
            .collect();
        assert_eq!(queued, vec![60, 0, 40]);
    }
}
