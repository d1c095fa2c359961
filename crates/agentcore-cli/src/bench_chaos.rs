//! `agentcore bench chaos`: the job queue as a cluster sees it, on one machine.
//!
//! PostgreSQL (a fresh schema on the server `--database-url` names), an S3-compatible object
//! store (moto on loopback, `scripts/setup_s3.sh`), one server (in this process, no workers)
//! and `--workers` worker processes of this binary, each in its own data directory (a pod's
//! empty disk: they share only the database and the object store). It queues `--jobs` small
//! jobs of the built-in model and, while they run:
//! - kills a worker that holds a job with SIGKILL at random moments (`--kills`), each replaced
//!   by a fresh worker on a fresh disk;
//! - stops one holder with SIGSTOP until another worker has taken its job over and moved on,
//!   then lets it continue (SIGCONT): a stale lease holder, whose every write must be refused;
//! - sends one holder SIGTERM and times its exit (it finishes the iteration, checkpoints and
//!   gives the job back).
//!
//! Then it checks, from the database: every job completed; every iteration recorded exactly
//! once, with all its trajectories (none lost, none doubled); and, from the object store, that
//! each job's final weights equal those of the same job run again without interruption.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentcore_artifacts::testing::S3Server;
use agentcore_client::TrainingClient;
use agentcore_server::auth::{ALL_PERMISSIONS, Auth, AuthConfig, AuthKey};
use agentcore_server::{Server, ServerConfig};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::bench_invoke::percentile;
use crate::write_stdout;

/// What `bench chaos` does.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosBench {
    /// The PostgreSQL server (a fresh schema is made on it)
    /// [env: AGENTCORE_TEST_POSTGRES_URL, as scripts/setup_postgres.sh prints it].
    #[arg(long, env = "AGENTCORE_TEST_POSTGRES_URL")]
    pub database_url: String,
    /// Jobs queued.
    #[arg(long, default_value_t = 6)]
    pub jobs: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// SIGKILLs of workers holding a job.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// Iterations per job (enough that the jobs outlast the kills).
    #[arg(long, default_value_t = 200)]
    pub iterations: u32,
    /// The workers' lease, seconds.
    #[arg(long, default_value_t = 2)]
    pub lease_seconds: u64,
    /// Seed of the moments and victims.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The whole benchmark may take this long before it fails.
const DEADLINE: Duration = Duration::from_secs(1800);

/// The message a fenced write that was refused logs (see `Store::fenced`).
const REFUSED: &str = "a write of a worker that lost the job's lease was refused";

struct Worker {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Also a stopped one: SIGKILL ends it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the continued stale holder may take to try its first (refused) write.
const STALE_WRITE_WAIT: Duration = Duration::from_secs(60);

/// A worker sent SIGTERM must exit within this (a pod's grace period is longer).
const SIGTERM_GRACE: Duration = Duration::from_secs(60);

struct Cluster {
    exe: PathBuf,
    root: PathBuf,
    database: String,
    artifacts: String,
    s3_env: Vec<(String, String)>,
    lease_seconds: u64,
    spawned: usize,
}

impl Cluster {
    fn spawn_worker(&mut self) -> anyhow::Result<Worker> {
        self.spawned += 1;
        let name = format!("chaos-w{}", self.spawned);
        let dir = self.root.join(&name);
        std::fs::create_dir_all(&dir)?;
        let log = self.root.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&self.exe)
            .args(["worker", "--database-url", &self.database, "--data-dir"])
            .arg(&dir)
            .args(["--lease-seconds", &self.lease_seconds.to_string()])
            .args(["--artifacts", &self.artifacts])
            .envs(self.s3_env.iter().map(|(k, v)| (k, v)))
            // The worker ids start with it: the lease owner names the process.
            .env("HOSTNAME", &name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()?;
        Ok(Worker { child, name, log })
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status()?.success();
    anyhow::ensure!(ok, "kill -{sig} {pid} failed");
    Ok(())
}

/// The jobs' rows, by id.
fn jobs(
    rt: &tokio::runtime::Runtime,
    store: &agentcore_store::Store,
) -> anyhow::Result<BTreeMap<String, agentcore_store::JobRow>> {
    Ok(rt.block_on(store.jobs())?.into_iter().map(|j| (j.id.clone(), j)).collect())
}

/// The worker process (its `HOSTNAME`) of a lease owner `{HOSTNAME}-{pid}-{k}-{uuid}`.
fn worker_of(lease_owner: &str) -> String {
    let parts: Vec<&str> = lease_owner.rsplitn(4, '-').collect();
    parts.last().copied().unwrap_or(lease_owner).to_owned()
}

/// The worker (by name) holding each running job.
fn holders(rows: &BTreeMap<String, agentcore_store::JobRow>) -> BTreeMap<String, String> {
    rows.values()
        .filter(|j| j.status == "running")
        .filter_map(|j| Some((j.id.clone(), worker_of(j.lease_owner.as_deref()?))))
        .collect()
}

/// Runs the benchmark and prints its result.
///
/// # Errors
/// A missing PostgreSQL or S3 server, a job that does not complete, a check that fails.
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
pub fn run(b: &ChaosBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.jobs >= 1 && b.workers >= 2, "need --jobs >= 1 and --workers >= 2");
    anyhow::ensure!(
        b.database_url.starts_with("postgres://") || b.database_url.starts_with("postgresql://"),
        "--database-url must name a PostgreSQL server (scripts/setup_postgres.sh starts one), got \
         {}",
        agentcore_store::redact_url(&b.database_url)
    );
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let database = rt.block_on(agentcore_store::testing::fresh_postgres_schema(&b.database_url))?;
    let s3 = S3Server::start("chaos")
        .map_err(|e| anyhow::anyhow!(e))?
        .ok_or_else(|| anyhow::anyhow!("no S3 server: run scripts/setup_s3.sh first"))?;
    let root = tempfile::tempdir()?;
    let mut cluster = Cluster {
        exe: std::env::current_exe()?,
        root: root.path().to_path_buf(),
        database: database.clone(),
        artifacts: s3.url("cluster"),
        s3_env: s3.env(),
        lease_seconds: b.lease_seconds,
        spawned: 0,
    };

