//! `agentcore train`, `agentcore eval`, `agentcore export` and `agentcore jobs`: the job runs
//! in-process, everything it reports goes to the SQLite store of the data directory.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentcore_agent::definition::AgentDefinition;
use agentcore_grpo::{ConfigFormat, GRPOConfig};
use agentcore_store::{BlockingStore, JobStatus, NewJob, TrajectoryFilter};
use agentcore_train::checkpoints::resume_point;
use agentcore_train::events::{Event, Summary};
use agentcore_train::job::JobContext;
use agentcore_train::record::{Recorder, export_record};
use agentcore_train::settings::{JobSettings, read_job_settings};
use agentcore_train::spec;
use agentcore_train::tracking::{MlflowSettings, ReportTo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};

use crate::{InputError, write_stdout};

/// Arguments of `agentcore train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Job file (YAML, TOML or JSON): a GRPOConfig, or `{grpo: {...}, warm_start: {...},
    /// n_tasks, eval_fraction, max_difficulty, price_per_hour_usd}`. Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the job JOB from its last complete checkpoint (same settings).
    #[arg(long, value_name = "JOB")]
    resume: Option<String>,
    /// GRPO iterations.
    #[arg(long)]
    n_iterations: Option<u32>,
    /// Queries per iteration.
    #[arg(long)]
    batch_size: Option<u32>,
    /// Rollouts per query (the group size).
    #[arg(long)]
    n_trajectories_per_query: Option<u32>,
    /// AdamW learning rate.
    #[arg(long)]
    learning_rate: Option<f64>,
    /// The job's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Money limit in US dollars.
    #[arg(long)]
    max_budget_usd: Option<rust_decimal::Decimal>,
    /// Price of an hour of this machine in US dollars (the cost of local compute).
    #[arg(long)]
    price_per_hour_usd: Option<rust_decimal::Decimal>,
    /// Seed tasks generated (split into train and held-out).
    #[arg(long)]
    n_tasks: Option<usize>,
    /// Share of each family held out for evaluation.
    #[arg(long)]
    eval_fraction: Option<f64>,
    /// Warm-start optimizer steps.
    #[arg(long)]
    warm_start_steps: Option<usize>,
    /// Train on these tasks instead of the generated seed suite: a `.json` array, `.jsonl` or
    /// `.parquet` file (or a Hugging Face dataset folder) of `{query, expected_outcome}`, at
    /// least 100.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Held-out tasks for --data [default: a seeded --eval-fraction of --data].
    #[arg(long, value_name = "FILE", requires = "data")]
    eval_data: Option<PathBuf>,
    /// The agent to train: a definition file (YAML or JSON, as in `examples/agents/`; the same
    /// document `agents.register` takes): a `built_in` model (with `warm_start` overrides) or a
    /// `local` one (with `lora`), its system prompt, `python` tool, sampling and limits.
    #[arg(long, value_name = "FILE", conflicts_with = "model")]
    agent: Option<PathBuf>,
    /// Train a pretrained model with LoRA instead of the built-in one: a `.gguf` file (e.g.
    /// Gemma 3 270M from scripts/fetch_gemma3.sh) or a Hugging Face model directory. Without
    /// --n-tasks the job then uses 48 tasks (12 held out): generation on CPU is slow.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The reward function: outcome, shaped, response_accuracy, code_quality, task_efficiency
    /// [default: outcome; response_accuracy with --model].
    #[arg(long)]
    reward: Option<String>,
    /// LoRA rank of --model.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// Where the store, the warm-start cache and the runs live [default: $AGENTCORE_HOME or
    /// ~/.agentcore].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// One JSON object per event on stdout (iterations, checkpoints, then the summary).
    #[arg(long)]
    json: bool,
    /// Experiment trackers that get the scalars of every iteration: `tensorboard` (event files
    /// under the run directory's `tensorboard/`), `mlflow` (a run on --mlflow-tracking-uri).
    #[arg(long, value_delimiter = ',', value_name = "TRACKER")]
    report_to: Vec<String>,
    /// The MLflow tracking server of `--report-to mlflow`.
    #[arg(long, env = "MLFLOW_TRACKING_URI", value_name = "URL")]
    mlflow_tracking_uri: Option<String>,
    /// The MLflow experiment [default: the agent's id].
    #[arg(long, value_name = "NAME")]
    mlflow_experiment: Option<String>,
    /// The artifact store for checkpoints and reports beyond this machine: `s3://BUCKET/PREFIX`
    /// (S3 or an S3-compatible server through AWS_ENDPOINT; credentials from AWS_* variables),
    /// `gs://…`, `az://…`, `file:///DIR` [default: none; the data directory holds everything].
    #[arg(long, env = "AGENTCORE_ARTIFACTS", value_name = "URL")]
    artifacts: Option<String>,
}

