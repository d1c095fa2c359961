//! `report_to`: a job's scalars in the experiment trackers ML engineers already read.
//!
//! - `tensorboard`: event files (`events.out.tfevents.*`) under `<run_dir>/tensorboard`, one
//!   scalar summary per metric per iteration, flushed after every iteration.
//! - `mlflow`: a run in the experiment named after the agent on an MLflow tracking server (its
//!   REST API), the job's settings as parameters, the same scalars as metrics, the run marked
//!   `FINISHED` (or `FAILED`) at the end. A resumed job continues its run (the id is kept in
//!   `<run_dir>/mlflow_run.json`).
//!
//! The event-file writer is written here (about sixty lines: the record framing and three
//! protobuf messages) rather than taken from `tensorboard-rs`, which is unmaintained and pulls
//! in `protobuf` 2 and an old `image`. A tracker that fails (a full disk, a tracking server
//! down) never stops training: the failure is logged and the metrics are sent again with the
//! next iteration's.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::TrainError;
use crate::events::{Event, IterationMetrics};
use crate::settings::JobSettings;

/// Where a job's scalars go besides its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportTo {
    /// TensorBoard event files under the run directory.
    Tensorboard,
    /// An MLflow tracking server.
    Mlflow,
}

impl ReportTo {
    /// Parses one name as written on the command line.
    ///
    /// # Errors
    /// An unknown name (the message lists the known ones).
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.trim() {
            "tensorboard" => Ok(Self::Tensorboard),
            "mlflow" => Ok(Self::Mlflow),
            other => Err(format!("report_to: unknown tracker {other:?} (tensorboard, mlflow)")),
        }
    }
}

/// The MLflow tracking server of `report_to: [mlflow]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowSettings {
    /// `http(s)://host:port` of the tracking server (`MLFLOW_TRACKING_URI`).
    pub tracking_uri: String,
    /// The experiment; the agent's id when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
}

/// The scalars of one iteration: (tag, value). TRL's names where it has them.
#[must_use]
pub fn scalars(m: &IterationMetrics) -> Vec<(&'static str, f64)> {
    let mut out = vec![
        ("train/loss", m.train_loss),
        ("train/reward", m.avg_reward),
        ("train/reward_std", m.reward_std),
        ("train/frac_reward_zero_std", m.frac_reward_zero_std),
        ("train/success_rate", m.success_rate),
        ("train/clip_ratio/region_mean", m.clip_ratio),
        ("train/completions/mean_length", m.mean_length),
        ("train/grad_norm", m.grad_norm),
        ("train/tool_accuracy", m.tool_accuracy),
        ("train/cost_usd", m.cost_usd.try_into().unwrap_or(f64::NAN)),
    ];
    if let Some(kl) = m.kl {
        out.push(("train/kl", kl));
    }
    if let Some(e) = m.eval_success_rate {
        out.push(("eval/validation_accuracy", e));
    }
    out
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

// --- TensorBoard ---------------------------------------------------------------------------

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// TFRecord's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = CRC32C.checksum(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(u8::try_from(v & 0x7f).unwrap_or(0) | 0x80);
        v >>= 7;
    }
    out.push(u8::try_from(v).unwrap_or(0));
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An `Event` (tensorflow/core/util/event.proto): `wall_time` (1, double), `step` (2, int64),
/// then `file_version` (3) or a `Summary` (5) of `Value`s {`tag` (1), `simple_value` (2,
/// float)}.
fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(&str, f64)],
) -> Vec<u8> {
    let mut e = Vec::new();
    varint(&mut e, 1 << 3 | 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(&mut e, 2 << 3);
    varint(&mut e, step.cast_unsigned());
    if let Some(v) = file_version {
        bytes_field(&mut e, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes());
            varint(&mut v, 2 << 3 | 5);
            #[expect(clippy::cast_possible_truncation, reason = "TensorBoard scalars are f32")]
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            bytes_field(&mut summary, 1, &v);
        }
        bytes_field(&mut e, 5, &summary);
    }
    e
}

/// A TFRecord: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// One TensorBoard event file.
#[derive(Debug)]
pub struct TensorBoardWriter {
    file: File,
    path: PathBuf,
}

impl TensorBoardWriter {
    /// A new event file in `dir` (made if missing), named as TensorFlow names them.
    ///
    /// # Errors
    /// The folder or the file cannot be made.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let t = now();
        let name = format!(
            "events.out.tfevents.{}.agentcore.{}.{}",
            t.as_secs(),
            std::process::id(),
            t.subsec_nanos()
        );
        let path = dir.join(name);
        let mut file = File::options().create_new(true).append(true).open(&path)?;
        file.write_all(&record(&event(t.as_secs_f64(), 0, Some("brain.Event:2"), &[])))?;
        file.flush()?;
        Ok(Self { file, path })
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the scalars of `step` and flushes them to the file.
    ///
    /// # Errors
    /// The write fails.
    pub fn scalars(&mut self, step: u32, scalars: &[(&str, f64)]) -> std::io::Result<()> {
        let e = event(now().as_secs_f64(), i64::from(step), None, scalars);
        self.file.write_all(&record(&e))?;
        self.file.flush()?;
        self.file.sync_data()
    }
}