    // The server: in this process, no workers of its own, the same stores.
    let secret: [u8; 32] = rand::random();
    let auth = AuthConfig { key: AuthKey::Hs256(secret.to_vec()), issuer: None, audience: None };
    let token = Auth::new(&auth)
        .map_err(|e| anyhow::anyhow!(e))?
        .issue("chaos", "chaos", &ALL_PERMISSIONS, 7200)
        .ok_or_else(|| anyhow::anyhow!("issuing the benchmark's token"))?;
    let mut config = ServerConfig::new(root.path().join("server"), auth);
    config.workers = 0;
    // The benchmark queues twice its jobs within a minute; it is not a tenant to throttle.
    config.rate_limit_scale = 1000;
    config.worker.artifacts = std::sync::Arc::new(s3.artifacts("cluster")?);
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let server = rt
        .block_on(Server::start(config, Some(database.clone()), addr))
        .map_err(|e| anyhow::anyhow!(e))?;
    let url = format!("http://{}", server.addr);
    let client = TrainingClient::new(&url, Some(token));
    let err = |e: agentcore_client::ClientError| anyhow::anyhow!(e);
    client
        .call(
            "agents.register",
            json!({"agent_id": "tiny", "model": {"built_in": {"steps": 6, "n_demos": 30,
                   "batch_size": 4, "model": {"d_model": 32, "n_layers": 1, "n_heads": 2,
                   "d_ff": 64, "max_seq_len": 256}}}}),
        )
        .map_err(err)?;
    let tasks: Vec<Value> = agentcore_tasks::seed::generate(120, 3, Some(1))?
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let config_of = |seed: usize| {
        json!({"n_iterations": b.iterations, "batch_size": 3, "n_trajectories_per_query": 3,
               "learning_rate": 0.002, "max_completion_length": 24,
               "max_steps_per_trajectory": 2, "eval_interval": 4, "checkpoint_interval": 2,
               "seed": seed})
    };
    let queue = |n: usize| -> anyhow::Result<Vec<String>> {
        (1..=n)
            .map(|seed| {
                Ok(client
                    .start_training("tiny", config_of(seed), &tasks, None)
                    .map_err(err)?
                    .job_id)
            })
            .collect()
    };
    let store = rt.block_on(agentcore_store::Store::connect(&database))?;
    let chaos_jobs = queue(b.jobs)?;
    let mut workers: Vec<Worker> =
        (0..b.workers).map(|_| cluster.spawn_worker()).collect::<anyhow::Result<_>>()?;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(b.seed);
    let mut next_kill = Instant::now() + Duration::from_millis(rng.random_range(200..800));
    let (mut kills, mut takeover_seconds) = (0usize, Vec::<f64>::new());
    // (job, the killed holder, when) awaiting a new holder.
    let mut pending: Vec<(String, String, Instant, &str)> = Vec::new();
    // How long the job a SIGTERM'd worker gave back waited for its next holder.
    let mut sigterm_takeover: Option<f64> = None;
    // The same for the stopped holder's job (its lease, and the locks of a transaction it was
    // stopped in, which PostgreSQL ends after PG_IDLE_IN_TRANSACTION_TIMEOUT).
    let mut stale_takeover: Option<f64> = None;
    // Per job, the iteration it was interrupted at last: it is not interrupted again before it
    // has checkpointed past it, so no job meets the crash-loop cap (MAX_JOB_ATTEMPTS claims
    // without a new checkpoint), which is not what this benchmark is about.
    let mut interrupted_at: BTreeMap<String, u32> = BTreeMap::new();
    // The stale holder: (worker name, job, iteration then, continued).
    let mut stopped: Option<(String, String, u32, bool)> = None;
    let mut sigterm_exit: Option<f64> = None;
    let mut stale_log: Option<PathBuf> = None;
    let mut stderr = std::io::stderr();
    let done = loop {
        anyhow::ensure!(started.elapsed() < DEADLINE, "the jobs did not finish in {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(50));
        let rows = jobs(&rt, &store)?;
        let held = holders(&rows);
        // Takeovers: a killed or stopped holder's job has another holder.
        pending.retain(|(job, victim, at, why)| match held.get(job) {
            Some(h) if h != victim => {
                let seconds = at.elapsed().as_secs_f64();
                match *why {
                    "term" => sigterm_takeover = Some(seconds),
                    "stop" => stale_takeover = Some(seconds),
                    _ => takeover_seconds.push(seconds),
                }
                false
            }
            _ => rows.get(job).is_some_and(|j| j.status == "running" || j.status == "queued"),
        });
        let finished = chaos_jobs
            .iter()
            .filter(|j| rows.get(*j).is_some_and(|r| r.status != "queued" && r.status != "running"))
            .count();
        if finished == chaos_jobs.len() {
            break rows;
        }
        // The stale holder continues once its job's new holder has moved past it.
        if let Some((name, job, iteration, cont)) = &mut stopped
            && !*cont
            && held.get(job).is_some_and(|h| h != name)
            && rows.get(job).is_some_and(|j| j.iterations_completed > *iteration)
        {
            let w = workers.iter().find(|w| &w.name == name).expect("the stopped worker");
            signal(w.child.id(), "CONT")?;
            *cont = true;
            use std::io::Write;
            let _ = writeln!(stderr, "chaos: SIGCONT {name} (its job {job} moved on elsewhere)");
        }
        if Instant::now() < next_kill {
            continue;
        }
        next_kill = Instant::now() + Duration::from_millis(rng.random_range(200..800));
        let stale = stopped.as_ref().map(|s| s.0.clone());
        let candidates: Vec<(&String, &String)> = held
            .iter()
            .filter(|(job, name)| {
                // (Checkpoints every 2 iterations, recorded after the iteration: 3 past the last
                // interruption means one was recorded since.)
                Some(*name) != stale.as_ref()
                    && rows.get(*job).is_some_and(|j| {
                        j.iterations_completed >= interrupted_at.get(*job).map_or(1, |i| i + 3)
                    })
            })
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let (job, name) = candidates[rng.random_range(0..candidates.len())];
        let (job, name) = (job.clone(), name.clone());
        let k = workers.iter().position(|w| w.name == name);
        let Some(k) = k else { continue };
        let iteration = rows.get(&job).map_or(0, |j| j.iterations_completed);
        interrupted_at.insert(job.clone(), iteration);
        use std::io::Write;
        if stopped.is_none() && kills >= b.kills / 2 {
            signal(workers[k].child.id(), "STOP")?;
            let _ =
                writeln!(stderr, "chaos: SIGSTOP {name} holding {job} at iteration {iteration}");
            stale_log = Some(workers[k].log.clone());
            pending.push((job.clone(), name.clone(), Instant::now(), "stop"));
            stopped = Some((name, job, iteration, false));
            // A stopped worker is not killed; the others keep the pool at size.
            workers.push(cluster.spawn_worker()?);
        } else if sigterm_exit.is_none() && stopped.is_some() {
            let t = Instant::now();
            signal(workers[k].child.id(), "TERM")?;
            let status = loop {
                if let Some(status) = workers[k].child.try_wait()? {
                    break status;
                }
                anyhow::ensure!(t.elapsed() < SIGTERM_GRACE, "SIGTERM: {name} still runs");
                std::thread::sleep(Duration::from_millis(10));
            };
            let seconds = t.elapsed().as_secs_f64();
            anyhow::ensure!(status.success(), "SIGTERM: {name} exited {status:?}");
            let _ = writeln!(stderr, "chaos: SIGTERM {name}: exited cleanly in {seconds:.2} s");
            sigterm_exit = Some(seconds);
            pending.push((job, name, Instant::now(), "term"));
            workers[k] = cluster.spawn_worker()?;
        } else if kills < b.kills {
            workers[k].child.kill()?;
            workers[k].child.wait()?;
            kills += 1;
            // (The replacement below drops the killed one.)
            let _ = writeln!(
                stderr,
                "chaos: SIGKILL {kills}/{} {name} holding {job} at iteration {iteration}",
                b.kills
            );
            pending.push((job, name, Instant::now(), "kill"));
            workers[k] = cluster.spawn_worker()?;
        }
    };
    let chaos_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        kills >= b.kills && sigterm_exit.is_some() && stopped.is_some(),
        "the jobs ended after {kills} kills (of {}), before the SIGSTOP or SIGTERM: give them \
         more --iterations",
        b.kills
    );