/// The artifact store a `--artifacts` flag (or `$AGENTCORE_ARTIFACTS`) names; a bad one is the
/// caller's mistake.
pub fn open_artifacts(url: Option<&str>) -> anyhow::Result<Arc<agentcore_artifacts::Artifacts>> {
    let store = match url {
        Some(u) => agentcore_artifacts::Artifacts::open(u),
        None => Ok(agentcore_artifacts::Artifacts::local()),
    };
    Ok(Arc::new(store.map_err(|e| InputError(format!("--artifacts: {e}")))?))
}

/// The data directory: the flag, `$AGENTCORE_HOME`, or `~/.agentcore`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| {
        std::env::var_os("AGENTCORE_HOME").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("HOME").map_or_else(
                || PathBuf::from(".agentcore"),
                |h| PathBuf::from(h).join(".agentcore"),
            )
        })
    })
}

/// A YAML, TOML or JSON document (by extension) as JSON.
pub(crate) fn parse_document(path: &Path) -> anyhow::Result<(Value, ConfigFormat, String)> {
    let (text, format) = crate::read_config_file(path)?;
    let value: Value = match format {
        ConfigFormat::Json => serde_json::from_str(&text).map_err(|e| e.to_string()),
        ConfigFormat::Yaml => serde_yaml_ng::from_str(&text).map_err(|e| e.to_string()),
        ConfigFormat::Toml => toml::from_str(&text).map_err(|e| e.to_string()),
    }
    .map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    Ok((value, format, text))
}

/// Keys of a job file besides `grpo`.
const JOB_FILE_KEYS: [&str; 8] = [
    "warm_start",
    "n_tasks",
    "eval_fraction",
    "max_difficulty",
    "price_per_hour_usd",
    "reward",
    "report_to",
    "mlflow",
];

/// A `--config` file: a GRPOConfig (its keys), or a job file `{grpo: {...}, warm_start, n_tasks,
/// ...}` (the `grpo` keys and the rest).
fn load_job_file(path: &Path) -> anyhow::Result<(Map<String, Value>, Map<String, Value>)> {
    let (value, _, _) = parse_document(path)?;
    let bad = |e: String| InputError(format!("{}: {e}", path.display()));
    let Value::Object(mut map) = value else {
        return Err(bad("must be a mapping of GRPOConfig fields, or a job file".into()).into());
    };
    if !map.contains_key("grpo") {
        return Ok((map, Map::new()));
    }
    let grpo = match map.remove("grpo") {
        Some(Value::Object(g)) => g,
        Some(Value::Null) | None => Map::new(),
        Some(other) => return Err(bad(format!("grpo must be a mapping, got {other}")).into()),
    };
    if let Some(k) = map.keys().find(|k| !JOB_FILE_KEYS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown field `{k}` (expected grpo, {})",
            JOB_FILE_KEYS.join(", ")
        ))
        .into());
    }
    Ok((grpo, map))
}

/// The agent of a `train` command: `--agent FILE`, a pretrained model (`--model`), or the
/// built-in agent.
fn agent_from_args(args: &TrainArgs) -> anyhow::Result<AgentDefinition> {
    if let Some(path) = &args.agent {
        return AgentDefinition::from_path(path)
            .map_err(|e| InputError(format!("--agent {e}")).into());
    }
    let mut settings = JobSettings::embedded();
    if let Some(path) = &args.model {
        if !path.exists() {
            return Err(InputError(format!(
                "--model {}: no such file or directory (scripts/fetch_gemma3.sh fetches Gemma 3 \
                 270M)",
                path.display()
            ))
            .into());
        }
        let lora = agentcore_model::decoder::LoraConfig {
            r: args.lora_rank,
            lora_alpha: 2.0 * args.lora_rank as f64,
            ..agentcore_model::decoder::LoraConfig::default()
        };
        settings.model = Some(agentcore_train::settings::ExternalModel {
            lora,
            ..agentcore_train::settings::ExternalModel::default_for(path.clone())
        });
    }
    Ok(spec::agent_of(&settings))
}

