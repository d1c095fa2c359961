//! `agentcore bench invoke`: latency and throughput of `agents.invoke` on the built-in agent.
//!
//! A real server on loopback (SQLite in a temporary data directory, the Python sandbox for the
//! tool), a real job that leaves a checkpoint of the built-in model, deployed to production;
//! then `callers` threads, each with its own HTTP client, call `agents.invoke` with the seed
//! suite's queries and distinct user keys. Latency is measured by the caller (the whole JSON-RPC
//! round trip); invocations/s is calls over the wall time of the timed phase.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentcore_client::{InvokeParams, TrainingClient};
use agentcore_server::auth::{ALL_PERMISSIONS, Auth, AuthConfig, AuthKey};
use agentcore_server::{Server, ServerConfig};
use serde_json::json;

use crate::write_stdout;

/// What `bench invoke` measures.
#[derive(Debug, Clone)]
pub struct InvokeBench {
    /// Concurrent callers.
    pub callers: usize,
    /// Timed invocations in all.
    pub invocations: usize,
    /// Untimed invocations first (the checkpoint loads on the first).
    pub warmup: usize,
    /// Warm-start steps of the built-in model (its size is the default; the steps only change
    /// what it answers, not how fast).
    pub warm_start_steps: usize,
    /// JSON instead of text.
    pub json: bool,
}

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    // Nearest rank: the smallest value with at least q of the sample at or below it.
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Runs the benchmark and prints its result.
///
/// # Errors
/// Server start, training, deploy or invocation failures.
pub fn run(b: &InvokeBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.callers >= 1 && b.invocations >= b.callers,
        "need invocations >= callers >= 1"
    );
    let dir = tempfile::tempdir()?;
    let secret: [u8; 32] = rand::random();
    let auth = AuthConfig { key: AuthKey::Hs256(secret.to_vec()), issuer: None, audience: None };
    let token = Auth::new(&auth)
        .map_err(|e| anyhow::anyhow!(e))?
        .issue("bench", "bench", &ALL_PERMISSIONS, 3600)
        .ok_or_else(|| anyhow::anyhow!("issuing the benchmark's token"))?;
    let mut config = ServerConfig::new(dir.path().to_path_buf(), auth);
    config.workers = 1;
    // A benchmark of throughput is not a tenant to protect against.
    config.rate_limit_scale = 1000;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let server = rt.block_on(Server::start(config, None, addr)).map_err(|e| anyhow::anyhow!(e))?;
    let url = format!("http://{}", server.addr);
    let result = measure(b, &url, &token);
    rt.block_on(server.shutdown());
    let r = result?;
    if b.json {
        write_stdout(&(serde_json::to_string_pretty(&r)? + "\n"))?;
    } else {
        write_stdout(&format!(
            "agents.invoke, {}, {} callers, {} invocations:\n  \
             {:.1} invocations/s\n  latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  \
             mean {:.1}\n  server-side mean (the invocation's latency_ms): {:.1} ms\n",
            r["model"].as_str().unwrap_or(""),
            b.callers,
            b.invocations,
            r["invocations_per_s"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p90"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["max"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["mean"].as_f64().unwrap_or(0.0),
            r["server_latency_ms_mean"].as_f64().unwrap_or(0.0),
        ))?;
    }
    Ok(())
}

fn measure(b: &InvokeBench, url: &str, token: &str) -> anyhow::Result<serde_json::Value> {
    let c = TrainingClient::new(url, Some(token.to_owned()));
    let err = |e: agentcore_client::ClientError| anyhow::anyhow!(e);
    c.call(
        "agents.register",
        json!({"agent_id": "bench-agent", "agent_type": "seed",
               "model": {"built_in": {"steps": b.warm_start_steps, "n_demos": 200}}}),
    )
    .map_err(err)?;
    let tasks: Vec<serde_json::Value> = agentcore_tasks::seed::generate(120, 1, Some(1))?
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let config = json!({"n_iterations": 1, "batch_size": 2, "n_trajectories_per_query": 2,
                        "checkpoint_interval": 1, "eval_interval": 1, "max_budget_usd": "1.00"});
    let job = c.start_training("bench-agent", config, &tasks, None).map_err(err)?;
    let status = loop {
        let s = c.get_status(&job.job_id).map_err(err)?;
        if matches!(s.status.as_str(), "completed" | "failed" | "cancelled") {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    anyhow::ensure!(status.status == "completed", "the job ended {}", status.status);
    let checkpoint = status
        .best_checkpoint_id
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the job left no checkpoint"))?;
    c.deploy_checkpoint("bench-agent", &checkpoint, "production", true).map_err(err)?;
    let queries: Vec<String> =
        tasks.iter().filter_map(|t| t["query"].as_str().map(str::to_owned)).collect();
    let call = |c: &TrainingClient, i: usize| -> anyhow::Result<(f64, f64)> {
        let started = Instant::now();
        let r = c
            .invoke(&InvokeParams {
                agent_id: "bench-agent".into(),
                query: queries[i % queries.len()].clone(),
                environment: "production".into(),
                user_key: Some(format!("user-{i}")),
                expected_outcome: None,
            })
            .map_err(err)?;
        Ok((started.elapsed().as_secs_f64() * 1000.0, r.latency_ms as f64))
    };
    for i in 0..b.warmup {
        call(&c, i)?;
    }
    let started = Instant::now();
    let samples: Vec<(f64, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..b.callers)
            .map(|w| {
                let call = &call;
                scope.spawn(move || {
                    let c = TrainingClient::new(url, Some(token.to_owned()));
                    (w..b.invocations)
                        .step_by(b.callers)
                        .map(|i| call(&c, i))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a caller panicked"))?)
            .collect::<anyhow::Result<Vec<Vec<_>>>>()
            .map(|v| v.into_iter().flatten().collect())
    })?;
    let wall = started.elapsed().as_secs_f64();
    let mut client_ms: Vec<f64> = samples.iter().map(|s| s.0).collect();
    client_ms.sort_by(f64::total_cmp);
    let n = client_ms.len() as f64;
    let size = agentcore_train::warmstart::ModelSize::default();
    Ok(json!({
        "callers": b.callers,
        "invocations": client_ms.len(),
        "wall_s": wall,
        "invocations_per_s": n / wall,
        "latency_ms": {
            "p50": percentile(&client_ms, 0.50),
            "p90": percentile(&client_ms, 0.90),
            "p99": percentile(&client_ms, 0.99),
            "max": client_ms.last().copied().unwrap_or(0.0),
            "mean": client_ms.iter().sum::<f64>() / n,
        },
        "server_latency_ms_mean": samples.iter().map(|s| s.1).sum::<f64>() / n,
        "model": format!("built-in, d_model {} x {} layers", size.d_model, size.n_layers),
        "checkpoint_id": checkpoint,
    }))
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        // Values of the sample itself: exact.
        assert_eq!(percentile(&xs, 0.5).to_bits(), 50f64.to_bits());
        assert_eq!(percentile(&xs, 0.99).to_bits(), 99f64.to_bits());
        assert_eq!(percentile(&xs, 1.0).to_bits(), 100f64.to_bits());
        assert_eq!(percentile(&[7.0], 0.99).to_bits(), 7f64.to_bits());
    }
}
