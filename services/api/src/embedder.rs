//! The model on its own thread, fed by a channel (as in text-embeddings-inference): handlers
//! send texts and await the vectors; the thread takes every request waiting in the channel,
//! encodes them together (one length-sorted, token-budget pass, so concurrent queries share
//! batches) and answers each. libtorch already uses every core for one batch, so one thread per
//! model is the right amount of parallelism, and the async runtime never blocks on a forward pass.
//!
//! What may wait is bounded by texts, over every model ([`crate::limits::Limits::admit_texts`]):
//! each request carries its permit to the thread, which drops it once the texts are encoded (or
//! refused), so a request whose caller gave up still counts until the thread is done with it.

use medembed_model::SentenceEncoder;
use tokio::sync::{mpsc, oneshot};

use crate::limits::TextPermit;

/// Requests waiting in one model's channel; the text permits bound them first.
const QUEUE_DEPTH: usize = 1024;
/// Most texts one pass takes from waiting requests.
const MAX_TEXTS_PER_PASS: usize = 512;

/// Vectors of one request and the tokens its texts were read as.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}

struct Request {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Embedded, EmbedError>>,
    _permit: TextPermit,
}

/// Why texts were not embedded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("the encoder is busy ({QUEUE_DEPTH} requests waiting); try again")]
    Busy,
    #[error(
        "the input is {tokens} tokens after truncation to the model's length; at most {max} per request (api.max_tokens_per_request)"
    )]
    TooManyTokens { tokens: usize, max: usize },
    #[error("the encoder stopped")]
    Stopped,
    #[error("encoding failed: {0}")]
    Failed(String),
}

/// A handle on a model thread; cheap to clone. The thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Embedder {
    sender: mpsc::Sender<Request>,
    dimension: usize,
    name: String,
}

impl Embedder {
    /// Moves `encoder` onto a new thread named after `name` (a job id or a model folder);
    /// a request of more than `max_tokens` tokens is refused without being encoded.
    pub fn spawn(encoder: SentenceEncoder, name: &str, max_tokens: usize) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let dimension = encoder.dimension();
        std::thread::Builder::new()
            .name(format!("encoder-{name}"))
            .spawn(move || serve(encoder, receiver, max_tokens))
            .expect("spawning an encoder thread");
        Self {
            sender,
            dimension,
            name: name.to_string(),
        }
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One vector per text, in order; `permit` admitted the texts and is held until they are
    /// encoded.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        permit: TextPermit,
    ) -> Result<Embedded, EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Request {
                texts,
                reply,
                _permit: permit,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EmbedError::Busy,
                mpsc::error::TrySendError::Closed(_) => EmbedError::Stopped,
            })?;
        answer.await.map_err(|_| EmbedError::Stopped)?
    }
}

fn serve(encoder: SentenceEncoder, mut receiver: mpsc::Receiver<Request>, max_tokens: usize) {
    while let Some(first) = receiver.blocking_recv() {
        let mut requests = vec![first];
        let mut texts = requests[0].texts.len();
        while texts < MAX_TEXTS_PER_PASS {
            match receiver.try_recv() {
                Ok(next) => {
                    texts += next.texts.len();
                    requests.push(next);
                }
                Err(_) => break,
            }
        }
        // Each request's texts as tokens; a request over the token limit is answered now.
        let mut accepted = Vec::with_capacity(requests.len());
        for request in requests {
            let texts: Vec<&str> = request.texts.iter().map(String::as_str).collect();
            match encoder.tokenize(&texts) {
                Ok(ids) => {
                    let tokens = ids.iter().map(Vec::len).sum::<usize>();
                    if tokens > max_tokens {
                        let _ = request.reply.send(Err(EmbedError::TooManyTokens {
                            tokens,
                            max: max_tokens,
                        }));
                    } else {
                        accepted.push((request, ids));
                    }
                }
                Err(e) => {
                    let _ = request.reply.send(Err(EmbedError::Failed(e.to_string())));
                }
            }
        }
        if accepted.is_empty() {
            continue;
        }
        let all: Vec<Vec<i64>> = accepted
            .iter()
            .flat_map(|(_, ids)| ids.iter().cloned())
            .collect();
        match encoder.encode_tokens(&all, |_, _| {}) {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for (request, ids) in accepted {
                    let tokens = ids.iter().map(Vec::len).sum();
                    let vectors = vectors.by_ref().take(ids.len()).collect();
                    let _ = request.reply.send(Ok(Embedded { vectors, tokens }));
                }
            }
            Err(e) => {
                for (request, _) in accepted {
                    let _ = request.reply.send(Err(EmbedError::Failed(e.to_string())));
                }
            }
        }
    }
}