/// The job settings of a `train` command and the agent they train.
fn settings_from_args(args: &TrainArgs) -> anyhow::Result<(JobSettings, AgentDefinition)> {
    let agent = agent_from_args(args)?;
    let (config, extras) = match &args.config {
        Some(path) => {
            let (c, e) = load_job_file(path)?;
            (Some(c), e)
        }
        None => (None, Map::new()),
    };
    let in_file = |e: agentcore_train::TrainError| match &args.config {
        Some(p) => anyhow::Error::new(InputError(format!("{}: {e}", p.display()))),
        None => train_error(e),
    };
    let mut settings = spec::resolve(&agent, config.as_ref(), None).map_err(in_file)?;
    if !extras.is_empty() {
        let mut value = serde_json::to_value(&settings)?;
        for (k, v) in extras {
            if k == "warm_start" {
                let Value::Object(over) = v else {
                    return Err(InputError("warm_start must be a mapping".into()).into());
                };
                if settings.model.is_some() {
                    return Err(InputError(
                        "warm_start: a pretrained model has no warm start".into(),
                    )
                    .into());
                }
                value[k] = serde_json::to_value(spec::warm_start(Some(&over)).map_err(in_file)?)?;
            } else {
                value[k] = v;
            }
        }
        settings = serde_json::from_value(value).map_err(|e| {
            InputError(format!(
                "{}: {e}",
                args.config.as_deref().unwrap_or(Path::new("")).display()
            ))
        })?;
    }
    let c = &mut settings.config;
    if let Some(v) = args.n_iterations {
        c.n_iterations = v;
    }
    if let Some(v) = args.batch_size {
        c.batch_size = v;
    }
    if let Some(v) = args.n_trajectories_per_query {
        c.n_trajectories_per_query = v;
    }
    if let Some(v) = args.learning_rate {
        c.learning_rate = v;
    }
    if let Some(v) = args.seed {
        c.seed = v;
    }
    if let Some(v) = args.max_budget_usd {
        c.max_budget_usd = v;
    }
    if let Some(v) = args.price_per_hour_usd {
        settings.price_per_hour_usd = v;
    }
    if let Some(v) = args.n_tasks {
        settings.n_tasks = v;
    }
    if let Some(v) = args.eval_fraction {
        settings.eval_fraction = v;
    }
    if let Some(v) = args.warm_start_steps {
        settings.warm_start.steps = v;
    }
    if let Some(r) = &args.reward {
        settings.reward = r.clone();
    }
    if !args.report_to.is_empty() {
        settings.report_to = args
            .report_to
            .iter()
            .map(|t| ReportTo::parse(t).map_err(|e| InputError(format!("--{e}"))))
            .collect::<Result<_, _>>()?;
    }
    if let (true, Some(uri)) =
        (settings.report_to.contains(&ReportTo::Mlflow), &args.mlflow_tracking_uri)
    {
        let experiment = args
            .mlflow_experiment
            .clone()
            .or_else(|| settings.mlflow.as_ref().and_then(|m| m.experiment.clone()));
        settings.mlflow = Some(MlflowSettings { tracking_uri: uri.clone(), experiment });
    }
    if let Some(path) = &args.data {
        let load = |p: &Path, split: &str| {
            agentcore_tasks::data::load_tasks(p, split)
                .map_err(|e| InputError(format!("--data {}: {e}", p.display())))
        };
        let train = load(path, "train")?;
        agentcore_tasks::data::validate_training(&train, agentcore_tasks::data::MIN_TRAINING_TASKS)
            .map_err(|e| InputError(format!("--data {}: {e}", path.display())))?;
        let eval = match &args.eval_data {
            Some(p) => load(p, "test")?,
            None => Vec::new(),
        };
        settings.data = Some(agentcore_train::settings::JobData { train, eval });
    }
    // Validate the whole config (flags included) before any work starts.
    let text = settings.config.to_string_format(ConfigFormat::Json);
    settings.config = GRPOConfig::from_json_str(&text).map_err(|e| InputError(e.to_string()))?;
    let problems = settings.violations();
    if !problems.is_empty() {
        return Err(InputError(format!("invalid job: {}", problems.join("; "))).into());
    }
    Ok((settings, agent))
}

