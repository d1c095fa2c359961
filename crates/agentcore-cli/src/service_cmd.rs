//! `agentcore serve`, `agentcore worker` and the remote `agentcore jobs ... --url` calls.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agentcore_client::TrainingClient;
use agentcore_server::auth::{ALL_PERMISSIONS, Auth, AuthConfig, AuthKey};
use agentcore_server::worker::{WorkerConfig, Workers};
use agentcore_server::{Server, ServerConfig};
use serde_json::{Value, json};

use crate::{InputError, write_stdout};

/// Where the store is: `--database-url` (`postgres://...`, a SQLite file path or
/// `sqlite://PATH`) or the data directory's `agentcore.db`.
fn database_url(url: Option<&str>, data_dir: &Path) -> String {
    url.map_or_else(|| data_dir.join("agentcore.db").display().to_string(), str::to_owned)
}

/// SIGINT (Ctrl-C) and SIGTERM (what Kubernetes and systemd send to stop a process), handled
/// from the moment this is made: made before the process says it is ready, so a signal sent
/// right after is never the default (immediate) exit.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    /// Waits for either.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Arguments of `agentcore serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The store: `postgres://USER:PASSWORD@HOST/DB`, or a SQLite file (`PATH` or
    /// `sqlite://PATH`) [default: DATA_DIR/agentcore.db].
    #[arg(long)]
    database_url: Option<String>,
    /// Run directories, warm-start cache [default: $AGENTCORE_HOME or ~/.agentcore].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HS256 secret of the bearer tokens [env: AGENTCORE_JWT_SECRET]. Without it (and without
    /// --jwt-public-key) a random secret is made and a development token printed.
    #[arg(long)]
    jwt_secret: Option<String>,
    /// RS256 public key (PEM file) of the bearer tokens.
    #[arg(long, value_name = "PEM")]
    jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long)]
    jwt_audience: Option<String>,
    /// In-process workers running jobs (0: only `agentcore worker` processes).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Deliver webhooks to loopback, private and link-local addresses too.
    #[arg(long)]
    allow_private_webhooks: bool,
    /// Let registered agents' OpenAI-compatible endpoints be loopback, private or link-local
    /// addresses (an inference server beside this one, e.g. llama.cpp on 127.0.0.1).
    #[arg(long)]
    allow_private_endpoints: bool,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 32)]
    body_limit_mib: usize,
    /// Multiply the contract's rate limits (load tests).
    #[arg(long, default_value_t = 1)]
    rate_limit_scale: u32,
    /// Where registered agents may point a local model (`model.path`) [default: DATA_DIR/models].
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// The MLflow tracking server of jobs started with `report_to: ["mlflow"]`.
    #[arg(long, env = "MLFLOW_TRACKING_URI", value_name = "URL")]
    mlflow_tracking_uri: Option<String>,
    /// The artifact store for checkpoints and reports shared with workers on other machines: `s3://BUCKET/PREFIX`
    /// (S3 or an S3-compatible server through AWS_ENDPOINT; credentials from AWS_* variables),
    /// `gs://…`, `az://…`, `file:///DIR` [default: none; the data directory holds everything].
    #[arg(long, env = "AGENTCORE_ARTIFACTS", value_name = "URL")]
    artifacts: Option<String>,
}

