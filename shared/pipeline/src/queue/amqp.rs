//! RabbitMQ through lapin.
//!
//! Topology per stage queue `q` (declared idempotently by every worker at start):
//! - `{prefix}.q`: quorum queue; rejected or over-delivered messages go to the dead-letter
//!   exchange, and `x-delivery-limit` dead-letters a task that keeps killing its worker;
//! - `{prefix}.dlx` (direct exchange) → `{prefix}.q.dead`: parked tasks, with the reason in the
//!   `x-medembed-error` header;
//! - `{prefix}.q.retry.{ms}`: one classic queue per backoff delay; its messages expire after
//!   `{ms}` and are dead-lettered back into `{prefix}.q`. One queue per delay (instead of per-message
//!   TTLs) because a queue only expires messages at its head.
//!
//! lapin does not recover a lost connection by itself, so [`AmqpQueue`] reconnects with backoff,
//! both for publishing and in each consumer. A delivery keeps the acker of the channel it came on:
//! once that channel is gone its acker is poisoned and acks are refused locally, so a delivery tag
//! of a dead channel is never sent on a new one; the broker redelivers those messages instead.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{
    Consumer, DeadLetter, Delivery, HEADER_ATTEMPT, HEADER_ERROR, Queue, QueueError, Result,
    RetryPolicy, Settle,
};
use crate::config::{QueueSettings, redact_url};

/// How long a publish keeps trying to reach the broker before it reports the broker unavailable.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct AmqpQueue {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: String,
    prefetch: u16,
    delivery_limit: u32,
    retry: RetryPolicy,
    reconnect_initial: Duration,
    reconnect_max: Duration,
    link: Mutex<Option<Link>>,
    declared: std::sync::Mutex<HashSet<String>>,
    closed: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpQueue")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A connection and its publishing channel (in confirm mode).
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
}

impl Link {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

fn unavailable(queue: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable {
        queue: queue.to_string(),
        message: e.to_string(),
    }
}

/// PRECONDITION_FAILED: the queue exists with other arguments (a real conflict, not a hiccup).
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    let n: i64 = match value {
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(n).ok()
}

fn header_string(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The reason RabbitMQ itself gave when it dead-lettered a message (e.g. the delivery limit).
fn x_death_reason(props: &BasicProperties) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = props.headers().as_ref()?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => {
            Some(format!("broker: {}", String::from_utf8_lossy(s.as_bytes())))
        }
        _ => None,
    }
}

