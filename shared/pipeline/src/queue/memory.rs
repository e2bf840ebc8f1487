//! The in-process queue of embedded mode: the same settle semantics as RabbitMQ, in memory.
//!
//! A delivery dropped unsettled (its task panicked or was aborted) goes back to the front of its
//! queue, as the broker does for a dead consumer. Delayed retries are timers in this process;
//! after a restart, embedded mode resumes from the job's state in the store, not from the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Consumer, DeadLetter, Delivery, Queue, Result, RetryPolicy, Settle};

#[derive(Debug, Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queues: Mutex<HashMap<String, QueueState>>,
    retry: RetryPolicy,
    closed: CancellationToken,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<Message>,
    dead: VecDeque<DeadLetter>,
    notify: Arc<Notify>,
}

#[derive(Debug, Clone)]
struct Message {
    body: Vec<u8>,
    attempt: u32,
    redelivered: bool,
}

impl Inner {
    fn with_queue<R>(&self, queue: &str, f: impl FnOnce(&mut QueueState) -> R) -> R {
        let mut queues = self.queues.lock().expect("not poisoned");
        f(queues.entry(queue.to_string()).or_default())
    }

    fn push(&self, queue: &str, message: Message, front: bool) {
        self.with_queue(queue, |q| {
            if front {
                q.ready.push_front(message);
            } else {
                q.ready.push_back(message);
            }
            q.notify.notify_one();
        });
    }
}

impl MemoryQueue {
    pub fn new(retry: RetryPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                queues: Mutex::new(HashMap::new()),
                retry,
                closed: CancellationToken::new(),
            }),
        }
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn declare(&self, queue: &str) -> Result<()> {
        self.inner.with_queue(queue, |_| ());
        Ok(())
    }

    async fn publish(&self, queue: &str, body: &[u8]) -> Result<()> {
        self.inner.push(
            queue,
            Message {
                body: body.to_vec(),
                attempt: 1,
                redelivered: false,
            },
            false,
        );
        Ok(())
    }

    async fn consume(&self, queue: &str) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(MemoryConsumer {
            inner: self.inner.clone(),
            queue: queue.to_string(),
            cancelled: CancellationToken::new(),
        }))
    }

    async fn depth(&self, queue: &str) -> Result<u64> {
        Ok(self.inner.with_queue(queue, |q| q.ready.len() as u64))
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.inner.with_queue(queue, |q| {
            let n = max.min(q.dead.len());
            q.dead.drain(..n).collect()
        }))
    }

    async fn peek_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        Ok(self
            .inner
            .with_queue(queue, |q| q.dead.iter().take(max).cloned().collect()))
    }

    async fn ready(&self) -> bool {
        !self.inner.closed.is_cancelled()
    }

    async fn close(&self) {
        self.inner.closed.cancel();
    }
}

struct MemoryConsumer {
    inner: Arc<Inner>,
    queue: String,
    cancelled: CancellationToken,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let (message, notify) = self
                .inner
                .with_queue(&self.queue, |q| (q.ready.pop_front(), q.notify.clone()));
            if let Some(m) = message {
                let settle = MemorySettle {
                    inner: self.inner.clone(),
                    queue: self.queue.clone(),
                    unsettled: Some(m.clone()),
                };
                return Some(Delivery::new(
                    m.body,
                    m.attempt,
                    m.redelivered,
                    Box::new(settle),
                ));
            }
            // notify_one stores a permit when nobody waits, so a push between the pop above and
            // this wait is not missed.
            tokio::select! {
                _ = notify.notified() => {}
                _ = self.cancelled.cancelled() => return None,
                _ = self.inner.closed.cancelled() => return None,
            }
        }
    }

    async fn cancel(&mut self) {
        self.cancelled.cancel();
    }
}

struct MemorySettle {
    inner: Arc<Inner>,
    queue: String,
    /// The message, until it is settled; put back on drop otherwise.
    unsettled: Option<Message>,
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(mut m) = self.unsettled.take() {
            m.redelivered = true;
            self.inner.push(&self.queue, m, true);
        }
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.unsettled = None;
        Ok(())
    }

    async fn retry(
        mut self: Box<Self>,
        body: Vec<u8>,
        next_attempt: u32,
        delay: Duration,
        _reason: &str,
    ) -> Result<()> {
        self.unsettled = None;
        let inner = self.inner.clone();
        let queue = self.queue.clone();
        let message = Message {
            body,
            attempt: next_attempt,
            redelivered: false,
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => inner.push(&queue, message, false),
                _ = inner.closed.cancelled() => {}
            }
        });
        Ok(())
    }

    async fn dead_letter(
        mut self: Box<Self>,
        body: Vec<u8>,
        attempt: u32,
        reason: &str,
    ) -> Result<()> {
        self.unsettled = None;
        let dead = DeadLetter {
            body,
            reason: reason.to_string(),
            attempt,
        };
        self.inner
            .with_queue(&self.queue, |q| q.dead.push_back(dead));
        Ok(())
    }
}

impl MemoryQueue {
    /// The retry policy this queue was made with.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }
}
