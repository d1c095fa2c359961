//! The service's errors, and the one place they become the contract's codes
//! (`impl From<ApiError> for RpcError`). Handlers return `ApiError`; store, serialisation and
//! task failures convert with `?` and reach the caller as an internal error with a correlation
//! id, their cause only in the server's log.

use agentcore_api::{RpcError, codes};
use agentcore_grpo::GrpoError;
use serde_json::{Value, json};

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("parse error: {0}")]
    Parse(String),
    /// The request is not a JSON-RPC request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A method's calls per minute are used up.
    #[error("rate limit of {method} exceeded: {limit} calls per minute")]
    RateLimited {
        /// The method.
        method: String,
        /// Calls per minute.
        limit: u32,
    },
    /// No such method.
    #[error("method not found: {0}")]
    MethodNotFound(String),
    /// A param breaks a rule; `field` names it where there is one.
    #[error("{message}")]
    InvalidParams {
        /// What is wrong, with the rule and the value.
        message: String,
        /// The field's path.
        field: Option<String>,
    },
    /// A job, checkpoint or agent the caller does not see.
    #[error("{what} not found: {id:?}{hint}")]
    NotFound {
        /// `job`, `checkpoint`, `agent`.
        what: &'static str,
        /// The id asked for.
        id: String,
        /// What to do about it (may be empty).
        hint: &'static str,
    },
    /// The pre-flight estimate is over the budget.
    #[error("estimated cost ${estimate} exceeds max_budget_usd ${max} ({detail})")]
    BudgetExceeded {
        /// The estimate, USD.
        estimate: rust_decimal::Decimal,
        /// The budget, USD.
        max: rust_decimal::Decimal,
        /// How the estimate was made.
        detail: String,
    },
    /// Training or evaluation data breaks a rule.
    #[error("{message}")]
    DataValidation {
        /// The rule and the value.
        message: String,
        /// Field, index, count.
        data: Option<Value>,
    },
    /// The job already ended.
    #[error("cannot cancel job {job_id}: it is already {status}")]
    CannotCancel {
        /// The job.
        job_id: String,
        /// Its final status.
        status: String,
    },
    /// Evaluation could not run.
    #[error("evaluation failed: {0}")]
    EvaluationFailed(String),
    /// An export page larger than the contract allows.
    #[error("export limit exceeded: limit must be <= {max}, got {got}")]
    ExportLimit {
        /// The largest page.
        max: u64,
        /// The page asked for.
        got: u64,
    },
    /// The deployment gate: a production deploy of a checkpoint whose held-out evaluation is
    /// not significantly better than the baseline.
    #[error(
        "deployment gate: checkpoint {checkpoint_id} is not significantly better than the \
         baseline on its held-out evaluation (p = {p_value:.4}, success rate improvement \
         {improvement:+.3}, {queries} queries; production needs p < {alpha} and an improvement \
         > 0); pass force: true to deploy anyway"
    )]
    DeploymentGate {
        /// The checkpoint.
        checkpoint_id: String,
        /// McNemar's p-value.
        p_value: f64,
        /// Success rate difference.
        improvement: f64,
        /// Queries evaluated.
        queries: usize,
        /// The level.
        alpha: f64,
    },
    /// No deployment (or A/B test) for an agent and environment.
    #[error("{0}")]
    NoDeployment(String),
    /// The caller's token lacks a permission.
    #[error("permission denied: {0} is required")]
    PermissionDenied(String),
    /// A GRPOConfig that does not parse or breaks a range.
    #[error(transparent)]
    Config(#[from] GrpoError),
    /// The agent and config do not make a job.
    #[error("agent {agent_id}: {source}")]
    Settings {
        /// The agent.
        agent_id: String,
        /// Why.
        source: agentcore_train::TrainError,
    },
    /// A database failure.
    #[error("store: {0}")]
    Store(#[from] agentcore_store::StoreError),
    /// Anything else that is the server's fault.
    #[error("{context}: {message}")]
    Internal {
        /// Where.
        context: &'static str,
        /// The cause (logged, never sent).
        message: String,
    },
}

impl ApiError {
    /// An invalid param with its field.
    pub fn param(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidParams { message: message.into(), field: Some(field.into()) }
    }

    /// An invalid param without a single field.
    pub fn params(message: impl Into<String>) -> Self {
        Self::InvalidParams { message: message.into(), field: None }
    }

    /// An internal error with where it happened.
    pub fn internal(context: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Internal { context, message: e.to_string() }
    }

    /// A job the caller does not see.
    pub fn no_job(id: &str) -> Self {
        Self::NotFound { what: "job", id: id.to_owned(), hint: "" }
    }

    /// The contract's code of this error.
    #[must_use]
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse(_) => codes::PARSE_ERROR,
            Self::InvalidRequest(_) | Self::RateLimited { .. } | Self::Config(_) => {
                codes::INVALID_REQUEST
            }
            Self::Settings { source, .. } => match source {
                agentcore_train::TrainError::Config(_) => codes::INVALID_REQUEST,
                e if e.is_invalid_input() => codes::INVALID_REQUEST,
                _ => codes::INTERNAL_ERROR,
            },
            Self::MethodNotFound(_) => codes::METHOD_NOT_FOUND,
            Self::InvalidParams { .. } => codes::INVALID_PARAMS,
            Self::NotFound { .. } => codes::NOT_FOUND,
            Self::BudgetExceeded { .. } => codes::BUDGET_EXCEEDED,
            Self::DataValidation { .. } => codes::DATA_VALIDATION,
            Self::CannotCancel { .. } => codes::CANNOT_CANCEL,
            Self::EvaluationFailed(_) => codes::EVALUATION_FAILED,
            Self::ExportLimit { .. } => codes::EXPORT_LIMIT,
            Self::PermissionDenied(_) => codes::PERMISSION_DENIED,
            Self::DeploymentGate { .. } => codes::DEPLOYMENT_GATE,
            Self::NoDeployment(_) => codes::NO_DEPLOYMENT,
            Self::Store(_) | Self::Internal { .. } => codes::INTERNAL_ERROR,
        }
    }
}