fn message_properties(attempt: u32, error: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    if let Some(error) = error {
        // Headers are small; a long error chain is cut rather than refused by the broker.
        let cut: String = error.chars().take(4000).collect();
        headers.insert(HEADER_ERROR.into(), long_string(&cut));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(headers)
}

impl Inner {
    fn full_name(&self, queue: &str) -> String {
        format!("{}.{queue}", self.prefix)
    }
    fn dlx(&self) -> String {
        format!("{}.dlx", self.prefix)
    }
    fn retry_name(&self, queue: &str, delay: Duration) -> String {
        format!("{}.{queue}.retry.{}", self.prefix, delay.as_millis())
    }

    async fn open_link(&self) -> lapin::Result<Link> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("medembed pid {}", std::process::id()).into());
        let connection = Connection::connect(&self.url, props).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Link {
            connection: Arc::new(connection),
            publisher,
        })
    }

    /// A live connection and publishing channel, reconnecting with backoff; gives up after
    /// `patience` (None = keep trying until the queue is closed).
    async fn link(&self, patience: Option<Duration>) -> Result<(Arc<Connection>, Channel)> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref().filter(|l| l.alive()) {
            return Ok((link.connection.clone(), link.publisher.clone()));
        }
        *guard = None;
        let started = tokio::time::Instant::now();
        let mut delay = self.reconnect_initial;
        loop {
            if self.closed.is_cancelled() {
                return Err(QueueError::Closed);
            }
            match self.open_link().await {
                Ok(link) => {
                    tracing::info!(url = %redact_url(&self.url), "connected to the broker");
                    let pair = (link.connection.clone(), link.publisher.clone());
                    *guard = Some(link);
                    return Ok(pair);
                }
                Err(e) => {
                    if patience.is_some_and(|p| started.elapsed() >= p) {
                        return Err(unavailable("(connect)", e));
                    }
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker unreachable; reconnecting");
                    let jitter =
                        Duration::from_millis(rand::random_range(0..=delay.as_millis() as u64 / 4));
                    tokio::select! {
                        _ = tokio::time::sleep(delay + jitter) => {}
                        _ = self.closed.cancelled() => return Err(QueueError::Closed),
                    }
                    delay = (delay * 2).min(self.reconnect_max);
                }
            }
        }
    }

    async fn declare_on(&self, channel: &Channel, queue: &str) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let full = self.full_name(queue);
        let dead = format!("{full}.dead");
        channel
            .exchange_declare(
                self.dlx().as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), long_string("quorum"));
        channel
            .queue_declare(dead.as_str().into(), durable, quorum.clone())
            .await?;
        channel
            .queue_bind(
                dead.as_str().into(),
                self.dlx().as_str().into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut main = quorum;
        main.insert("x-dead-letter-exchange".into(), long_string(&self.dlx()));
        main.insert("x-dead-letter-routing-key".into(), long_string(queue));
        main.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        channel
            .queue_declare(full.as_str().into(), durable, main)
            .await?;
        for delay in self.retry.delays() {
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            args.insert("x-dead-letter-exchange".into(), long_string(""));
            args.insert("x-dead-letter-routing-key".into(), long_string(&full));
            channel
                .queue_declare(self.retry_name(queue, delay).as_str().into(), durable, args)
                .await?;
        }
        Ok(())
    }

    /// Declares `queue`'s topology once per process (declaring is idempotent, but costs round trips).
    async fn ensure_declared(&self, connection: &Connection, queue: &str) -> Result<()> {
        if self.declared.lock().expect("not poisoned").contains(queue) {
            return Ok(());
        }
        // A failed declare closes its channel, so use a throwaway one.
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable(queue, e))?;
        let result = self.declare_on(&channel, queue).await;
        let _ = channel.close(200, "declared".into()).await;
        match result {
            Ok(()) => {
                self.declared
                    .lock()
                    .expect("not poisoned")
                    .insert(queue.to_string());
                Ok(())
            }
            Err(e) if is_precondition_failed(&e) => Err(QueueError::Topology {
                queue: self.full_name(queue),
                message: format!(
                    "{e} (the queue exists with other arguments: delete it or keep its settings)"
                ),
            }),
            Err(e) => Err(unavailable(queue, e)),
        }
    }

    /// [`Inner::ensure_declared`], retried with backoff while the broker is unavailable (e.g. it
    /// refuses new queues for a few seconds after a restart); a topology conflict is final.
    async fn declare_with_retry(&self, queue: &str) -> Result<Arc<Connection>> {
        let started = tokio::time::Instant::now();
        let mut delay = self.reconnect_initial;
        loop {
            let (connection, _) = self.link(Some(PUBLISH_PATIENCE)).await?;
            match self.ensure_declared(&connection, queue).await {
                Ok(()) => return Ok(connection),
                Err(e @ QueueError::Topology { .. }) => return Err(e),
                Err(e) if started.elapsed() >= PUBLISH_PATIENCE => return Err(e),
                Err(e) => {
                    tracing::warn!(queue, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot declare the queue yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.reconnect_max);
                }
            }
        }
    }

    /// Publishes with confirms to `exchange`/`routing_key`, reconnecting as needed.
    async fn publish_raw(
        &self,
        label: &str,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            let (_, channel) = self.link(Some(PUBLISH_PATIENCE)).await?;
            let attempt = async {
                channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        body,
                        props.clone(),
                    )
                    .await?
                    .await
            };
            match attempt.await {
                Ok(Confirmation::Ack(None)) => return Ok(()),
                Ok(Confirmation::Ack(Some(_))) => {
                    return Err(QueueError::Unroutable {
                        queue: label.to_string(),
                    });
                }
                Ok(Confirmation::Nack(_)) => {
                    return Err(QueueError::Refused {
                        queue: label.to_string(),
                    });
                }
                Ok(Confirmation::NotRequested) => {
                    unreachable!("the publishing channel is in confirm mode")
                }
                Err(e) => {
                    // The channel or connection died under us; the message may or may not have
                    // been queued. Publishing again is safe: tasks are idempotent.
                    if started.elapsed() >= PUBLISH_PATIENCE {
                        return Err(unavailable(label, e));
                    }
                    tracing::warn!(queue = label, error = %e, "publish failed; reconnecting and publishing again");
                    tokio::time::sleep(self.reconnect_initial).await;
                }
            }
        }
    }
}

