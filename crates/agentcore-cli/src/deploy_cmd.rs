//! `agentcore deploy`, `agentcore ab`, `agentcore invoke` and `agentcore feedback`: deployments,
//! A/B tests and calls of a deployed agent on a server (the same JSON-RPC methods the SDKs
//! call). Results print as JSON on stdout.

use agentcore_api::params::{DEFAULT_AB_ALPHA, DEFAULT_ENVIRONMENT, RaiseRule};
use agentcore_client::{ConfigureAbParams, ExportInvocationsParams, InvokeParams};
use serde_json::Value;

use crate::InputError;
use crate::service_cmd::{Remote, print, rpc_error};

/// `agentcore deploy`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeployArgs {
    /// The agent (deploy: with CHECKPOINT).
    agent_id: Option<String>,
    /// The checkpoint to deploy (e.g. a job's `best_checkpoint_id`).
    checkpoint_id: Option<String>,
    /// The environment: staging, production or a name of yours.
    #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
    environment: String,
    /// Deploy to production even when the held-out evaluation is not significantly better
    /// (recorded on the deployment).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    remote: Remote,
    /// List or roll back instead.
    #[command(subcommand)]
    command: Option<DeployCommand>,
}

/// `agentcore deploy list|rollback`.
#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// The agent's deployments, newest first.
    List {
        /// The agent.
        agent_id: String,
        /// Only this environment [default: all].
        #[arg(long)]
        environment: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Restore the deployment before the active one.
    Rollback {
        /// The agent.
        agent_id: String,
        /// The environment.
        #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
        environment: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `agentcore ab`.
#[derive(Debug, clap::Subcommand)]
pub enum AbCommand {
    /// Split an environment's traffic between its deployment (or --baseline) and an experiment
    /// checkpoint; configuring the same experiment again changes the split and keeps outcomes.
    Start {
        /// The agent.
        agent_id: String,
        /// The experiment checkpoint.
        #[arg(long)]
        experiment: String,
        /// The baseline checkpoint [default: the environment's active deployment].
        #[arg(long)]
        baseline: Option<String>,
        /// Share of users sent to the experiment (0..=1).
        #[arg(long, default_value_t = 0.1)]
        split: f64,
        /// The environment.
        #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
        environment: String,
        /// Roll the experiment back when it is significantly worse.
        #[arg(long)]
        guardrail: bool,
        /// Level of the sequential test.
        #[arg(long, default_value_t = DEFAULT_AB_ALPHA)]
        alpha: f64,
        /// Raise the split through these values (comma-separated, e.g. 0.5,1.0) while the
        /// experiment is significantly better by more than --raise-min-improvement.
        #[arg(long, value_delimiter = ',')]
        raise_steps: Vec<f64>,
        /// See --raise-steps.
        #[arg(long, default_value_t = agentcore_api::params::DEFAULT_MIN_IMPROVEMENT)]
        raise_min_improvement: f64,
        /// Experiment outcomes between two raises.
        #[arg(long, default_value_t = agentcore_api::params::DEFAULT_OUTCOMES_PER_STEP)]
        raise_every: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// The report: per arm invocations, outcomes, success rate (Wilson), latency, cost; the
    /// always-valid p-value and the decision.
    Status {
        /// The agent.
        agent_id: String,
        /// The environment.
        #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
        environment: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop the running test; --promote deploys the experiment if it won.
    Stop {
        /// The agent.
        agent_id: String,
        /// The environment.
        #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
        environment: String,
        /// Deploy the experiment (it must have won, or be forced by a deploy of your own).
        #[arg(long)]
        promote: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `agentcore invoke`.
#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// The agent.
    agent_id: String,
    /// The query.
    query: String,
    /// The environment.
    #[arg(long, default_value = DEFAULT_ENVIRONMENT)]
    environment: String,
    /// The A/B key (a user id: the same key always gets the same arm).
    #[arg(long)]
    user_key: Option<String>,
    /// An expected outcome (JSON object): the job's verifier scores the answer.
    #[arg(long)]
    expected_outcome: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

/// `agentcore feedback`.
#[derive(Debug, clap::Args)]
pub struct FeedbackArgs {
    /// The invocation (`invocation_id` of `agentcore invoke`).
    invocation_id: String,
    /// The user's verdict.
    #[arg(long, required_unless_present = "reward")]
    success: Option<bool>,
    /// A reward instead (or as well); without --success, success is reward > 0.
    #[arg(long)]
    reward: Option<f64>,
    #[command(flatten)]
    remote: Remote,
}

/// `agentcore invocations`.
#[derive(Debug, clap::Args)]
pub struct InvocationsArgs {
    /// The agent.
    agent_id: String,
    /// Only this environment's [default: all].
    #[arg(long)]
    environment: Option<String>,
    /// Invocations per page (at most 10000).
    #[arg(long, default_value_t = 1000)]
    limit: u64,
    /// Skip this many.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Every invocation from --offset on, one JSON object per line (all pages), instead of one
    /// page.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    remote: Remote,
}

/// `agentcore invocations`: an agent's invocations with their trajectories and outcomes.
pub fn invocations(args: InvocationsArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let mut params = ExportInvocationsParams {
        agent_id: args.agent_id,
        environment: args.environment,
        limit: Some(args.limit),
        offset: Some(args.offset),
    };
    if !args.all {
        return print(&client.export_invocations(&params).map_err(rpc_error)?);
    }
    let mut out = String::new();
    loop {
        let page = client.export_invocations(&params).map_err(rpc_error)?;
        for i in &page.invocations {
            out.push_str(&i.to_string());
            out.push('\n');
        }
        if !page.has_more || page.returned_count == 0 {
            break;
        }
        params.offset = Some(params.offset.unwrap_or(0) + page.returned_count);
    }
    crate::write_stdout(&out)
}

/// `agentcore deploy`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    match args.command {
        Some(DeployCommand::List { agent_id, environment, remote }) => print(
            &remote
                .client()?
                .list_deployments(&agent_id, environment.as_deref())
                .map_err(rpc_error)?,
        ),
        Some(DeployCommand::Rollback { agent_id, environment, remote }) => print(
            &remote.client()?.rollback_deployment(&agent_id, &environment).map_err(rpc_error)?,
        ),
        None => {
            let (Some(agent), Some(checkpoint)) = (args.agent_id, args.checkpoint_id) else {
                return Err(InputError(
                    "agentcore deploy AGENT_ID CHECKPOINT_ID [--environment E] [--force] \
                     (or `deploy list|rollback AGENT_ID`)"
                        .into(),
                )
                .into());
            };
            print(
                &args
                    .remote
                    .client()?
                    .deploy_checkpoint(&agent, &checkpoint, &args.environment, args.force)
                    .map_err(rpc_error)?,
            )
        }
    }
}

/// `agentcore ab`.
pub fn ab(cmd: AbCommand) -> anyhow::Result<()> {
    match cmd {
        AbCommand::Start {
            agent_id,
            experiment,
            baseline,
            split,
            environment,
            guardrail,
            alpha,
            raise_steps,
            raise_min_improvement,
            raise_every,
            remote,
        } => {
            let auto_raise = (!raise_steps.is_empty()).then_some(RaiseRule {
                min_improvement: raise_min_improvement,
                steps: raise_steps,
                min_outcomes_per_step: raise_every,
            });
            let params = ConfigureAbParams {
                agent_id: Some(agent_id),
                environment,
                baseline_checkpoint: baseline,
                experiment_checkpoint: experiment,
                traffic_split: split,
                guardrail,
                alpha,
                auto_raise,
            };
            print(&remote.client()?.configure_ab_test(&params).map_err(rpc_error)?)
        }
        AbCommand::Status { agent_id, environment, remote } => {
            print(&remote.client()?.get_ab_test(&agent_id, &environment).map_err(rpc_error)?)
        }
        AbCommand::Stop { agent_id, environment, promote, remote } => print(
            &remote.client()?.stop_ab_test(&agent_id, &environment, promote).map_err(rpc_error)?,
        ),
    }
}

/// `agentcore invoke`.
pub fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let expected_outcome = match args.expected_outcome.as_deref() {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Some(m),
            Ok(other) => {
                return Err(InputError(format!(
                    "--expected-outcome must be a JSON object, got {other}"
                ))
                .into());
            }
            Err(e) => {
                return Err(InputError(format!("--expected-outcome is not JSON: {e}")).into());
            }
        },
    };
    let params = InvokeParams {
        agent_id: args.agent_id,
        query: args.query,
        environment: args.environment,
        user_key: args.user_key,
        expected_outcome,
    };
    print(&args.remote.client()?.invoke(&params).map_err(rpc_error)?)
}

/// `agentcore feedback`.
pub fn feedback(args: FeedbackArgs) -> anyhow::Result<()> {
    print(
        &args
            .remote
            .client()?
            .feedback(&args.invocation_id, args.success, args.reward)
            .map_err(rpc_error)?,
    )
}