fn changes_settings(args: &TrainArgs) -> bool {
    args.config.is_some()
        || args.n_iterations.is_some()
        || args.batch_size.is_some()
        || args.n_trajectories_per_query.is_some()
        || args.learning_rate.is_some()
        || args.seed.is_some()
        || args.max_budget_usd.is_some()
        || args.price_per_hour_usd.is_some()
        || args.n_tasks.is_some()
        || args.eval_fraction.is_some()
        || args.warm_start_steps.is_some()
        || args.model.is_some()
        || args.agent.is_some()
        || args.reward.is_some()
        || args.data.is_some()
        || !args.report_to.is_empty()
}

fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agentcore.db")
}

/// What the terminal shows: a progress bar on a terminal, plain lines otherwise.
struct Display {
    bar: ProgressBar,
    warm: Option<ProgressBar>,
    terminal: bool,
    json: bool,
}

impl Display {
    fn new(json: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} iteration {pos}/{len} [{bar:30}] {msg} · {elapsed_precise} · ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        if !terminal {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self { bar, warm: None, terminal, json }
    }

    fn line(&self, text: &str) {
        if self.terminal {
            self.bar.println(text);
        } else {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }

    fn show(&mut self, event: &Event) {
        if self.json && !matches!(event, Event::WarmStart(_) | Event::Rollouts { .. }) {
            let _ =
                writeln!(std::io::stdout(), "{}", serde_json::to_string(event).unwrap_or_default());
        }
        match event {
            Event::WarmStart(p) => {
                if self.terminal {
                    let warm = self.warm.get_or_insert_with(|| {
                        let b = ProgressBar::new(p.steps as u64);
                        b.set_style(
                            ProgressStyle::with_template(
                                "warm start {pos}/{len} [{bar:30}] loss {msg} · ETA {eta}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        b
                    });
                    warm.set_position(p.step as u64);
                    warm.set_message(format!("{:.3}", p.loss));
                    if p.step == p.steps {
                        warm.finish();
                    }
                } else if p.step % 50 == 0 || p.step == p.steps {
                    self.line(&format!("warm start {}/{}: loss {:.3}", p.step, p.steps, p.loss));
                }
            }
            Event::Started { job_id, run_dir, resumed_from, total_iterations, .. } => {
                self.bar.set_length(u64::from(*total_iterations));
                self.bar.set_position(u64::from(resumed_from.unwrap_or(0)));
                self.bar.reset_eta();
                self.line(&match resumed_from {
                    Some(i) => {
                        format!("job {job_id}: resumed after iteration {i} ({})", run_dir.display())
                    }
                    None => format!("job {job_id} ({})", run_dir.display()),
                });
            }
            Event::Baseline { success_rate, eval_queries } => self.line(&format!(
                "baseline: {:.1}% of {eval_queries} held-out queries",
                success_rate * 100.0
            )),
            Event::Rollouts { .. } | Event::CheckpointRemoved { .. } => {}
            Event::Iteration(m) => {
                self.bar.set_position(u64::from(m.iteration));
                self.bar.set_message(format!(
                    "success {:4.1}% · reward {:.2} · loss {:+.3} · ${}",
                    m.success_rate * 100.0,
                    m.avg_reward,
                    m.train_loss,
                    m.cost_usd.round_dp(4)
                ));
                if !self.terminal || m.eval_success_rate.is_some() {
                    self.line(&format!(
                        "iteration {:>3}: success {:5.1}%  reward {:.3}  loss {:+.4}  zero-std {:.2}  rollout {:.1}s  update {:.1}s{}",
                        m.iteration,
                        m.success_rate * 100.0,
                        m.avg_reward,
                        m.train_loss,
                        m.frac_reward_zero_std,
                        m.rollout_seconds,
                        m.update_seconds,
                        m.eval_success_rate
                            .map_or(String::new(), |e| format!("  held-out {:.1}%", e * 100.0))
                    ));
                }
            }
            Event::Checkpoint(c) => {
                if !self.terminal {
                    self.line(&format!("checkpoint {} saved", c.checkpoint_id));
                }
            }
            Event::Budget { state, spent_usd, budget_usd } => self.line(&format!(
                "budget {}: ${} of ${budget_usd} spent",
                state.as_str(),
                spent_usd.round_dp(4)
            )),
            Event::Done(_) => self.bar.finish_and_clear(),
        }
    }
}

fn summary_text(s: &Summary) -> String {
    let mut out = format!(
        "job {}: success rate {:.1}% -> {:.1}% ({:+.1} points, McNemar p = {:.3e}) on {} held-out queries\n\
         baseline 95% CI [{:.1}%, {:.1}%], final 95% CI [{:.1}%, {:.1}%]\n\
         {} iterations ({}), wall {:.0} s{}, cost ${} of ${}\n\
         best checkpoint: {}\n",
        s.job_id,
        s.baseline_success_rate * 100.0,
        s.final_success_rate * 100.0,
        (s.final_success_rate - s.baseline_success_rate) * 100.0,
        s.p_value,
        s.eval_queries,
        s.baseline_interval.0 * 100.0,
        s.baseline_interval.1 * 100.0,
        s.final_interval.0 * 100.0,
        s.final_interval.1 * 100.0,
        s.iterations,
        s.stop_reason.as_str(),
        s.wall_seconds,
        // Only the built-in model has a warm start: its seconds, or that it came from the cache.
        match (s.warm_start_cached, s.warm_start_seconds > 0.0) {
            (true, _) => " (warm start cached)".to_string(),
            (false, true) => format!(" (warm start {:.0} s)", s.warm_start_seconds),
            (false, false) => String::new(),
        },
        s.cost_usd.round_dp(4),
        s.budget_usd,
        s.best_checkpoint_id.as_deref().unwrap_or("none"),
    );
    out += &format!("\n{:<16} {:>9} {:>9}\n", "family", "baseline", "final");
    for (family, (b, f)) in &s.per_family {
        out += &format!("{family:<16} {:>8.0}% {:>8.0}%\n", b * 100.0, f * 100.0);
    }
    out += &format!(
        "\nreport: {}\ncurves: {}\n",
        s.run_dir.join("report.md").display(),
        s.run_dir.join("curves.png").display()
    );
    out
}

/// A job's error as the CLI reports it: the caller's mistakes exit with 2, failures with 1.
fn train_error(e: agentcore_train::TrainError) -> anyhow::Error {
    if e.is_invalid_input() { anyhow::Error::new(InputError(e.to_string())) } else { e.into() }
}

/// `agentcore train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let data_dir = data_dir(args.data_dir.clone());
    let artifacts = open_artifacts(args.artifacts.as_deref())?;
    let (settings, agent_definition, job_id) = match &args.resume {
        Some(job) => {
            if changes_settings(&args) {
                return Err(InputError(format!(
                    "--resume {job} continues the job with its saved settings: leave out \
                     --config and the flags that change settings"
                ))
                .into());
            }
            agentcore_train::sync::restore_run(&artifacts, &data_dir, job).map_err(train_error)?;
            let settings = read_job_settings(&data_dir, job).map_err(train_error)?;
            let agent = spec::agent_of(&settings);
            (settings, agent, job.clone())
        }
        None => {
            let (settings, agent) = settings_from_args(&args)?;
            (settings, agent, uuid::Uuid::new_v4().to_string())
        }
    };
    let estimate = spec::estimated_cost_usd(&settings);
    if estimate > settings.config.max_budget_usd {
        // The server refuses such a job; here it runs and stops with `budget_exhausted`.
        tracing::warn!(job_id = %job_id, estimated_cost_usd = %estimate,
            max_budget_usd = %settings.config.max_budget_usd,
            "the job's estimated compute exceeds its budget: it will stop early");
    }
    let sandbox = Arc::new(agentcore_agent::sandbox::PythonSandbox::detect()?);
    let store = BlockingStore::open(&store_path(&data_dir))?;
    let definition = serde_json::to_value(&agent_definition)?;
    let agent = settings.agent_id();
    store.call(|s| s.register_agent(&agent, &definition))?;
    let ctx = JobContext {
        data_dir: data_dir.clone(),
        job_id: job_id.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        faults: agentcore_train::faults::Faults::default(),
        artifacts,
        recorded_checkpoints: None,
    };
    let new_job = NewJob {
        id: job_id.clone(),
        agent_id: agent.clone(),
        settings: serde_json::to_value(&settings).unwrap_or(Value::Null),
        total_iterations: settings.config.n_iterations,
        budget_usd: settings.config.max_budget_usd.to_string(),
        run_dir: ctx.run_dir().display().to_string(),
    };
    store.call(|s| s.start_job(&new_job))?;
    // Who runs it: `agentcore jobs` shows the job as interrupted once this process is gone.
    let owner = cli_owner(std::process::id());
    store.call(|s| s.set_job_owner(&job_id, &owner))?;
    if args.resume.is_some() {
        let point = resume_point(&data_dir, &job_id)?.unwrap_or(0);
        store.call(|s| s.forget_after(&job_id, point))?;
    }
    {
        let stop = Arc::clone(&ctx.stop);
        // A second Ctrl-C while the checkpoint is written ends the process the usual way.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            let _ = writeln!(
                std::io::stderr(),
                "\nstopping after this iteration with a checkpoint (Ctrl-C again to quit now)"
            );
        });
    }
    let mut display = Display::new(args.json);
    let mut recorder = Recorder::new(&store, &job_id);
    let result = agentcore_train::job::run(&settings, &ctx, sandbox, &mut |event| {
        recorder.record(event);
        display.show(event);
    });
    let recorder_error = recorder.take_error();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let message = e.to_string();
            if let Err(store_error) = store.call(|s| {
                s.finish_job(&job_id, JobStatus::Failed, None, None, None, Some(&message))
            }) {
                tracing::error!(job_id = %job_id, error = %store_error,
                    "could not record the job's failure in the store");
            }
            return Err(train_error(e));
        }
    };
    if let Some(e) = recorder_error {
        anyhow::bail!(
            "the job ran, but recording it in {} failed: {e}",
            store_path(&data_dir).display()
        );
    }
    if !args.json {
        write_stdout(&summary_text(&summary))?;
    }
    Ok(())
}