impl AmqpQueue {
    /// Connects (retrying with backoff for up to two minutes) and returns the queue.
    pub async fn connect(settings: &QueueSettings) -> Result<Self> {
        let mut url = settings.amqp_url.clone();
        if !settings.amqp_username.is_empty() {
            url = with_username(&url, &settings.amqp_username);
        }
        if !settings.amqp_password.is_empty() {
            url = with_password(&url, settings.amqp_password.expose());
        }
        let queue = Self {
            inner: Arc::new(Inner {
                url,
                prefix: settings.prefix.clone(),
                prefetch: settings.prefetch,
                delivery_limit: settings.delivery_limit,
                retry: RetryPolicy::from_settings(settings),
                reconnect_initial: Duration::from_millis(settings.reconnect_initial_delay_ms),
                reconnect_max: Duration::from_millis(settings.reconnect_max_delay_ms),
                link: Mutex::new(None),
                declared: std::sync::Mutex::new(HashSet::new()),
                closed: CancellationToken::new(),
            }),
        };
        queue.inner.link(Some(PUBLISH_PATIENCE)).await?;
        Ok(queue)
    }

    /// Full broker-side name of a stage queue (for operators and tests).
    /// Up to `max` messages of `queue`'s dead-letter queue, oldest first; removed when `take`,
    /// else left in place (unacknowledged, they return when the channel closes).
    async fn read_dead_letters(
        &self,
        queue: &str,
        max: usize,
        take: bool,
    ) -> Result<Vec<DeadLetter>> {
        let connection = self.inner.declare_with_retry(queue).await?;
        let dead = format!("{}.dead", self.inner.full_name(queue));
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable(&dead, e))?;
        let mut out = Vec::new();
        while out.len() < max {
            let got = channel
                .basic_get(dead.as_str().into(), BasicGetOptions::default())
                .await
                .map_err(|e| unavailable(&dead, e))?;
            let Some(message) = got else { break };
            let delivery = &message.delivery;
            let props = &delivery.properties;
            out.push(DeadLetter {
                body: delivery.data.clone(),
                reason: header_string(props, HEADER_ERROR)
                    .or_else(|| x_death_reason(props))
                    .unwrap_or_else(|| "unknown".to_string()),
                attempt: header_u32(props, HEADER_ATTEMPT).unwrap_or(1),
            });
            if take {
                delivery
                    .acker
                    .ack(lapin::options::BasicAckOptions::default())
                    .await
                    .map_err(|e| unavailable(&dead, e))?;
            }
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(out)
    }

    pub fn broker_name(&self, queue: &str) -> String {
        self.inner.full_name(queue)
    }
}

/// Puts `password` into the userinfo of an amqp URL (`amqp://user@host` → `amqp://user:pw@host`).
/// `url` with its user replaced by `user` (and no password: it comes from `amqp_password`).
/// One URL serves every component; each may still log in as its own user.
fn with_username(url: &str, user: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{}@{host}", percent_encode(user))
        }
        None => url.to_string(),
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn with_password(url: &str, password: &str) -> String {
    let encoded = percent_encode(password);
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:{encoded}@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[async_trait]
impl Queue for AmqpQueue {
    async fn declare(&self, queue: &str) -> Result<()> {
        self.inner.declare_with_retry(queue).await.map(|_| ())
    }

    async fn publish(&self, queue: &str, body: &[u8]) -> Result<()> {
        self.declare(queue).await?;
        let full = self.inner.full_name(queue);
        self.inner
            .publish_raw(&full, "", &full, body, message_properties(1, None))
            .await
    }

    async fn consume(&self, queue: &str) -> Result<Box<dyn Consumer>> {
        self.declare(queue).await?;
        Ok(Box::new(AmqpConsumer {
            inner: self.inner.clone(),
            queue: queue.to_string(),
            tag: format!("{}-{}-{}", queue, std::process::id(), rand::random::<u32>()),
            channel: None,
            stream: None,
            cancelled: false,
        }))
    }

    async fn depth(&self, queue: &str) -> Result<u64> {
        let connection = self.inner.declare_with_retry(queue).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable(queue, e))?;
        let full = self.inner.full_name(queue);
        let declared = channel
            .queue_declare(
                full.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&full, e));
        let _ = channel.close(200, "done".into()).await;
        Ok(u64::from(declared?.message_count()))
    }

    async fn take_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        self.read_dead_letters(queue, max, true).await
    }

    async fn peek_dead_letters(&self, queue: &str, max: usize) -> Result<Vec<DeadLetter>> {
        self.read_dead_letters(queue, max, false).await
    }

    async fn ready(&self) -> bool {
        self.inner
            .link
            .lock()
            .await
            .as_ref()
            .is_some_and(Link::alive)
    }

    async fn close(&self) {
        self.inner.closed.cancel();
        if let Some(link) = self.inner.link.lock().await.take() {
            let _ = link
                .connection
                .close(200, "worker shutting down".into())
                .await;
        }
    }
}

struct AmqpConsumer {
    inner: Arc<Inner>,
    queue: String,
    tag: String,
    channel: Option<Channel>,
    stream: Option<lapin::Consumer>,
    cancelled: bool,
}

