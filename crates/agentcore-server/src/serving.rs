//! The checkpoints `agents.invoke` serves: each is loaded once, on its own thread, and kept
//! (at most [`MAX_SERVED_CHECKPOINTS`], the least recently used is dropped); concurrent calls
//! for one checkpoint are answered together in batches of up to [`MAX_INVOKE_BATCH`] (the
//! engine decodes a batch far faster than its queries one by one).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_train::serve::{ServeOutcome, ServeRequest, Served};
use tokio::sync::{Mutex, oneshot};

use crate::errors::ApiError;

/// Checkpoints kept loaded at once.
pub const MAX_SERVED_CHECKPOINTS: usize = 8;

/// Most queries answered in one batch: 16 gave 10.6 invocations/s at 50 callers, a batch that
/// takes them all more (`agentcore bench invoke`, BENCHMARKS.md).
pub const MAX_INVOKE_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<ServeOutcome, String>>;

struct Loaded {
    tx: mpsc::Sender<(ServeRequest, Reply)>,
    last_used: u64,
}

/// The loaded checkpoints of a server.
pub struct Serving {
    data_dir: PathBuf,
    sandbox: std::sync::OnceLock<Arc<PythonSandbox>>,
    loaded: Mutex<(HashMap<String, Loaded>, u64)>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").field("data_dir", &self.data_dir).finish_non_exhaustive()
    }
}

/// The answering loop of one checkpoint: wait for a query, take the ones waiting behind it (up
/// to a batch), answer them together; ends when the last sender is dropped.
fn answer_loop(served: &Served, rx: &mpsc::Receiver<(ServeRequest, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_INVOKE_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<ServeRequest>, Vec<Reply>) = batch.into_iter().unzip();
        match served.answer(&requests) {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

impl Serving {
    /// Serving from the runs under `data_dir`.
    #[must_use]
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            sandbox: std::sync::OnceLock::new(),
            loaded: Mutex::new((HashMap::new(), 0)),
        }
    }

    fn sandbox(&self) -> Result<Arc<PythonSandbox>, ApiError> {
        if let Some(s) = self.sandbox.get() {
            return Ok(Arc::clone(s));
        }
        let s = Arc::new(
            PythonSandbox::detect()
                .map_err(|e| ApiError::internal("the tool sandbox for invocations", e))?,
        );
        Ok(Arc::clone(self.sandbox.get_or_init(|| s)))
    }

    /// Answers `request` with checkpoint `checkpoint_id` of job `job_id`, loading it first if
    /// it is not loaded, from the directory `locate` finds (awaited only then: an invocation of
    /// a checkpoint being served reads and hashes no checkpoint files).
    ///
    /// # Errors
    /// The checkpoint cannot be found or loaded, the model failed.
    pub async fn answer(
        &self,
        job_id: &str,
        checkpoint_id: &str,
        locate: impl Future<Output = Result<PathBuf, ApiError>>,
        request: ServeRequest,
    ) -> Result<ServeOutcome, ApiError> {
        let tx = self.sender(job_id, checkpoint_id, locate).await?;
        let (reply, answer) = oneshot::channel();
        if tx.send((request, reply)).is_err() {
            // Its thread ended (a panic): load it again next time.
            self.loaded.lock().await.0.remove(checkpoint_id);
            return Err(ApiError::internal("invoke", "the checkpoint's serving thread ended"));
        }
        match answer.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(ApiError::internal("invoke", e)),
            Err(_) => {
                self.loaded.lock().await.0.remove(checkpoint_id);
                Err(ApiError::internal("invoke", "the checkpoint's serving thread ended"))
            }
        }
    }

    async fn sender(
        &self,
        job_id: &str,
        checkpoint_id: &str,
        locate: impl Future<Output = Result<PathBuf, ApiError>>,
    ) -> Result<mpsc::Sender<(ServeRequest, Reply)>, ApiError> {
        // Loads run under the lock: a checkpoint is never loaded twice at once.
        let mut guard = self.loaded.lock().await;
        let (map, clock) = &mut *guard;
        *clock += 1;
        if let Some(l) = map.get_mut(checkpoint_id) {
            l.last_used = *clock;
            return Ok(l.tx.clone());
        }
        let dir = locate.await?;
        let sandbox = self.sandbox()?;
        let (tx, rx) = mpsc::channel::<(ServeRequest, Reply)>();
        let (ready_tx, ready) = oneshot::channel::<Result<String, String>>();
        let (data_dir, job) = (self.data_dir.clone(), job_id.to_owned());
        let name = format!("serve-{}", &checkpoint_id.chars().take(12).collect::<String>());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || match Served::load(&data_dir, &job, &dir, sandbox) {
                Ok(served) => {
                    let _ = ready_tx.send(Ok(served.describe()));
                    answer_loop(&served, &rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| ApiError::internal("starting a serving thread", e))?;
        let described = ready
            .await
            .map_err(|_| ApiError::internal("loading a checkpoint", "the loader ended"))?
            .map_err(|e| ApiError::internal("loading a checkpoint", e))?;
        tracing::info!(job_id = %job_id, checkpoint_id = %checkpoint_id, policy = %described,
            "serving a checkpoint");
        if map.len() >= MAX_SERVED_CHECKPOINTS
            && let Some(oldest) =
                map.iter().min_by_key(|(_, l)| l.last_used).map(|(k, _)| k.clone())
        {
            // Its thread ends once the calls in flight are answered.
            map.remove(&oldest);
        }
        map.insert(checkpoint_id.to_owned(), Loaded { tx: tx.clone(), last_used: *clock });
        Ok(tx)
    }

    /// Checkpoints loaded now.
    pub async fn loaded(&self) -> usize {
        self.loaded.lock().await.0.len()
    }
}
