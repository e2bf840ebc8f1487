//! Task queues: RabbitMQ ([`AmqpQueue`], distributed mode) and an in-process queue
//! ([`MemoryQueue`], embedded mode) behind one interface with the same semantics:
//!
//! - **publish** returns only once the message is safely queued (publisher confirms on AMQP);
//! - a consumer gets [`Delivery`]s and settles each exactly once: [`Delivery::ack`] after its
//!   outputs are durable, [`Delivery::retry`] to see it again after a delay, or
//!   [`Delivery::dead_letter`] to park it with the reason in the stage's `<queue>.dead` queue;
//! - a delivery that is never settled (the worker crashed or lost its connection) is delivered
//!   again, so every task runs at least once.
//!
//! Queue names given to this API are stage names (`clean`); the implementation adds the
//! deployment prefix (`medembed.clean`, `medembed.clean.dead`, `medembed.clean.retry.5000`).

mod amqp;
mod memory;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use amqp::AmqpQueue;
pub use memory::MemoryQueue;

use crate::config::{QueueBackend, QueueSettings};

/// Header with the 1-based attempt number of a task.
pub const HEADER_ATTEMPT: &str = "x-medembed-attempt";
/// Header with the reason a task was dead-lettered (or last retried).
pub const HEADER_ERROR: &str = "x-medembed-error";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue}: broker unavailable: {message}")]
    Unavailable { queue: String, message: String },
    #[error("queue {queue}: the broker refused the message (nack)")]
    Refused { queue: String },
    #[error("queue {queue}: the message could not be routed (queue missing?)")]
    Unroutable { queue: String },
    #[error("queue {queue}: invalid topology: {message}")]
    Topology { queue: String, message: String },
    #[error("queue connection closed")]
    Closed,
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// When a retryably failing task is tried again, and when it is given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn from_settings(s: &QueueSettings) -> Self {
        Self {
            max_attempts: s.max_attempts,
            base_delay: Duration::from_millis(s.retry_base_delay_ms),
            max_delay: Duration::from_millis(s.retry_max_delay_ms),
        }
    }

    /// The delay after failed attempt `attempt` (1-based): base · 2^(attempt-1), capped.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Whether another attempt follows failed attempt `attempt`.
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// Every distinct delay the policy can ask for (one AMQP retry queue each).
    pub fn delays(&self) -> BTreeSet<Duration> {
        (1..self.max_attempts)
            .map(|a| self.delay_after(a))
            .collect()
    }
}

/// A task parked in a `.dead` queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub reason: String,
    pub attempt: u32,
}

#[async_trait]
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// Declares the queue, its retry queues and its dead-letter queue; idempotent.
    async fn declare(&self, queue: &str) -> Result<()>;
    /// Queues a persistent message; returns once the broker has confirmed it.
    async fn publish(&self, queue: &str, body: &[u8]) -> Result<()>;
    /// Starts consuming; the consumer reconnects by itself until cancelled.
    async fn consume(&self, queue: &str) -> Result<Box<dyn Consumer>>;
    /// Messages ready in the queue (not counting ones being worked on).
    async fn depth(&self, queue: &str) -> Result<u64>;
    /// Takes up to `max` messages off the queue's dead-letter queue.
    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>>;
    /// Up to `max` messages of the queue's dead-letter queue, left where they are.
    async fn peek_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>>;
    /// Whether the broker is reachable now (for `/readyz`).
    async fn ready(&self) -> bool;
    /// Closes connections; unsettled deliveries go back to their queues.
    async fn close(&self);
}

#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; None once cancelled or the queue is closed.
    async fn next(&mut self) -> Option<Delivery>;
    /// Stops new deliveries; deliveries already handed out can still be settled.
    async fn cancel(&mut self);
    /// Releases the consumer's channel once its deliveries are settled; unsettled ones go back
    /// to the queue.
    async fn close(&mut self) {}
}

/// How a delivery is settled; one implementation per queue backend.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<()>;
    async fn retry(
        self: Box<Self>,
        body: Vec<u8>,
        next_attempt: u32,
        delay: Duration,
        reason: &str,
    ) -> Result<()>;
    async fn dead_letter(self: Box<Self>, body: Vec<u8>, attempt: u32, reason: &str) -> Result<()>;
}

/// One message handed to a consumer. Settle it with exactly one of its methods; dropping it
/// unsettled leaves it to be delivered again.
pub struct Delivery {
    pub body: Vec<u8>,
    /// 1-based attempt number (explicit retries; crash redeliveries keep the number).
    pub attempt: u32,
    /// The broker delivered this message before (a worker died or lost its connection).
    pub redelivered: bool,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new(
        body: Vec<u8>,
        attempt: u32,
        redelivered: bool,
        settle: Box<dyn Settle>,
    ) -> Self {
        Self {
            body,
            attempt,
            redelivered,
            settle,
        }
    }

    /// Done: the task's outputs are durable.
    pub async fn ack(self) -> Result<()> {
        self.settle.ack().await
    }

    /// Deliver again after `delay`, as attempt `attempt + 1`.
    pub async fn retry(self, delay: Duration, reason: &str) -> Result<()> {
        self.settle
            .retry(self.body, self.attempt + 1, delay, reason)
            .await
    }

    /// Deliver again after `delay`, as the same attempt: the task is not failing, it waits for
    /// something (another worker that owns its job now).
    pub async fn defer(self, delay: Duration, reason: &str) -> Result<()> {
        self.settle
            .retry(self.body, self.attempt, delay, reason)
            .await
    }

    /// Park in the dead-letter queue with `reason`.
    pub async fn dead_letter(self, reason: &str) -> Result<()> {
        self.settle
            .dead_letter(self.body, self.attempt, reason)
            .await
    }
}

/// Opens the queue the settings describe.
pub async fn open(settings: &QueueSettings) -> Result<Arc<dyn Queue>> {
    Ok(match settings.backend {
        QueueBackend::Amqp => Arc::new(AmqpQueue::connect(settings).await?),
        QueueBackend::Memory => Arc::new(MemoryQueue::new(RetryPolicy::from_settings(settings))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_cap() {
        let p = RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        };
        let d: Vec<u64> = (1..=5)
            .map(|a| p.delay_after(a).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
        assert_eq!(p.delays().len(), 4);
        assert!(p.allows_retry_after(5));
        assert!(!p.allows_retry_after(6));
        assert_eq!(
            p.delay_after(200),
            Duration::from_millis(500),
            "no overflow"
        );
    }
}