/// Arguments of `agentcore eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The job.
    #[arg(long)]
    job: String,
    /// The checkpoint [default: the job's best].
    #[arg(long)]
    checkpoint: Option<String>,
    /// Evaluation tasks (JSONL/JSON/CSV/Parquet in the guide's shape) [default: the job's
    /// held-out split].
    #[arg(long)]
    data: Option<PathBuf>,
    /// See `train --data-dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// One JSON object.
    #[arg(long)]
    json: bool,
    /// The artifact store the job's checkpoints are in (see `train --artifacts`): a job trained
    /// on another machine is evaluated here after its settings and checkpoints come down,
    /// each verified against its manifest.
    #[arg(long, env = "AGENTCORE_ARTIFACTS", value_name = "URL")]
    artifacts: Option<String>,
}

/// `agentcore eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let data_dir = data_dir(args.data_dir);
    let artifacts = open_artifacts(args.artifacts.as_deref())?;
    agentcore_train::sync::restore_run(&artifacts, &data_dir, &args.job).map_err(train_error)?;
    let tasks = match &args.data {
        Some(path) => {
            Some(agentcore_tasks::data::load_file(path).map_err(|e| InputError(e.to_string()))?)
        }
        None => None,
    };
    let sandbox = Arc::new(agentcore_agent::sandbox::PythonSandbox::detect()?);
    let report = agentcore_train::eval::compare(
        &data_dir,
        &args.job,
        args.checkpoint.as_deref(),
        tasks,
        &sandbox,
    )
    .map_err(train_error)?;
    if args.json {
        write_stdout(&serde_json::to_string_pretty(&report)?)?;
    } else {
        write_stdout(&agentcore_train::eval::text(&report))?;
    }
    Ok(())
}