// --- MLflow --------------------------------------------------------------------------------

/// A run on an MLflow tracking server, through its REST API (`/api/2.0/mlflow/...`).
#[derive(Debug)]
pub struct MlflowRun {
    base: String,
    agent: ureq::Agent,
    /// The run's id.
    pub run_id: String,
    /// Metrics not yet accepted by the server (sent again with the next batch).
    pending: Vec<Value>,
}

/// The most metrics one `log-batch` call takes (MLflow's limit).
const MLFLOW_BATCH: usize = 1000;

impl MlflowRun {
    fn call(
        agent: &ureq::Agent,
        base: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let url = format!("{base}/api/2.0/mlflow/{path}");
        let resp = match body {
            Some(b) => agent.post(&url).send_json(b),
            None => agent.get(&url).call(),
        };
        let mut resp = resp.map_err(|e| format!("MLflow {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| format!("MLflow {url}: {e}"))?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "MLflow {url}: HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        serde_json::from_str(&text).map_err(|e| format!("MLflow {url}: {e}"))
    }

    /// Starts a run in `experiment` (made if missing), or continues `run_id`, with `params`
    /// logged once.
    ///
    /// # Errors
    /// The server cannot be reached or refuses.
    pub fn start(
        settings: &MlflowSettings,
        experiment: &str,
        run_name: &str,
        run_id: Option<&str>,
        params: &[(String, String)],
    ) -> Result<Self, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        let base = settings.tracking_uri.trim_end_matches('/').to_owned();
        if let Some(id) = run_id {
            Self::call(
                &agent,
                &base,
                "runs/update",
                Some(&json!({"run_id": id, "status": "RUNNING"})),
            )?;
            return Ok(Self { base, agent, run_id: id.to_owned(), pending: Vec::new() });
        }
        let name = url_encode(experiment);
        let experiment_id = match Self::call(
            &agent,
            &base,
            &format!("experiments/get-by-name?experiment_name={name}"),
            None,
        ) {
            Ok(v) => v["experiment"]["experiment_id"].as_str().map(str::to_owned),
            Err(e) if e.contains("RESOURCE_DOES_NOT_EXIST") => None,
            Err(e) => return Err(e),
        };
        let experiment_id = match experiment_id {
            Some(id) => id,
            None => {
                Self::call(&agent, &base, "experiments/create", Some(&json!({"name": experiment})))?
                    ["experiment_id"]
                    .as_str()
                    .ok_or("MLflow experiments/create: no experiment_id in the answer")?
                    .to_owned()
            }
        };
        let start_ms = u64::try_from(now().as_millis()).unwrap_or(u64::MAX);
        let created = Self::call(
            &agent,
            &base,
            "runs/create",
            Some(
                &json!({"experiment_id": experiment_id, "start_time": start_ms, "run_name": run_name,
                "tags": [{"key": "mlflow.runName", "value": run_name}, {"key": "agentcore.job_id", "value": run_name}]}),
            ),
        )?;
        let run_id = created["run"]["info"]["run_id"]
            .as_str()
            .ok_or("MLflow runs/create: no run_id in the answer")?
            .to_owned();
        let run = Self { base, agent, run_id, pending: Vec::new() };
        for chunk in params.chunks(100) {
            let params: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v.chars().take(6000).collect::<String>()}))
                .collect();
            run.post("runs/log-batch", &json!({"run_id": run.run_id, "params": params}))?;
        }
        Ok(run)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        Self::call(&self.agent, &self.base, path, Some(body))
    }

    /// Logs the scalars of `step` (with any not accepted before).
    ///
    /// # Errors
    /// The server refuses or cannot be reached; the metrics stay pending.
    pub fn log(&mut self, step: u32, scalars: &[(&str, f64)]) -> Result<(), String> {
        let ts = u64::try_from(now().as_millis()).unwrap_or(u64::MAX);
        self.pending.extend(
            scalars
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| json!({"key": k, "value": v, "timestamp": ts, "step": step})),
        );
        while !self.pending.is_empty() {
            let n = self.pending.len().min(MLFLOW_BATCH);
            let batch: Vec<Value> = self.pending[..n].to_vec();
            self.post("runs/log-batch", &json!({"run_id": self.run_id, "metrics": batch}))?;
            self.pending.drain(..n);
        }
        Ok(())
    }

    /// Marks the run ended: `FINISHED`, `FAILED` or `KILLED`.
    ///
    /// # Errors
    /// The server refuses or cannot be reached.
    pub fn end(&mut self, status: &str) -> Result<(), String> {
        let end = u64::try_from(now().as_millis()).unwrap_or(u64::MAX);
        self.post("runs/update", &json!({"run_id": self.run_id, "status": status, "end_time": end}))
            .map(|_| ())
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The settings as MLflow parameters: the GRPO config's fields and the job's scalars.
fn params(settings: &JobSettings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(Value::Object(config)) = serde_json::to_value(&settings.config) {
        for (k, v) in config {
            match v {
                Value::Object(inner) => {
                    out.extend(
                        inner.into_iter().map(|(k2, v2)| (format!("{k}.{k2}"), v2.to_string())),
                    );
                }
                Value::String(s) => out.push((k, s)),
                other => out.push((k, other.to_string())),
            }
        }
    }
    out.push(("n_tasks".into(), settings.n_tasks.to_string()));
    out.push(("eval_fraction".into(), settings.eval_fraction.to_string()));
    out.push(("agent_id".into(), settings.agent_id()));
    out
}

// --- the job's trackers --------------------------------------------------------------------

/// The trackers of one job; [`Trackers::observe`] sees every event.
#[derive(Debug)]
pub struct Trackers {
    tensorboard: Option<TensorBoardWriter>,
    mlflow: Option<MlflowRun>,
    job_id: String,
    ended: bool,
}

/// Where a job keeps its MLflow run id.
const MLFLOW_RUN_FILE: &str = "mlflow_run.json";

impl Trackers {
    /// Opens the trackers `settings.report_to` names for the job in `run_dir`.
    ///
    /// # Errors
    /// The event file cannot be made, or the MLflow server refuses the run (a job asked to
    /// report somewhere fails at once rather than train unrecorded).
    pub fn open(settings: &JobSettings, run_dir: &Path, job_id: &str) -> Result<Self, TrainError> {
        let mut t =
            Self { tensorboard: None, mlflow: None, job_id: job_id.to_owned(), ended: false };
        if settings.report_to.contains(&ReportTo::Tensorboard) {
            let w = TensorBoardWriter::create(&run_dir.join("tensorboard"))
                .map_err(|e| TrainError::Tracking(format!("tensorboard: {e}")))?;
            tracing::info!(job_id, path = %w.path().display(), "TensorBoard event file");
            t.tensorboard = Some(w);
        }
        if settings.report_to.contains(&ReportTo::Mlflow) {
            let m = settings.mlflow.as_ref().ok_or_else(|| {
                TrainError::Tracking("report_to mlflow needs mlflow.tracking_uri".into())
            })?;
            let file = run_dir.join(MLFLOW_RUN_FILE);
            let earlier: Option<String> = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["run_id"].as_str().map(str::to_owned));
            let experiment = m.experiment.clone().unwrap_or_else(|| settings.agent_id());
            let run =
                MlflowRun::start(m, &experiment, job_id, earlier.as_deref(), &params(settings))
                    .map_err(TrainError::Tracking)?;
            if earlier.is_none() {
                let body = serde_json::to_vec(
                    &json!({"run_id": run.run_id, "tracking_uri": m.tracking_uri}),
                )
                .unwrap_or_default();
                agentcore_fs::write_atomic(&file, &body)
                    .map_err(|e| TrainError::Tracking(format!("{}: {e}", file.display())))?;
            }
            tracing::info!(job_id, run_id = %run.run_id, experiment, "MLflow run");
            t.mlflow = Some(run);
        }
        Ok(t)
    }

    fn scalars(&mut self, step: u32, scalars: &[(&str, f64)]) {
        if let Some(Err(e)) = self.tensorboard.as_mut().map(|w| w.scalars(step, scalars)) {
            tracing::warn!(job_id = %self.job_id, error = %e, "TensorBoard write failed");
        }
        if let Some(Err(e)) = self.mlflow.as_mut().map(|m| m.log(step, scalars)) {
            tracing::warn!(job_id = %self.job_id, error = %e,
                "MLflow logging failed; the metrics are sent again with the next iteration");
        }
    }

    /// Records what `event` carries: the baseline at step 0, each iteration's scalars, the
    /// end of the job.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Baseline { success_rate, .. } => {
                self.scalars(0, &[("eval/validation_accuracy", *success_rate)]);
            }
            Event::Iteration(m) => self.scalars(m.iteration, &scalars(m)),
            Event::Done(summary) => {
                let s = [
                    ("eval/final_success_rate", summary.final_success_rate),
                    ("eval/baseline_success_rate", summary.baseline_success_rate),
                    ("eval/p_value", summary.p_value),
                ];
                self.scalars(summary.iterations, &s);
                self.end(if summary.stop_reason == crate::events::StopReason::Cancelled {
                    "KILLED"
                } else {
                    "FINISHED"
                });
            }
            _ => {}
        }
    }

    fn end(&mut self, status: &str) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let Some(Err(e)) = self.mlflow.as_mut().map(|m| m.end(status)) {
            tracing::warn!(job_id = %self.job_id, error = %e, "MLflow: ending the run failed");
        }
    }
}

impl Drop for Trackers {
    /// A job that ends without its summary (an error) marks its MLflow run failed.
    fn drop(&mut self) {
        self.end("FAILED");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFRecord's masked CRC-32C of known inputs (CRC-32C of "123456789" is 0xE3069283).
    #[test]
    fn the_crc_is_crc32c_masked_as_tfrecord_masks_it() {
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        // Rotated right by 15 and offset by 0xa282ead8, as TFRecord masks it.
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn varints_encode_as_protobuf_does() {
        let enc = |v: u64| {
            let mut out = Vec::new();
            varint(&mut out, v);
            out
        };
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(300), [0xAC, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
    }
}
