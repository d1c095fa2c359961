//! The `agentcore` binary: parses arguments, runs the command, maps errors to exit codes.
//!
//! Data goes to stdout, diagnostics to stderr. Exit codes: 0 success, 1 runtime failure,
//! 2 invalid input (a config that breaks a rule, a file that cannot be read or parsed).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentcore_grpo::{ConfigFormat, GRPOConfig, GrpoError};
use agentcore_model::bench::{BenchSettings, ModelBenchReport, run_model_bench};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

mod bench_chaos;
mod bench_invoke;
mod deploy_cmd;
mod service_cmd;
mod train_cmd;

/// Train LLM agents with GRPO.
#[derive(Debug, Parser)]
#[command(name = "agentcore", version, about, long_about = None)]
struct Cli {
    /// Log lines as JSON objects (one per line on stderr) instead of text. Which lines: the
    /// `RUST_LOG` filter (e.g. `RUST_LOG=agentcore_train=debug`) [default: warn; info for serve
    /// and worker].
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and validate GRPO training configs.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measure throughput (build with --release for meaningful numbers).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Task suites.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Train an agent with GRPO. With no arguments: the embedded default (warm-start the built-in
    /// agent on the `seed` suite, measure it on held-out tasks, GRPO, measure again).
    Train(train_cmd::TrainArgs),
    /// Evaluate a checkpoint of a job against the agent before training, on the same queries
    /// (paired: McNemar, paired t-test, bootstrap).
    Eval(train_cmd::EvalArgs),
    /// Export a job's trajectories (JSONL in the guide's shape, or a Hugging Face datasets
    /// folder).
    Export(train_cmd::ExportArgs),
    /// List the jobs of the data directory's store; with a subcommand, talk to a server
    /// (`agentcore jobs start|status|list|cancel|evaluate|export --url URL`).
    Jobs {
        /// See `train --data-dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A call to a server.
        #[command(subcommand)]
        remote: Option<service_cmd::JobsCommand>,
    },
    /// Run the training service: JSON-RPC at /api/v1/jsonrpc, WebSocket progress at
    /// /training/ws/{job_id}, /metrics, /healthz; queued jobs run on in-process workers.
    Serve(service_cmd::ServeArgs),
    /// Run queued jobs of a server's store in this process (on this or another machine sharing
    /// the store and the data directory).
    Worker(service_cmd::WorkerArgs),
    /// Deploy a checkpoint to an environment of its agent on a server (`production` needs a
    /// significantly better held-out evaluation, or --force); `deploy list|rollback AGENT_ID`.
    Deploy(deploy_cmd::DeployArgs),
    /// A/B tests on a server: `ab start|status|stop AGENT_ID`.
    #[command(subcommand)]
    Ab(deploy_cmd::AbCommand),
    /// Run a deployed agent on one query (A/B routed by --user-key).
    Invoke(deploy_cmd::InvokeArgs),
    /// A user's verdict on an invocation (feeds the A/B test).
    Feedback(deploy_cmd::FeedbackArgs),
    /// A deployed agent's invocations with their trajectories and outcomes (--all: every page,
    /// as JSON lines).
    Invocations(deploy_cmd::InvocationsArgs),
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// Print generated tasks as JSONL in the guide's shape, `{query, expected_outcome,
    /// metadata: {family, difficulty}}`; the same seed gives the same lines.
    Generate {
        /// The suite (the built-in one is `seed`).
        #[arg(long, default_value = "seed")]
        suite: String,
        /// Number of tasks.
        #[arg(long, default_value_t = 200)]
        n: usize,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Only this difficulty (1-3); by default each task draws one.
        #[arg(long)]
        difficulty: Option<u8>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Training and generation tokens/s of the model engine on the reference architecture of
    /// the PyTorch anchor (shared/anchors/torch_tiny_bench.py).
    Model {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Timed training and forward steps.
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Timed generation runs per batch size.
        #[arg(long, default_value_t = 10)]
        gen_reps: usize,
        /// The Gemma 3 270M GGUF [default: the file scripts/fetch_gemma3.sh fetches, when
        /// present].
        #[arg(long)]
        gemma: Option<PathBuf>,
        /// Skip the Gemma 3 part.
        #[arg(long, conflicts_with = "gemma")]
        no_gemma: bool,
        /// Where the models run: cpu, or cuda / cuda:N in a build with `--features cuda`.
        #[arg(long, default_value = agentcore_model::device::DEFAULT_DEVICE)]
        device: String,
    },
    /// One full GRPO iteration (generation, rewards and advantages, log-probs, backward and
    /// AdamW) on the workload of the TRL anchor (shared/anchors/trl_grpo_step_bench.py: 8
    /// prompts x 8 generations, 16-token prompts, 48 new tokens, temperature 1, beta 0), seconds
    /// per iteration split by phase.
    Grpo {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Untimed iterations first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed iterations.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Where the model runs: cpu, or cuda / cuda:N in a build with `--features cuda`.
        #[arg(long, default_value = agentcore_model::device::DEFAULT_DEVICE)]
        device: String,
    },
    /// One LoRA update (r 8 on q/k/v/o) of a pretrained model on random conversations of the
    /// real-model path's size: its seconds, loss and peak memory (VmHWM), with the logits made
    /// in chunks (the trainer's default) or whole (`--whole-logits`, as before chunking). Run
    /// each variant in its own process: the peak is the process's.
    Update {
        /// The model: a GGUF file or a Hugging Face directory (scripts/fetch_gemma3.sh).
        #[arg(long)]
        model: PathBuf,
        /// Conversations in the update.
        #[arg(long, default_value_t = 4)]
        rows: usize,
        /// Tokens per conversation.
        #[arg(long, default_value_t = 1024)]
        tokens: usize,
        /// The whole (positions x vocabulary) logits at once.
        #[arg(long)]
        whole_logits: bool,
        /// Keep every block's activations for the backward pass (no activation
        /// checkpointing, as before it).
        #[arg(long)]
        no_checkpointing: bool,
        /// Print one JSON object instead of a summary.
        #[arg(long)]
        json: bool,
        /// Where the model runs: cpu, or cuda / cuda:N in a build with `--features cuda`.
        #[arg(long, default_value = agentcore_model::device::DEFAULT_DEVICE)]
        device: String,
    },
    /// A/A tests of the A/B test's sequential test, looked at repeatedly: how often it (and,
    /// for contrast, a fixed-sample z-test looked at the same way) declares a difference that
    /// is not there.
    Ab {
        /// A/A tests.
        #[arg(long, default_value_t = 2000)]
        tests: u32,
        /// Outcomes per test.
        #[arg(long, default_value_t = 2000)]
        outcomes: u32,
        /// Outcomes between two looks.
        #[arg(long, default_value_t = 50)]
        look_every: u32,
        /// Both arms' success rate.
        #[arg(long, default_value_t = 0.5)]
        rate: f64,
        /// Share of outcomes in the experiment arm.
        #[arg(long, default_value_t = 0.5)]
        split: f64,
        /// The level.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
        /// The simulation's seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// `agents.invoke` on the built-in agent through a real server on loopback: invocations/s
    /// and latency percentiles at a number of concurrent callers.
    Invoke {
        /// Concurrent callers.
        #[arg(long, default_value_t = 50)]
        callers: usize,
        /// Timed invocations in all.
        #[arg(long, default_value_t = 2000)]
        invocations: usize,
        /// Untimed invocations first.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// Warm-start steps of the built-in model (the size is the default one).
        #[arg(long, default_value_t = 100)]
        warm_start_steps: usize,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The job queue under chaos, on loopback: PostgreSQL, an S3-compatible store (moto,
    /// scripts/setup_s3.sh), one server and worker processes on their own disks; holders killed
    /// with SIGKILL at random moments, one stopped (SIGSTOP) past its lease and continued, one
    /// sent SIGTERM. Checks that every job completes with no iteration lost or doubled, every
    /// write of the stale holder is refused, and the final weights equal an uninterrupted run.
    Chaos(bench_chaos::ChaosBench),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default GRPOConfig.
    Defaults {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
    },
    /// Validate a config file (JSON, YAML or TOML, by extension) and print the effective
    /// config, defaults filled in.
    Check {
        /// The config file.
        file: PathBuf,
        /// Output format of the effective config.
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
    Toml,
}

impl From<Format> for ConfigFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Json => ConfigFormat::Json,
            Format::Yaml => ConfigFormat::Yaml,
            Format::Toml => ConfigFormat::Toml,
        }
    }
}

/// An error that is the user's input, not a failure of ours: exit code 2.
#[derive(Debug)]
pub(crate) struct InputError(pub(crate) String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

fn main() -> ExitCode {
    // The sandbox launcher: restrict this process and exec the interpreter (see
    // `agentcore_agent::sandbox`). Checked before anything else runs or spawns a thread.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "__sandbox-exec") {
        let rest: Vec<std::ffi::OsString> = args.collect();
        let err = agentcore_agent::sandbox::launcher_main(&rest);
        #[expect(
            clippy::print_stderr,
            reason = "the launcher's only way to report why it did not exec"
        )]
        {
            eprintln!("{err}");
        }
        return ExitCode::from(126);
    }
    configure_cpu_threads();
    let cli = Cli::parse();
    init_logs(&cli);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = if err.downcast_ref::<InputError>().is_some() { 2 } else { 1 };
            #[expect(clippy::print_stderr, reason = "the one place errors reach the user")]
            {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// Logs go to stderr as `tracing` events, filtered by `RUST_LOG` (default: warnings, and the
/// service's own info lines for `serve` and `worker`).
fn init_logs(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.command {
        Command::Serve(_) | Command::Worker(_) => {
            "warn,agentcore_server=info,agentcore_train=info,agentcore_store=info"
        }
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second subscriber cannot be installed; the first one stays (never the case here).
    let _ = if cli.log_json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init()
    };
}

/// candle runs element-wise ops on its own pool of spinning workers (`CANDLE_NUM_THREADS` - 1 of
/// them) and matmuls on rayon's threads; on few cores the spinning workers take the cores the
/// matmuls need (measured on 2 cores: training 2,500 -> 4,100 tokens/s without them). Our fused
/// kernels run on rayon, so the pool gets no workers unless the user sets the variable.
///
/// candle also sizes every matmul's parallelism by `RAYON_NUM_THREADS`, and when it is unset
/// counts physical cores by reading `/proc/cpuinfo` on every matmul (3-5% of decoding time in
/// `perf`); setting it to rayon's own default thread count gives the same pool without the reads.
#[expect(
    unsafe_code,
    reason = "set_var is sound here: main's first statement, no other thread yet"
)]
fn configure_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first in `main`, before any thread is spawned.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        // SAFETY: as above.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(args) => train_cmd::train(args)?,
        Command::Eval(args) => train_cmd::eval(args)?,
        Command::Export(args) => train_cmd::export(args)?,
        Command::Jobs { remote: Some(cmd), .. } => service_cmd::jobs_remote(cmd)?,
        Command::Jobs { data_dir, json, remote: None } => train_cmd::jobs(data_dir, json)?,
        Command::Serve(args) => service_cmd::serve(args)?,
        Command::Worker(args) => service_cmd::worker(args)?,
        Command::Deploy(args) => deploy_cmd::deploy(args)?,
        Command::Ab(cmd) => deploy_cmd::ab(cmd)?,
        Command::Invoke(args) => deploy_cmd::invoke(args)?,
        Command::Feedback(args) => deploy_cmd::feedback(args)?,
        Command::Invocations(args) => deploy_cmd::invocations(args)?,
        Command::Tasks(TasksCommand::Generate { suite, n, seed, difficulty }) => {
            if suite != "seed" {
                return Err(InputError(format!("--suite must be `seed`, got `{suite}`")).into());
            }
            let tasks = agentcore_tasks::seed::generate(n, seed, difficulty)
                .map_err(|e| InputError(e.to_string()))?;
            write_stdout(&agentcore_tasks::data::to_jsonl(&tasks))?;
        }
        Command::Config(ConfigCommand::Defaults { format }) => {
            write_stdout(&GRPOConfig::default().to_string_format(format.into()))?;
        }
        Command::Config(ConfigCommand::Check { file, format }) => {
            let config = load_config(&file)?;
            let mut stderr = std::io::stderr().lock();
            for warning in config.warnings() {
                writeln!(stderr, "warning: {warning}")?;
            }
            writeln!(stderr, "{}: valid", file.display())?;
            write_stdout(&config.to_string_format(format.into()))?;
        }
        Command::Bench(BenchCommand::Ab {
            tests,
            outcomes,
            look_every,
            rate,
            split,
            alpha,
            seed,
        }) => {
            use rand::SeedableRng;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let r = agentcore_grpo::sequential::aa_simulation(
                tests, outcomes, look_every, rate, split, alpha, &mut rng,
            )?;
            write_stdout(&format!(
                "{} A/A tests of {} outcomes (rate {rate}, split {split}), looked at every {}: \
                 false positives at alpha {}\n  sequential (always valid): {:.4}\n  \
                 fixed-sample z-test:       {:.4}\n",
                r.tests,
                r.outcomes,
                r.look_every,
                r.alpha,
                r.sequential_false_positive_rate,
                r.naive_false_positive_rate
            ))?;
        }
        Command::Bench(BenchCommand::Invoke {
            callers,
            invocations,
            warmup,
            warm_start_steps,
            json,
        }) => bench_invoke::run(&bench_invoke::InvokeBench {
            callers,
            invocations,
            warmup,
            warm_start_steps,
            json,
        })?,
        Command::Bench(BenchCommand::Chaos(b)) => bench_chaos::run(&b)?,
        Command::Bench(BenchCommand::Grpo { json, warmup, steps, device }) => {
            use agentcore_train::bench_grpo::{GrpoBenchSettings, run_grpo_bench};
            if steps == 0 {
                return Err(InputError("--steps must be at least 1, got 0".into()).into());
            }
            let settings =
                GrpoBenchSettings { warmup, steps, device, ..GrpoBenchSettings::default() };
            let mut stderr = std::io::stderr();
            let r = run_grpo_bench(&settings, |i, n| {
                let _ = writeln!(stderr, "bench: GRPO iteration {i}/{n}...");
            })?;
            if json {
                write_stdout(&serde_json::to_string(&r)?)?;
            } else {
                let row = |name: &str, t: &agentcore_train::bench_grpo::Seconds| {
                    format!("{name:<20} {:>8.3} s  ({:.3}-{:.3})\n", t.median, t.min, t.max)
                };
                write_stdout(&format!(
                    "GRPO iteration, {} prompts x {} generations, {} new tokens at most, {} \
                     threads (median of {} after {} warm-up)\n{}{}{}{}{}generation: {:.0} \
                     tokens/s, {:.1} tokens per completion\n",
                    r.settings.prompts,
                    r.settings.generations,
                    r.settings.max_completion,
                    r.threads,
                    r.settings.steps,
                    r.settings.warmup,
                    row("iteration", &r.iteration_s),
                    row("  generation", &r.generation_s),
                    row("  rewards+advantages", &r.scoring_s),
                    row("  log-probs (fwd)", &r.logprobs_s),
                    row("  backward+AdamW", &r.backward_and_step_s),
                    r.gen_tokens_per_s,
                    r.mean_completion_tokens,
                ))?;
            }
        }
        Command::Bench(BenchCommand::Update {
            model,
            rows,
            tokens,
            whole_logits,
            no_checkpointing,
            json,
            device,
        }) => {
            use agentcore_train::bench_grpo::{UpdateBenchSettings, run_update_bench};
            if rows == 0 || tokens < 2 {
                return Err(InputError(format!(
                    "--rows must be at least 1 and --tokens at least 2, got {rows} and {tokens}"
                ))
                .into());
            }
            let mut settings =
                UpdateBenchSettings { rows, tokens, device, ..UpdateBenchSettings::default() };
            if whole_logits {
                settings.logit_chunk_bytes = None;
            }
            settings.activation_checkpointing &= !no_checkpointing;
            let _ = writeln!(
                std::io::stderr(),
                "bench: one LoRA update of {} on {rows} x {tokens} tokens...",
                model.display()
            );
            let r = run_update_bench(&model, &settings)?;
            if json {
                write_stdout(&serde_json::to_string(&r)?)?;
            } else {
                let gib = |b: Option<u64>| {
                    b.map_or("n/a".into(), |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
                };
                write_stdout(&format!(
                    "LoRA update, {rows} x {tokens} tokens, logits {}, checkpointing {}: {:.1} s ({:.1} s forward), \
                     loss {:.6}, grad norm {:.6}, RSS after loading {}, peak RSS {}\n",
                    if whole_logits { "whole" } else { "in chunks" },
                    if settings.activation_checkpointing { "on" } else { "off" },
                    r.update_s,
                    r.forward_s,
                    r.loss,
                    r.grad_norm,
                    gib(r.rss_loaded_bytes),
                    gib(r.peak_rss_bytes),
                ))?;
            }
        }
        Command::Bench(BenchCommand::Model { json, steps, gen_reps, gemma, no_gemma, device }) => {
            let gemma = match (gemma, no_gemma) {
                (_, true) => None,
                (Some(path), false) => {
                    if !path.is_file() {
                        return Err(InputError(format!(
                            "--gemma {}: no such file (scripts/fetch_gemma3.sh fetches it)",
                            path.display()
                        ))
                        .into());
                    }
                    Some(path)
                }
                (None, false) => {
                    agentcore_model::hub::default_gemma_gguf_path().filter(|p| p.is_file())
                }
            };
            let settings =
                BenchSettings { steps, gen_reps, gemma, device, ..BenchSettings::default() };
            let mut stderr = std::io::stderr();
            let report = run_model_bench(&settings, |stage| {
                let _ = writeln!(stderr, "bench: {stage}...");
            })?;
            if json {
                write_stdout(&serde_json::to_string(&report)?)?;
            } else {
                write_stdout(&bench_table(&report))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_table(r: &ModelBenchReport) -> String {
    let d = &r.detail;
    let row = |name: &str, rate: &agentcore_model::bench::Rate| {
        format!("{name:<28} {:>10.0} {:>10.0} {:>10.0}\n", rate.median, rate.min, rate.max)
    };
    let gemma = |v: Option<f64>| {
        v.map_or("not measured (no GGUF: run scripts/fetch_gemma3.sh)".to_string(), |x| {
            format!("{x:.1}")
        })
    };
    let mut out = format!(
        "model: {} weights, {} threads, {} timed steps, {} timed generation runs\n\n",
        d.params, d.threads, d.settings.steps, d.settings.gen_reps
    );
    out += &format!("{:<28} {:>10} {:>10} {:>10}\n", "tokens/s", "median", "min", "max");
    out += &row("train (16 x 64, AdamW)", &d.train);
    out += &row("forward (16 x 64)", &d.forward);
    out += &row("generate batch 1 (16+48)", &d.gen_batch1);
    out += &row("generate batch 64 (16+48)", &d.gen_batch64);
    out += &format!("gemma 3 270M batch 1: {}\n", gemma(r.gemma_gen_tokens_per_s_batch1));
    out += &format!("gemma 3 270M batch 8: {}\n", gemma(r.gemma_gen_tokens_per_s_batch8));
    out += &format!("training loss: {:.3} -> {:.3}\n", d.loss_first_last.0, d.loss_first_last.1);
    out
}

/// A config file's text and its format (from the extension).
pub(crate) fn read_config_file(path: &Path) -> anyhow::Result<(String, ConfigFormat)> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let format = ConfigFormat::from_extension(extension).ok_or_else(|| {
        InputError(format!(
            "{}: unknown config format `.{extension}`: use .json, .yaml, .yml or .toml",
            path.display()
        ))
    })?;
    let text = fs::read_to_string(path)
        .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())))?;
    Ok((text, format))
}

/// Reads and validates a config file; the format comes from the extension.
pub(crate) fn load_config(path: &Path) -> anyhow::Result<GRPOConfig> {
    let (text, format) = read_config_file(path)?;
    GRPOConfig::from_str_format(&text, format)
        .map_err(|e: GrpoError| InputError(format!("{}: {e}", path.display())).into())
}

pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).context("writing to stdout")?;
    if !text.ends_with('\n') {
        out.write_all(b"\n").context("writing to stdout")?;
    }
    Ok(())
}