/// Output format of `agentcore export`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// JSON lines on stdout (or `--out FILE`).
    Jsonl,
    /// A Hugging Face `datasets` folder (`--out DIR`).
    Hf,
}

/// Arguments of `agentcore export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The job.
    #[arg(long)]
    job: String,
    /// Only trajectories the verifier accepted.
    #[arg(long)]
    success_only: bool,
    /// Only trajectories with at least this reward.
    #[arg(long)]
    min_reward: Option<f64>,
    /// At most this many.
    #[arg(long)]
    limit: Option<u32>,
    /// Skip this many.
    #[arg(long, default_value_t = 0)]
    offset: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
    /// Output file (jsonl) or folder (hf); or an object-store URL (`s3://BUCKET/KEY.jsonl`,
    /// `s3://BUCKET/PREFIX` for hf; gs://, az:// likewise; credentials as for `--artifacts`),
    /// written there whole (the dataset card last).
    #[arg(long)]
    out: Option<PathBuf>,
    /// See `train --data-dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// `agentcore export`.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let data_dir = data_dir(args.data_dir);
    let path = store_path(&data_dir);
    if !path.is_file() {
        return Err(
            InputError(format!("no store at {}: no job has run there", path.display())).into()
        );
    }
    let store = BlockingStore::open(&path)?;
    let job = store
        .call(|s| s.job(&args.job))?
        .ok_or_else(|| InputError(format!("no job `{}` in {}", args.job, path.display())))?;
    let shaping = agentcore_train::record::reward_shaping(&job.settings);
    let filter = TrajectoryFilter {
        success_only: args.success_only,
        min_reward: args.min_reward,
        limit: args.limit,
        offset: args.offset,
    };
    let rows = store.call(|s| s.trajectories(&args.job, &filter))?;
    let flat = matches!(args.format, ExportFormat::Hf);
    let mut lines = String::new();
    for r in &rows {
        let record = export_record(r, shaping.success_reward, shaping.failure_reward, flat);
        lines += &serde_json::to_string(&record)?;
        lines.push('\n');
    }
    // An object-store URL: written locally first, then uploaded.
    let remote =
        args.out.as_ref().map(|o| o.to_string_lossy().into_owned()).filter(|o| o.contains("://"));
    let staging = tempfile::tempdir()?;
    let out = match &remote {
        Some(_) => Some(match args.format {
            ExportFormat::Jsonl => staging.path().join("export.jsonl"),
            ExportFormat::Hf => staging.path().join("dataset"),
        }),
        None => args.out.clone(),
    };
    match (args.format, &out) {
        (ExportFormat::Jsonl, None) => {
            std::io::stdout().lock().write_all(lines.as_bytes())?;
        }
        (ExportFormat::Jsonl, Some(file)) => agentcore_fs::write_atomic(file, lines.as_bytes())?,
        (ExportFormat::Hf, None) => {
            return Err(InputError("--format hf needs --out DIR".into()).into());
        }
        (ExportFormat::Hf, Some(dir)) => {
            std::fs::create_dir_all(dir.join("data"))?;
            agentcore_fs::write_atomic(&dir.join("data").join("train.jsonl"), lines.as_bytes())?;
            let card = format!(
                "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train.jsonl\n---\n\n\
                 # Trajectories of agentcore job `{}`\n\n{} trajectories (success_only: {}, min_reward: {:?}). \
                 Load with `datasets.load_dataset(\"{}\")`. Step `action` and `result` are JSON text.\n",
                args.job,
                rows.len(),
                args.success_only,
                args.min_reward,
                remote.clone().unwrap_or_else(|| dir.display().to_string())
            );
            agentcore_fs::write_atomic(&dir.join("README.md"), card.as_bytes())?;
        }
    }
    if let (Some(url), Some(local)) = (&remote, &out) {
        upload_export(url, local, args.format)?;
    }
    let _ = writeln!(std::io::stderr(), "exported {} trajectories of job {}", rows.len(), args.job);
    Ok(())
}