    // Checks, from the database.
    let mut lost = 0usize;
    let mut duplicates = 0usize;
    let mut takeovers = 0usize;
    for job in &chaos_jobs {
        let row = &done[job];
        anyhow::ensure!(
            row.status == "completed",
            "job {job} ended {}: {:?}",
            row.status,
            row.error
        );
        let iterations = rt.block_on(store.iterations(job))?;
        let seen: Vec<u32> = iterations.iter().map(|(i, _)| *i).collect();
        lost += (1..=b.iterations).filter(|i| !seen.contains(i)).count();
        duplicates += seen.len().saturating_sub(b.iterations as usize);
        let trajectories =
            rt.block_on(store.trajectories(job, &agentcore_store::TrajectoryFilter::default()))?;
        let mut per: BTreeMap<(u32, u32, u32), usize> = BTreeMap::new();
        for t in &trajectories {
            *per.entry((t.iteration, t.query_index, t.sample_index)).or_default() += 1;
        }
        duplicates += per.values().filter(|n| **n > 1).count();
        for i in 1..=b.iterations {
            if per.keys().filter(|k| k.0 == i).count() != 9 {
                lost += 1;
            }
        }
        let events = rt.block_on(store.events(job))?;
        let mut iteration_events: Vec<u64> = events
            .iter()
            .filter(|e| e.kind == agentcore_store::EventKind::Iteration)
            .filter_map(|e| e.payload["iteration"].as_u64())
            .collect();
        let n = iteration_events.len();
        iteration_events.dedup();
        duplicates += n - iteration_events.len();
        takeovers += events
            .iter()
            .filter(|e| {
                e.kind == agentcore_store::EventKind::JobStarted
                    && !e.payload["resumed_from"].is_null()
            })
            .count();
    }
    // A stale holder whose job finished before it was continued is continued now; either way
    // its next write (which it tries once it runs again) must be refused: wait for that.
    if let Some((name, _, _, cont)) = &stopped
        && !*cont
        && let Some(w) = workers.iter().find(|w| &w.name == name)
    {
        signal(w.child.id(), "CONT")?;
    }
    let refusals = || {
        stale_log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default().matches(REFUSED).count())
            .unwrap_or(0)
    };
    let waited = Instant::now();
    while refusals() == 0 && waited.elapsed() < STALE_WRITE_WAIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = refusals();