/// `agentcore serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = crate::train_cmd::data_dir(args.data_dir);
    let database = database_url(args.database_url.as_deref(), &data_dir);
    let secret = args.jwt_secret.or_else(|| std::env::var("AGENTCORE_JWT_SECRET").ok());
    let (key, development) = match (&args.jwt_public_key, secret) {
        (Some(pem), _) => (
            AuthKey::Rs256Pem(
                std::fs::read(pem)
                    .map_err(|e| InputError(format!("--jwt-public-key {}: {e}", pem.display())))?,
            ),
            false,
        ),
        (None, Some(s)) if s.len() >= 16 => (AuthKey::Hs256(s.into_bytes()), false),
        (None, Some(s)) => {
            return Err(InputError(format!(
                "the JWT secret must have at least 16 characters, got {}",
                s.len()
            ))
            .into());
        }
        (None, None) => {
            let bytes: [u8; 32] = rand::random();
            (AuthKey::Hs256(bytes.to_vec()), true)
        }
    };
    let auth = AuthConfig { key, issuer: args.jwt_issuer, audience: args.jwt_audience };
    let mut config = ServerConfig::new(data_dir.clone(), auth.clone());
    config.workers = args.workers;
    config.worker.artifacts = crate::train_cmd::open_artifacts(args.artifacts.as_deref())?;
    config.webhooks.allow_private = args.allow_private_webhooks;
    config.allow_private_endpoints = args.allow_private_endpoints;
    config.body_limit = args.body_limit_mib << 20;
    config.rate_limit_scale = args.rate_limit_scale;
    if let Some(uri) = args.mlflow_tracking_uri {
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(InputError(format!(
                "--mlflow-tracking-uri must be an http:// or https:// URL, got {uri:?}"
            ))
            .into());
        }
        config.mlflow_tracking_uri = Some(uri);
    }
    if let Some(dir) = args.models_dir {
        config.models_dir = std::path::absolute(&dir)
            .map_err(|e| InputError(format!("--models-dir {}: {e}", dir.display())))?;
    }
    let addr = SocketAddr::new(args.host, args.port);
    let rt = runtime()?;
    rt.block_on(async move {
        let mut signals = StopSignals::new()?;
        let server =
            Server::start(config, Some(database), addr).await.map_err(|e| anyhow::anyhow!(e))?;
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "agentcore serve: http://{} (store {})",
            server.addr,
            server.state.store.location()
        )?;
        if development {
            let token = Auth::new(&auth)
                .ok()
                .and_then(|a| a.issue("developer", "local", &ALL_PERMISSIONS, 30 * 24 * 3600))
                .unwrap_or_default();
            writeln!(
                err,
                "no JWT secret configured: development token (all permissions, org `local`, 30 \
                 days, valid until this server stops):\nAGENTCORE_API_KEY={token}"
            )?;
        }
        drop(err);
        signals.recv().await;
        let _ =
            writeln!(std::io::stderr(), "stopping: running jobs checkpoint and are resumed later");
        server.shutdown().await;
        Ok(())
    })
}

/// Arguments of `agentcore worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The store shared with the server: `postgres://USER:PASSWORD@HOST/DB`, or a SQLite file
    /// (`PATH` or `sqlite://PATH`) on the same machine.
    #[arg(long)]
    database_url: String,
    /// The data directory shared with the server (run directories, warm-start cache).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Jobs run at once by this process.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Lease of a claimed job, seconds: renewed every third of it; a job whose worker died is
    /// taken over after it runs out.
    #[arg(long, default_value_t = 30)]
    lease_seconds: u64,
    /// The artifact store for checkpoints and reports shared with the server and the other workers: `s3://BUCKET/PREFIX`
    /// (S3 or an S3-compatible server through AWS_ENDPOINT; credentials from AWS_* variables),
    /// `gs://…`, `az://…`, `file:///DIR` [default: none; the data directory holds everything].
    #[arg(long, env = "AGENTCORE_ARTIFACTS", value_name = "URL")]
    artifacts: Option<String>,
}

/// `agentcore worker`.
pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let data_dir = crate::train_cmd::data_dir(args.data_dir);
    runtime()?.block_on(async move {
        let mut signals = StopSignals::new()?;
        let store = agentcore_store::Store::connect(&args.database_url).await?;
        let mut config = WorkerConfig::new(data_dir);
        config.artifacts = crate::train_cmd::open_artifacts(args.artifacts.as_deref())?;
        config.lease = std::time::Duration::from_secs(args.lease_seconds.max(1));
        let workers = Workers::new(store.clone(), config, None);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tasks = workers.spawn(args.workers.max(1), &rx);
        let _ = writeln!(
            std::io::stderr(),
            "agentcore worker: {} worker(s) on {}",
            args.workers.max(1),
            store.location()
        );
        signals.recv().await;
        let _ = tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        store.close().await;
        Ok(())
    })
}

/// Where a remote command goes.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The server, e.g. http://127.0.0.1:8080 [env: AGENTCORE_URL].
    #[arg(long)]
    url: Option<String>,
    /// Bearer token [env: AGENTCORE_API_KEY].
    #[arg(long)]
    token: Option<String>,
}

impl Remote {
    pub(crate) fn client(&self) -> anyhow::Result<TrainingClient> {
        let url = self
            .url
            .clone()
            .or_else(|| std::env::var("AGENTCORE_URL").ok())
            .ok_or_else(|| InputError("--url (or AGENTCORE_URL) is required".into()))?;
        let token = self.token.clone().or_else(|| std::env::var("AGENTCORE_API_KEY").ok());
        Ok(TrainingClient::new(&url, token))
    }
}