impl AmqpConsumer {
    async fn subscribe(&mut self) -> Result<()> {
        let (connection, _) = self.inner.link(None).await?;
        self.inner.ensure_declared(&connection, &self.queue).await?;
        let full = self.inner.full_name(&self.queue);
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable(&full, e))?;
        channel
            .basic_qos(self.inner.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| unavailable(&full, e))?;
        let stream = channel
            .basic_consume(
                full.as_str().into(),
                ShortString::from(self.tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&full, e))?;
        self.channel = Some(channel);
        self.stream = Some(stream);
        Ok(())
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        let mut delay = self.inner.reconnect_initial;
        loop {
            if self.cancelled || self.inner.closed.is_cancelled() {
                return None;
            }
            if self.stream.is_none() {
                match self.subscribe().await {
                    Ok(()) => delay = self.inner.reconnect_initial,
                    Err(QueueError::Closed) => return None,
                    Err(e) => {
                        tracing::warn!(queue = %self.queue, error = %e, "cannot subscribe; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.inner.closed.cancelled() => return None,
                        }
                        delay = (delay * 2).min(self.inner.reconnect_max);
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("subscribed above");
            match stream.next().await {
                Some(Ok(d)) => {
                    let attempt = header_u32(&d.properties, HEADER_ATTEMPT)
                        .unwrap_or(1)
                        .max(1);
                    let settle = AmqpSettle {
                        inner: self.inner.clone(),
                        queue: self.queue.clone(),
                        acker: d.acker,
                    };
                    return Some(Delivery::new(
                        d.data,
                        attempt,
                        d.redelivered,
                        Box::new(settle),
                    ));
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.queue, error = %e, "lost the consumer channel; resubscribing");
                    self.stream = None;
                    self.channel = None;
                }
                None => {
                    if self.cancelled {
                        return None;
                    }
                    tracing::warn!(queue = %self.queue, "consumer ended by the broker; resubscribing");
                    self.stream = None;
                    self.channel = None;
                }
            }
        }
    }

    async fn cancel(&mut self) {
        self.cancelled = true;
        if let Some(channel) = &self.channel {
            let _ = channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }

    async fn close(&mut self) {
        self.stream = None;
        if let Some(channel) = self.channel.take() {
            let _ = channel.close(200, "consumer done".into()).await;
        }
    }
}

struct AmqpSettle {
    inner: Arc<Inner>,
    queue: String,
    acker: lapin::Acker,
}

impl AmqpSettle {
    async fn ack_original(&self) -> Result<()> {
        match self
            .acker
            .ack(lapin::options::BasicAckOptions::default())
            .await
        {
            Ok(true) => Ok(()),
            // Poisoned: the channel died, the broker will deliver the message again.
            Ok(false) => Err(unavailable(
                &self.queue,
                "channel closed before the ack; the task will be redelivered",
            )),
            Err(e) => Err(unavailable(&self.queue, e)),
        }
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.ack_original().await
    }

    async fn retry(
        self: Box<Self>,
        body: Vec<u8>,
        next_attempt: u32,
        delay: Duration,
        reason: &str,
    ) -> Result<()> {
        // Copy first, then ack: a crash in between leaves a duplicate, never a loss.
        let delay = self
            .inner
            .retry
            .delays()
            .into_iter()
            .find(|d| *d >= delay)
            .unwrap_or(delay);
        let target = self.inner.retry_name(&self.queue, delay);
        self.inner
            .publish_raw(
                &target,
                "",
                &target,
                &body,
                message_properties(next_attempt, Some(reason)),
            )
            .await?;
        self.ack_original().await
    }

    async fn dead_letter(self: Box<Self>, body: Vec<u8>, attempt: u32, reason: &str) -> Result<()> {
        let dlx = self.inner.dlx();
        self.inner
            .publish_raw(
                &format!("{}.dead", self.inner.full_name(&self.queue)),
                &dlx,
                &self.queue,
                &body,
                message_properties(attempt, Some(reason)),
            )
            .await?;
        self.ack_original().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_inserted_and_escaped() {
        assert_eq!(
            with_password("amqp://guest@h:5672/%2f", "p@ss/w"),
            "amqp://guest:p%40ss%2Fw@h:5672/%2f"
        );
        assert_eq!(with_password("amqp://u:old@h", "new"), "amqp://u:new@h");
        assert_eq!(
            with_username("amqp://medembed@rabbitmq:5672/%2f", "medembed-api"),
            "amqp://medembed-api@rabbitmq:5672/%2f"
        );
        assert_eq!(with_username("amqp://h:5672", "a b"), "amqp://a%20b@h:5672");
    }
}