/// Uploads an export written to `local` to the object-store URL `url`: the JSONL file as the
/// object `url` names, or the dataset folder's files under the prefix `url` (the card last,
/// so a complete dataset is one whose card exists).
fn upload_export(url: &str, local: &Path, format: ExportFormat) -> anyhow::Result<()> {
    let (store_url, files): (String, Vec<(PathBuf, String)>) = match format {
        ExportFormat::Jsonl => {
            let (prefix, name) = url
                .rsplit_once('/')
                .filter(|(p, n)| !n.is_empty() && !p.ends_with('/'))
                .ok_or_else(|| {
                    InputError(format!(
                        "--out {url}: an object-store export needs a key (s3://BUCKET/KEY.jsonl)"
                    ))
                })?;
            let dir = local.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let staged = dir.join(name);
            std::fs::rename(local, &staged)?;
            (prefix.to_owned(), vec![(dir, name.to_owned())])
        }
        ExportFormat::Hf => (
            url.trim_end_matches('/').to_owned(),
            vec![
                (local.to_path_buf(), "data/train.jsonl".to_owned()),
                (local.to_path_buf(), "README.md".to_owned()),
            ],
        ),
    };
    let store = agentcore_artifacts::Artifacts::open(&store_url)
        .map_err(|e| InputError(format!("--out: {e}")))?;
    for (base, rel) in files {
        store.put_file(&base, &rel)?;
    }
    Ok(())
}