/// Remote job commands.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Queue a GRPO job on the server.
    Start {
        #[command(flatten)]
        remote: Remote,
        /// The registered agent.
        #[arg(long, default_value = "seed-agent")]
        agent_id: String,
        /// GRPOConfig file (YAML, TOML or JSON).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Training tasks (`.json`, `.jsonl`, `.parquet` or a dataset folder), at least 100.
        #[arg(long)]
        data: PathBuf,
        /// Held-out tasks [default: 20% of --data, seeded].
        #[arg(long)]
        eval_data: Option<PathBuf>,
        /// Override `n_iterations`.
        #[arg(long)]
        n_iterations: Option<u32>,
        /// Override `max_budget_usd`.
        #[arg(long)]
        max_budget_usd: Option<rust_decimal::Decimal>,
    },
    /// A job's status.
    Status {
        #[command(flatten)]
        remote: Remote,
        /// The job.
        job_id: String,
    },
    /// The jobs of the token's organisation.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only with this status.
        #[arg(long)]
        status: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Cancel a job (a running one stops after its iteration, with a checkpoint).
    Cancel {
        #[command(flatten)]
        remote: Remote,
        /// The job.
        job_id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// A checkpoint against the agent before training, paired.
    Evaluate {
        #[command(flatten)]
        remote: Remote,
        /// The job.
        job_id: String,
        /// The checkpoint [default: the best].
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// A job's trajectories.
    Export {
        #[command(flatten)]
        remote: Remote,
        /// The job.
        job_id: String,
        /// Only verified ones.
        #[arg(long)]
        success_only: bool,
        /// Only rewards at least this.
        #[arg(long)]
        min_reward: Option<f64>,
        /// At most this many (<= 10000).
        #[arg(long)]
        limit: Option<u32>,
        /// Skip this many.
        #[arg(long)]
        offset: Option<u32>,
    },
}

fn tasks_json(path: &Path) -> anyhow::Result<Vec<Value>> {
    let tasks = agentcore_tasks::data::load_tasks(path, "train")
        .map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    Ok(tasks.iter().map(|t| serde_json::to_value(t).unwrap_or(Value::Null)).collect())
}

pub(crate) fn print(value: &impl serde::Serialize) -> anyhow::Result<()> {
    write_stdout(&(serde_json::to_string_pretty(value)? + "\n"))?;
    Ok(())
}

/// A server's refusal of the caller's input (any contract code but an internal error) exits 2,
/// as bad flags do; transport and internal errors exit 1.
pub(crate) fn rpc_error(e: agentcore_client::ClientError) -> anyhow::Error {
    match e.code() {
        Some(c) if c == agentcore_api::codes::INTERNAL_ERROR => anyhow::anyhow!(e),
        Some(_) => InputError(e.to_string()).into(),
        None => anyhow::anyhow!(e),
    }
}

/// A remote job command.
pub fn jobs_remote(cmd: JobsCommand) -> anyhow::Result<()> {
    let rpc = rpc_error;
    match cmd {
        JobsCommand::Start {
            remote,
            agent_id,
            config,
            data,
            eval_data,
            n_iterations,
            max_budget_usd,
        } => {
            // The file's own keys only (checked here first): the server fills in the rest from
            // the agent and the defaults, as `agentcore train --config` does.
            let mut cfg = match &config {
                Some(p) => {
                    crate::load_config(p)?;
                    crate::train_cmd::parse_document(p)?.0
                }
                None => json!({}),
            };
            if let Some(n) = n_iterations {
                cfg["n_iterations"] = json!(n);
            }
            if let Some(b) = max_budget_usd {
                cfg["max_budget_usd"] = json!(b.to_string());
            }
            let train = tasks_json(&data)?;
            let eval = eval_data.as_deref().map(tasks_json).transpose()?;
            let r = remote
                .client()?
                .start_training(&agent_id, cfg, &train, eval.as_deref())
                .map_err(rpc)?;
            print(&r)
        }
        JobsCommand::Status { remote, job_id } => {
            print(&remote.client()?.get_status(&job_id).map_err(rpc)?)
        }
        JobsCommand::List { remote, status, limit } => {
            print(&remote.client()?.list_jobs(None, status.as_deref(), limit, None).map_err(rpc)?)
        }
        JobsCommand::Cancel { remote, job_id, reason } => {
            print(&remote.client()?.cancel(&job_id, reason.as_deref()).map_err(rpc)?)
        }
        JobsCommand::Evaluate { remote, job_id, checkpoint } => {
            print(&remote.client()?.evaluate(&job_id, checkpoint.as_deref()).map_err(rpc)?)
        }
        JobsCommand::Export { remote, job_id, success_only, min_reward, limit, offset } => print(
            &remote
                .client()?
                .export_trajectories(&job_id, success_only, min_reward, limit, offset)
                .map_err(rpc)?,
        ),
    }
}