    // The same jobs again, uninterrupted, on fresh workers: the weights must be the same.
    drop(workers);
    let reference_started = Instant::now();
    let reference_jobs = queue(b.jobs)?;
    let workers: Vec<Worker> =
        (0..b.workers).map(|_| cluster.spawn_worker()).collect::<anyhow::Result<_>>()?;
    loop {
        anyhow::ensure!(started.elapsed() < DEADLINE, "the reference jobs did not finish");
        std::thread::sleep(Duration::from_millis(100));
        let rows = jobs(&rt, &store)?;
        if reference_jobs.iter().all(|j| rows.get(j).is_some_and(|r| r.status == "completed")) {
            break;
        }
        if let Some(j) = reference_jobs
            .iter()
            .find(|j| rows.get(*j).is_some_and(|r| r.status == "failed" || r.status == "cancelled"))
        {
            anyhow::bail!("reference job {j} ended {}", rows[j].status);
        }
    }
    let reference_seconds = reference_started.elapsed().as_secs_f64();
    drop(workers);
    let artifacts = s3.artifacts("cluster")?;
    let fetched = tempfile::tempdir()?;
    let weights = |job: &str| -> anyhow::Result<Vec<u8>> {
        let rel = format!("runs/{job}/checkpoints/ckpt-{:05}/model.safetensors", b.iterations);
        anyhow::ensure!(artifacts.get_file(fetched.path(), &rel)?, "{rel} is not in the store");
        Ok(std::fs::read(fetched.path().join(&rel))?)
    };
    let mut identical = 0usize;
    for (chaos, reference) in chaos_jobs.iter().zip(&reference_jobs) {
        if weights(chaos)? == weights(reference)? {
            identical += 1;
        }
    }
    rt.block_on(server.shutdown());
    takeover_seconds.sort_by(f64::total_cmp);
    let report = json!({
        "jobs": b.jobs,
        "workers": b.workers,
        "iterations_per_job": b.iterations,
        "lease_seconds": b.lease_seconds,
        "kills": kills,
        "worker_processes_started": cluster.spawned,
        "takeovers": takeovers,
        "time_to_takeover_s": if takeover_seconds.is_empty() { Value::Null } else { json!({
            "median": percentile(&takeover_seconds, 0.5),
            "max": takeover_seconds.last(),
            "min": takeover_seconds.first(),
            "n": takeover_seconds.len(),
        })},
        "stale_holder_writes_refused": refused,
        "stale_holder_takeover_s": stale_takeover,
        "sigterm_exit_s": sigterm_exit,
        "sigterm_takeover_s": sigterm_takeover,
        "lost_iterations": lost,
        "duplicate_rows": duplicates,
        "weights_identical": identical,
        "chaos_wall_s": chaos_seconds,
        "uninterrupted_wall_s": reference_seconds,
        "seed": b.seed,
    });
    let pass = lost == 0
        && duplicates == 0
        && identical == b.jobs
        && refused > 0
        && sigterm_exit.is_some()
        && takeovers >= kills;
    if b.json {
        write_stdout(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        write_stdout(&format!(
            "chaos: {} jobs x {} iterations, {} workers (lease {} s), PostgreSQL + S3 (moto)\n  \
             SIGKILLs of job holders: {kills} ({} worker processes in all); takeovers \
             (resumed starts): {takeovers}\n  time to takeover after SIGKILL s: median {:.2}, min {:.2}, max \
             {:.2} (n {})\n  stale holder (SIGSTOP/SIGCONT): its job taken over after {:.2} s, {refused} of its \
             writes refused afterwards\n  \
             SIGTERM: clean exit in {:.2} s, its job taken over {:.2} s later\n  lost iterations: {lost}; duplicate rows: \
             {duplicates}\n  final weights equal to an uninterrupted run: {identical}/{}\n  wall: \
             {chaos_seconds:.1} s with chaos, {reference_seconds:.1} s uninterrupted\n  {}\n",
            b.jobs,
            b.iterations,
            b.workers,
            b.lease_seconds,
            cluster.spawned,
            percentile(&takeover_seconds, 0.5),
            takeover_seconds.first().copied().unwrap_or(0.0),
            takeover_seconds.last().copied().unwrap_or(0.0),
            takeover_seconds.len(),
            stale_takeover.unwrap_or(f64::NAN),
            sigterm_exit.unwrap_or(f64::NAN),
            sigterm_takeover.unwrap_or(f64::NAN),
            b.jobs,
            if pass { "PASS" } else { "FAIL" },
        ))?;
    }
    anyhow::ensure!(pass, "the chaos benchmark's checks failed: {report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_owner_names_its_worker_process() {
        assert_eq!(worker_of("chaos-w3-4242-0-0123abcd"), "chaos-w3");
        assert_eq!(worker_of("chaos-w12-7-1-ff"), "chaos-w12");
        assert_eq!(worker_of("local-7-1-ff"), "local");
    }
}
