//! The agentcore training service (`../shared/api-contract.md`):
//!
//! - `POST /api/v1/jsonrpc`: JSON-RPC 2.0 (single calls, batches, notifications) with the
//!   contract's methods and error codes; [`rpc`].
//! - Jobs are queued in the store and run by a pool of in-process workers with leases and
//!   heartbeats ([`worker`]); `agentcore worker` runs more of them in other processes.
//! - `GET /training/ws/{job_id}`: live `progress`, `checkpoint`, `status` and `budget` messages
//!   ([`ws`]).
//! - Webhooks with Standard Webhooks signatures and retries ([`webhooks`]).
//! - `GET /metrics` (Prometheus text, [`metrics`]), `GET /healthz` (liveness) and `GET /readyz`
//!   (readiness: the database answers).
//! - Bearer JWTs ([`auth`]), per-caller rate limits ([`limits`]) and a body size limit.
#![deny(missing_docs)]

pub mod agents;
pub mod auth;
mod errors;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod rpc;
pub mod serving;
pub mod webhooks;
pub mod worker;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use agentcore_store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::auth::Auth;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::webhooks::WebhookConfig;
use crate::worker::{WorkerConfig, Workers};

/// Everything a server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Run directories, the warm-start cache and (by default) the SQLite store.
    pub data_dir: PathBuf,
    /// Token checking.
    pub auth: auth::AuthConfig,
    /// In-process workers (0: only `agentcore worker` processes run jobs).
    pub workers: usize,
    /// Worker leases and polling.
    pub worker: WorkerConfig,
    /// Webhook delivery.
    pub webhooks: WebhookConfig,
    /// Largest request body in bytes (default 32 MiB).
    pub body_limit: usize,
    /// Multiplies the contract's rate limits (1 in production).
    pub rate_limit_scale: u32,
    /// `/metrics` without a token (aggregates only; per-job series need a token).
    pub public_metrics: bool,
    /// How long a client may take to send a request's headers; a connection that has not sent
    /// them by then is closed (slow-header clients cannot hold connections open).
    pub header_read_timeout: std::time::Duration,
    /// Open connections at most; one accepted beyond it is closed at once.
    pub max_connections: usize,
    /// Where `agents.register` may point a local model (`model.path`): paths elsewhere are
    /// refused without being looked at, so registering does not tell which server files exist
    /// (default `<data_dir>/models`).
    pub models_dir: PathBuf,
    /// The MLflow tracking server jobs with `report_to: [mlflow]` log to (none: such jobs are
    /// refused). Jobs never name one themselves: the server does not call URLs a caller gives.
    pub mlflow_tracking_uri: Option<String>,
    /// Whether registered agents' OpenAI-compatible endpoints (and reflectors) may be loopback,
    /// private or link-local addresses, or this host's (default: no; a tenant's agent must not
    /// make the workers call into the server's own network). On for a server whose inference
    /// runs beside it (llama.cpp on loopback).
    pub allow_private_endpoints: bool,
}

impl ServerConfig {
    /// Defaults around a data directory and a key.
    #[must_use]
    pub fn new(data_dir: PathBuf, auth: auth::AuthConfig) -> Self {
        Self {
            worker: WorkerConfig::new(data_dir.clone()),
            models_dir: data_dir.join("models"),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            data_dir,
            auth,
            workers: 1,
            webhooks: WebhookConfig::default(),
            allow_private_endpoints: false,
            body_limit: 32 << 20,
            rate_limit_scale: 1,
            public_metrics: true,
            mlflow_tracking_uri: None,
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// The settings.
    pub config: ServerConfig,
    /// Token checking.
    pub auth: Auth,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Histograms.
    pub metrics: Arc<Metrics>,
    /// Turns true when the server stops (WebSocket followers end).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The checkpoints `agents.invoke` serves.
    pub serving: serving::Serving,
    /// Orders the A/B tests' reads and writes after outcomes within this process.
    pub ab_lock: tokio::sync::Mutex<()>,
}

/// Default of [`ServerConfig::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Default of [`ServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Serves HTTP/1.1 (with upgrades, for WebSockets) on `listener` until `stop` turns true, then
/// lets open requests finish. Each connection must send its headers within the header timeout;
/// beyond `max_connections` open ones, a new connection is closed at once.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    (header_read_timeout, max_connections): (std::time::Duration, usize),
) {
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|v| *v).await; } => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tracing::warn!(max_connections, "connection refused: too many open connections");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
        let conn =
            builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).with_upgrades();
        let mut stopping = stop.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = async { let _ = stopping.wait_for(|v| *v).await; } => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    // Every connection's permit back: all of them have finished.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = open.acquire_many(all).await;
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route(agentcore_api::RPC_PATH, post(rpc::handle))
        .route("/training/ws/{job_id}", get(ws::handle))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Readiness: 200 `ready` when the store answers a query, else 503 naming the database (a
/// Kubernetes readiness probe takes the pod out of its Service while the database is away).
async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> (axum::http::StatusCode, String) {
    match state.store.job_counts().await {
        Ok(_) => (axum::http::StatusCode::OK, "ready".into()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: the database did not answer");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the database did not answer".into(),
            )
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<AppState>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens the store (`<data_dir>/agentcore.db` unless `database` names another: a SQLite
    /// path or URL, or `postgres://...`; see [`Store::connect`]), binds
    /// `addr`, starts the workers and the webhook deliverer, and serves on the current runtime.
    ///
    /// # Errors
    /// The store, the key or the address.
    pub async fn start(
        config: ServerConfig,
        database: Option<String>,
        addr: SocketAddr,
    ) -> Result<Self, String> {
        let store = match database {
            Some(url) => Store::connect(&url).await,
            None => Store::open(&config.data_dir.join("agentcore.db")).await,
        }
        .map_err(|e| e.to_string())?;
        agents::register_builtin_agent(&store).await.map_err(|e| e.to_string())?;
        let auth = Auth::new(&config.auth)?;
        let metrics = Arc::new(Metrics::new());
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let state = Arc::new(AppState {
            shutdown: rx.clone(),
            store: store.clone(),
            limiter: RateLimiter::new(config.rate_limit_scale),
            auth,
            metrics: Arc::clone(&metrics),
            serving: serving::Serving::new(config.data_dir.clone()),
            ab_lock: tokio::sync::Mutex::new(()),
            config,
        });
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("{addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut tasks = Vec::new();
        let app = router(Arc::clone(&state));
        let stop = rx.clone();
        let limits = (state.config.header_read_timeout, state.config.max_connections);
        tasks.push(tokio::spawn(async move {
            serve(listener, app, stop, limits).await;
        }));
        tasks.push(tokio::spawn(webhooks::run_deliverer(
            store.clone(),
            state.config.webhooks.clone(),
            rx.clone(),
        )));
        if state.config.workers > 0 {
            let workers = Workers::new(store, state.config.worker.clone(), Some(metrics));
            tasks.extend(workers.spawn(state.config.workers, &rx));
        }
        Ok(Self { addr, state, shutdown, tasks })
    }

    /// Stops accepting calls, asks running jobs to stop with a checkpoint (they are continued by
    /// the next worker), and waits for everything to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.state.store.close().await;
    }
}