/// The owner record of a job run by the CLI process `pid` on this host.
fn cli_owner(pid: u32) -> String {
    format!("cli:{}:{pid}", host_name())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "?".into(), |h| h.trim().to_owned())
}

/// Whether a `running` job's CLI process (on this host) is gone: killed, crashed, or the machine
/// restarted. A pid now used by another program counts as gone.
fn cli_process_gone(owner: Option<&str>) -> bool {
    let Some(rest) = owner.and_then(|o| o.strip_prefix("cli:")) else { return false };
    let Some((host, pid)) = rest.rsplit_once(':') else { return false };
    if host != host_name() {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !String::from_utf8_lossy(&cmdline).contains("agentcore")
}

/// `agentcore jobs`: the jobs of the store.
pub fn jobs(data_dir_flag: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let data_dir = data_dir(data_dir_flag);
    let path = store_path(&data_dir);
    if !path.is_file() {
        write_stdout("no jobs yet")?;
        return Ok(());
    }
    let store = BlockingStore::open(&path)?;
    let jobs = store.call(|s| s.jobs())?;
    // A `running` job whose CLI process is gone was interrupted (kill -9, a crash, a reboot).
    let interrupted: Vec<&str> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Running && cli_process_gone(j.lease_owner.as_deref()))
        .map(|j| j.id.as_str())
        .collect();
    let resume =
        |id: &str| format!("agentcore train --resume {id} --data-dir {}", data_dir.display());
    if json {
        let mut rows = serde_json::to_value(&jobs)?;
        for row in rows.as_array_mut().into_iter().flatten() {
            let id = row["id"].as_str().unwrap_or_default().to_owned();
            if interrupted.contains(&id.as_str()) {
                row["status"] = Value::String("interrupted".into());
                row["resume_command"] = Value::String(resume(&id));
            }
        }
        write_stdout(&serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    let mut out = format!(
        "{:<36}  {:<11}  {:>9}  {:>10}  {}\n",
        "job", "status", "iteration", "cost", "created"
    );
    for j in &jobs {
        let status = if interrupted.contains(&j.id.as_str()) {
            "interrupted".into()
        } else {
            j.status.to_string()
        };
        out += &format!(
            "{:<36}  {:<11}  {:>4}/{:<4}  {:>10}  {}\n",
            j.id, status, j.iterations_completed, j.total_iterations, j.cost_usd, j.created_at
        );
    }
    for id in interrupted {
        out += &format!(
            "\n{id} was interrupted (its process is gone); resume it with:\n  {}\n",
            resume(id)
        );
    }
    write_stdout(&out)
}
