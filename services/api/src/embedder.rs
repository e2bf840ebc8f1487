//! The model on its own thread, fed by a channel (as in text-embeddings-inference): handlers
//! send texts and await the vectors; the thread takes every request waiting in the channel,
//! encodes them together (one length-sorted, token-budget pass, so concurrent queries share
//! batches) and answers each. libtorch already uses every core for one batch, so one thread per
//! model is the right amount of parallelism, and the async runtime never blocks on a forward pass.

use medembed_model::SentenceEncoder;
use tokio::sync::{mpsc, oneshot};

/// Requests waiting beyond this are refused (503) rather than queued without bound.
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
    reply: oneshot::Sender<Result<Embedded, String>>,
}

/// Why texts were not embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("the encoder is busy ({QUEUE_DEPTH} requests waiting); try again")]
    Busy,
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
    /// Moves `encoder` onto a new thread named after `name` (a job id or a model folder).
    pub fn spawn(encoder: SentenceEncoder, name: &str) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let dimension = encoder.dimension();
        std::thread::Builder::new()
            .name(format!("encoder-{name}"))
            .spawn(move || serve(encoder, receiver))
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

    /// One vector per text, in order.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded, EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Request { texts, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EmbedError::Busy,
                mpsc::error::TrySendError::Closed(_) => EmbedError::Stopped,
            })?;
        answer
            .await
            .map_err(|_| EmbedError::Stopped)?
            .map_err(EmbedError::Failed)
    }
}

fn serve(encoder: SentenceEncoder, mut receiver: mpsc::Receiver<Request>) {
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
        let all: Vec<&str> = requests
            .iter()
            .flat_map(|r| r.texts.iter().map(String::as_str))
            .collect();
        let encoded = encoder.tokenize(&all).and_then(|ids| {
            let vectors = encoder.encode_tokens(&ids, |_, _| {})?;
            Ok((ids, vectors))
        });
        match encoded {
            Ok((ids, vectors)) => {
                let mut ids = ids.into_iter();
                let mut vectors = vectors.into_iter();
                for request in requests {
                    let n = request.texts.len();
                    let tokens = ids.by_ref().take(n).map(|t| t.len()).sum();
                    let vectors = vectors.by_ref().take(n).collect();
                    let _ = request.reply.send(Ok(Embedded { vectors, tokens }));
                }
            }
            Err(e) => {
                for request in requests {
                    let _ = request.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