/// A config error's field and its message in the contract's words.
fn config_data(e: &GrpoError) -> Value {
    let (field, error) = match e {
        GrpoError::InvalidConfig(f) => (
            Some(f.field.clone()),
            format!("{} must {}, got {}", f.field, f.rule.trim_start_matches("must "), f.value),
        ),
        GrpoError::UnknownConfigField { field, .. } => (Some(field.clone()), e.to_string()),
        GrpoError::ConfigParse { field, .. } => (field.clone(), e.to_string()),
        other => (None, other.to_string()),
    };
    json!({"field": field, "error": error})
}

impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> Self {
        let code = e.code();
        if code == codes::INTERNAL_ERROR {
            let correlation = uuid::Uuid::new_v4().simple().to_string();
            tracing::error!(correlation = %correlation, error = %e, "internal error");
            return Self::new(code, format!("internal error (correlation id {correlation})"));
        }
        let message = e.to_string();
        let data = match &e {
            ApiError::InvalidParams { field: Some(f), message } => {
                Some(json!({"field": f, "error": message}))
            }
            ApiError::Config(g)
            | ApiError::Settings { source: agentcore_train::TrainError::Config(g), .. } => {
                Some(config_data(g))
            }
            ApiError::DataValidation { data, .. } => data.clone(),
            ApiError::BudgetExceeded { estimate, max, .. } => Some(
                json!({"estimated_cost_usd": estimate.to_string(), "max_budget_usd": max.to_string()}),
            ),
            ApiError::CannotCancel { status, .. } => Some(json!({"status": status})),
            ApiError::PermissionDenied(p) => Some(json!({"permission": p})),
            ApiError::DeploymentGate { checkpoint_id, p_value, improvement, queries, alpha } => {
                Some(json!({
                    "checkpoint_id": checkpoint_id, "p_value": p_value,
                    "success_rate_improvement": improvement, "queries_evaluated": queries,
                    "alpha": alpha,
                }))
            }
            _ => None,
        };
        let message = match &e {
            // A config error speaks for itself (the agent is in the request).
            ApiError::Settings { source: agentcore_train::TrainError::Config(g), .. } => {
                g.to_string()
            }
            _ => message,
        };
        let rpc = Self::new(code, message);
        match data {
            Some(d) => rpc.with_data(d),
            None => rpc,
        }
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        Self::internal("serialise", e)
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal("blocking task", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let rpc: RpcError = ApiError::internal("start", "/var/lib/db: disk full").into();
        assert_eq!(rpc.code, codes::INTERNAL_ERROR);
        assert!(rpc.message.contains("correlation id"), "{}", rpc.message);
        assert!(!rpc.message.contains("disk full"), "{}", rpc.message);
    }

    #[test]
    fn each_kind_gets_its_contract_code_and_data() {
        let cases: Vec<(ApiError, i64)> = vec![
            (ApiError::no_job("x"), codes::NOT_FOUND),
            (ApiError::param("url", "bad url"), codes::INVALID_PARAMS),
            (
                ApiError::CannotCancel { job_id: "j".into(), status: "completed".into() },
                codes::CANNOT_CANCEL,
            ),
            (ApiError::ExportLimit { max: 10_000, got: 20_000 }, codes::EXPORT_LIMIT),
            (ApiError::PermissionDenied("training:start".into()), codes::PERMISSION_DENIED),
            (ApiError::EvaluationFailed("no checkpoint".into()), codes::EVALUATION_FAILED),
            (ApiError::MethodNotFound("x".into()), codes::METHOD_NOT_FOUND),
            (ApiError::NoDeployment("nothing deployed".into()), codes::NO_DEPLOYMENT),
            (
                ApiError::DeploymentGate {
                    checkpoint_id: "c".into(),
                    p_value: 0.23,
                    improvement: 0.04,
                    queries: 24,
                    alpha: 0.05,
                },
                codes::DEPLOYMENT_GATE,
            ),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let rpc: RpcError = e.into();
            assert_eq!(rpc.code, code, "{text}");
            assert_eq!(rpc.message, text);
        }
        let rpc: RpcError = ApiError::param("url", "bad url").into();
        assert_eq!(rpc.data.unwrap()["field"], "url");
        let rpc: RpcError =
            ApiError::CannotCancel { job_id: "j".into(), status: "completed".into() }.into();
        assert_eq!(rpc.data.unwrap()["status"], "completed");
        let g = agentcore_grpo::GRPOConfig::from_json_str(r#"{"batch_size": 0}"#).unwrap_err();
        let rpc: RpcError = ApiError::Config(g).into();
        assert_eq!(rpc.code, codes::INVALID_REQUEST);
        assert_eq!(rpc.data.unwrap()["field"], "batch_size");
    }
}
