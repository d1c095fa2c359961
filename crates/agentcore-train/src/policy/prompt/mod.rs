//! The prompt policy: GRPO in prompt space for any agent behind an OpenAI-compatible endpoint.
//!
//! Its state ([`state::PromptState`]) is the agent's system prompt, an experience library of
//! lessons and a bank of exemplars taken from the agent's own verified, high-advantage
//! trajectories. A rendering shows, after the system prompt, the items chosen for the query:
//! each item's logit is `(credit + relevance_weight * similarity) / selection_temperature`,
//! where similarity is the BM25 score of the query against the item divided by the query's
//! score against itself (0..1; words only: numbers are an instance's data), or with
//! `retrieval.kind: embeddings` the cosine of the endpoint's `/v1/embeddings` vectors (each
//! text embedded once per job); items less similar than `min_similarity` are not shown, and
//! the others are picked one after another ([`select`]) under the token cap; with
//! `stop_option` (off by default) each pick may instead end the rendering, with the logit of an
//! item of no credit at the similarity threshold. Training rollouts sample the choice, so the
//! rollouts of a group see different renderings (recorded in each trajectory); evaluation
//! takes the best items (with the stop, those that beat it).
//!
//! The update uses the same groups and advantages as the weights policy:
//! - credit: each item's credit moves by `learning_rate` times the policy gradient of the
//!   choice, `sum over groups (1/G) sum_k A_k d log p(rendering_k) / d credit` — items shown in
//!   rollouts that beat their group rise, the others sink; `train_loss` is the matching
//!   surrogate `-mean_groups (1/G) sum_k A_k log p(rendering_k)` before the step;
//! - exemplars: the best trajectory of each group with a reward spread, when the verifier
//!   accepted it, joins the bank (expected outcomes only score; they never enter a prompt);
//! - reflection: where enabled, the reflector proposes library operations for the groups with
//!   the largest spread ([`reflect`]);
//! - past `max_exemplars` / `max_lessons`, the lowest-credit items are retired.
//!
//! GRPOConfig fields for this policy: `learning_rate` is the credit step; `temperature`,
//! `top_p`, `top_k`, `max_completion_length` are the endpoint's sampling (the reflector samples
//! at `temperature` too); `batch_size`, `n_trajectories_per_query`, `scale_rewards`, reward
//! shaping, evaluation, checkpoints, early stopping and the budget mean what they mean for
//! weights. The gradient-only fields (`num_iterations`, `beta`, `epsilon*`, `loss_type`,
//! `max_grad_norm`, `warmup_steps`) are validated and have no effect.

pub mod reflect;
pub mod select;
pub mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use agentcore_agent::backend::{Backend, OpenAiBackend};
use agentcore_agent::definition::{PromptPolicySettings, RetrievalKind};
use agentcore_agent::trajectory::PromptContext;
use bm25::{Document, Language, SearchEngineBuilder};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{Policy, PromptStats, ScoredBatch, UpdateStats};
use crate::TrainError;
use crate::settings::{ApiAgent, JobSettings};
use select::Candidate;
use state::{Exemplar, Lesson, PromptState, StateDiff};

/// The prompt policy of a job.
pub struct PromptPolicy {
    state: PromptState,
    settings: PromptPolicySettings,
    backend: OpenAiBackend,
    reflector: Option<OpenAiBackend>,
    /// The embeddings endpoint (`retrieval.kind: embeddings`), the vectors it gave per text,
    /// and their cost not yet reported.
    embedder: Option<Embedder>,
    learning_rate: f64,
    temperature: f64,
    /// The state of the previous checkpoint and the reflections since (for the diff file).
    saved: Mutex<(PromptState, Vec<Value>)>,
}

/// Embedding retrieval: the endpoint and what it gave so far.
struct Embedder {
    backend: OpenAiBackend,
    vectors: Mutex<HashMap<String, Vec<f32>>>,
    cost: Mutex<Decimal>,
}

impl Embedder {
    /// Cosine (below 0 as 0) of `query`'s vector with each text's, embedding the texts not yet
    /// seen; `None` when the endpoint fails (the caller falls back to BM25).
    fn similarity(&self, query: &str, texts: &[String]) -> Option<Vec<f64>> {
        if texts.is_empty() {
            return Some(Vec::new());
        }
        let mut vectors = self.vectors.lock().ok()?;
        let mut missing: Vec<String> = Vec::new();
        for t in std::iter::once(query).chain(texts.iter().map(String::as_str)) {
            if !vectors.contains_key(t) && !missing.iter().any(|m| m == t) {
                missing.push(t.to_owned());
            }
        }
        for chunk in missing.chunks(crate::defaults::EMBEDDING_BATCH_TEXTS) {
            match self.backend.embeddings(chunk) {
                Ok((got, usage)) => {
                    if let Ok(mut cost) = self.cost.lock() {
                        *cost += self.backend.settings().cost(usage);
                    }
                    vectors.extend(chunk.iter().cloned().zip(got));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "embedding request failed; BM25 used for this query");
                    return None;
                }
            }
        }
        let q = vectors.get(query)?;
        texts.iter().map(|t| vectors.get(t.as_str()).map(|v| cosine(q, v).max(0.0))).collect()
    }

    /// The cost since the last call.
    fn take_cost(&self) -> Decimal {
        self.cost.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default()
    }
}

/// Cosine of two vectors of one width (0 when either is zero).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 { 0.0 } else { ab / (aa.sqrt() * bb.sqrt()) }
}

/// The words of a text that say what kind of task it is: its words with a letter in them.
/// Numbers and other literals are an instance's data (two tasks of different kinds that
/// happen to share numbers are not alike); a text with no such word is kept whole.
fn kind_words(text: &str) -> String {
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '\''))
        .filter(|w| w.chars().any(char::is_alphabetic))
        .collect();
    if words.is_empty() { text.to_owned() } else { words.join(" ") }
}

/// Similarity of `query` to each text: its BM25 score over the texts and the query itself,
/// divided by the query's score against itself (1: every weighted word shared; 0: none).
/// Only the words of [`kind_words`] count.
fn similarity(query: &str, texts: &[String]) -> Vec<f64> {
    if texts.is_empty() {
        return Vec::new();
    }
    let query = kind_words(query);
    let docs: Vec<Document<usize>> = texts
        .iter()
        .map(|t| kind_words(t))
        .chain(std::iter::once(query.clone()))
        .enumerate()
        .map(|(i, t)| Document::new(i, t))
        .collect();
    let engine = SearchEngineBuilder::<usize>::with_documents(Language::English, docs).build();
    let mut out = vec![0.0; texts.len() + 1];
    for r in engine.search(&query, None) {
        out[r.document.id] = f64::from(r.score);
    }
    let own = out.pop().unwrap_or(0.0);
    if own > 0.0 {
        for v in &mut out {
            *v = (*v / own).min(1.0);
        }
    }
    out
}

/// Items of one kind for one query: candidates and ids.
struct Pool {
    ids: Vec<String>,
    cands: Vec<Candidate>,
}

impl PromptPolicy {
    fn build(settings: &JobSettings, api: &ApiAgent, state: PromptState) -> Self {
        let p = &api.prompt_policy;
        let allow = api.allow_private_endpoints;
        let reflector = p.reflection.enabled.then(|| {
            let endpoint = p.reflection.model.clone().unwrap_or_else(|| api.endpoint.clone());
            OpenAiBackend::with_address_rule(endpoint, allow)
        });
        let embedder = (p.retrieval.kind == RetrievalKind::Embeddings).then(|| {
            let endpoint = p.retrieval.model.clone().unwrap_or_else(|| api.endpoint.clone());
            Embedder {
                backend: OpenAiBackend::with_address_rule(endpoint, allow),
                vectors: Mutex::new(HashMap::new()),
                cost: Mutex::new(Decimal::ZERO),
            }
        });
        Self {
            saved: Mutex::new((state.clone(), Vec::new())),
            state,
            settings: p.clone(),
            backend: OpenAiBackend::with_address_rule(api.endpoint.clone(), allow),
            reflector,
            embedder,
            learning_rate: settings.config.learning_rate,
            temperature: settings.config.temperature,
        }
    }

    /// The policy before training: the agent's own prompt, nothing learned.
    #[must_use]
    pub fn initial(settings: &JobSettings, api: &ApiAgent) -> Self {
        Self::build(settings, api, PromptState::new(&api.system_prompt))
    }

    /// The policy of a checkpoint directory, with the job's RNG at that point.
    ///
    /// # Errors
    /// Missing or unreadable files, a document of another format or a newer version.
    pub fn from_checkpoint(
        settings: &JobSettings,
        api: &ApiAgent,
        dir: &Path,
    ) -> Result<(Self, ChaCha8Rng), TrainError> {
        let read = |name: &str| -> Result<Vec<u8>, TrainError> {
            std::fs::read(dir.join(name)).map_err(|e| TrainError::CorruptState {
                path: dir.join(name),
                message: e.to_string(),
            })
        };
        let corrupt = |name: &str, message: String| TrainError::CorruptState {
            path: dir.join(name),
            message,
        };
        let state: PromptState = serde_json::from_slice(&read(state::STATE_FILE)?)
            .map_err(|e| corrupt(state::STATE_FILE, e.to_string()))?;
        state.check().map_err(|e| corrupt(state::STATE_FILE, e))?;
        let rng: ChaCha8Rng = serde_json::from_slice(&read(state::RNG_FILE)?)
            .map_err(|e| corrupt(state::RNG_FILE, e.to_string()))?;
        Ok((Self::build(settings, api, state), rng))
    }

    /// The state.
    #[must_use]
    pub fn state(&self) -> &PromptState {
        &self.state
    }

    /// The items that may be shown for `query` (those at least `min_similarity` similar to
    /// it), lessons and exemplars.
    fn pools(&self, query: &str) -> (Pool, Pool) {
        let lessons = self.state.lessons.iter().map(|l| {
            (l.id.as_str(), l.credit, l.text.as_str(), state::tokens(&state::lesson_text(l)))
        });
        let exemplars = self.state.exemplars.iter().map(|e| {
            (e.id.as_str(), e.credit, e.query.as_str(), state::tokens(&state::exemplar_text(e)))
        });
        (self.pool(query, lessons.collect()), self.pool(query, exemplars.collect()))
    }

    /// The candidates among `items` (id, credit, the text compared with the query, tokens).
    fn pool(&self, query: &str, items: Vec<(&str, f64, &str, usize)>) -> Pool {
        let s = &self.settings;
        let texts: Vec<String> = items.iter().map(|i| i.2.to_owned()).collect();
        let mut pool = Pool { ids: Vec::new(), cands: Vec::new() };
        let similarities = self
            .embedder
            .as_ref()
            .and_then(|e| e.similarity(query, &texts))
            .unwrap_or_else(|| similarity(query, &texts));
        for ((id, credit, _, tokens), r) in items.into_iter().zip(similarities) {
            if r >= s.min_similarity {
                pool.ids.push(id.to_owned());
                pool.cands.push(Candidate {
                    logit: (credit + s.relevance_weight * r) / s.selection_temperature,
                    tokens: tokens + 1,
                });
            }
        }
        pool
    }

    /// The choice of up to `k` items of `pool`; with `stop_option`, each pick may instead stop,
    /// with the logit of an item of no credit at the similarity threshold.
    fn choice<'a>(&self, pool: &'a Pool, k: usize) -> select::Choice<'a> {
        let s = &self.settings;
        let stop =
            s.stop_option.then(|| s.relevance_weight * s.min_similarity / s.selection_temperature);
        select::Choice { cands: &pool.cands, stop, k }
    }

    /// The rendering of one query: exemplars first (they teach most), then lessons, under the
    /// token cap.
    fn render(&self, query: &str, rng: Option<&mut ChaCha8Rng>) -> PromptContext {
        let (lessons, exemplars) = self.pools(query);
        let s = &self.settings;
        let budget = s.max_prompt_tokens;
        let (e_choice, l_choice) =
            (self.choice(&exemplars, s.exemplars_shown), self.choice(&lessons, s.lessons_shown));
        let (e_picks, l_picks) = match rng {
            Some(rng) => {
                let (e, left) = e_choice.sample(budget, rng);
                let (l, _) = l_choice.sample(left, rng);
                (e, l)
            }
            None => {
                let (e, left) = e_choice.greedy(budget);
                let (l, _) = l_choice.greedy(left);
                (e, l)
            }
        };
        let by_id = |id: &String| self.state.lessons.iter().find(|l| &l.id == id);
        let shown_lessons: Vec<&Lesson> =
            l_picks.iter().filter_map(|&i| by_id(&lessons.ids[i])).collect();
        let shown_exemplars: Vec<&Exemplar> = e_picks
            .iter()
            .filter_map(|&i| self.state.exemplars.iter().find(|e| e.id == exemplars.ids[i]))
            .collect();
        PromptContext {
            system_prompt: state::render(
                &self.state.system_prompt,
                &shown_lessons,
                &shown_exemplars,
            ),
            shown: e_picks
                .iter()
                .map(|&i| exemplars.ids[i].clone())
                .chain(l_picks.iter().map(|&i| lessons.ids[i].clone()))
                .collect(),
        }
    }

    /// Log-probability of a rendering under the current state and its gradient per item id.
    fn log_prob(&self, query: &str, shown: &[String]) -> (f64, Vec<(String, f64)>) {
        let (lessons, exemplars) = self.pools(query);
        let index = |ids: &[String], prefix: char| -> Vec<usize> {
            shown
                .iter()
                .filter(|s| s.starts_with(prefix))
                .filter_map(|s| ids.iter().position(|i| i == s))
                .collect()
        };
        let e_picks = index(&exemplars.ids, 'E');
        let l_picks = index(&lessons.ids, 'L');
        let budget = self.settings.max_prompt_tokens;
        let (e_choice, l_choice) = (
            self.choice(&exemplars, self.settings.exemplars_shown),
            self.choice(&lessons, self.settings.lessons_shown),
        );
        let (lp_e, g_e) = e_choice.log_prob_and_grad(budget, &e_picks);
        let used: usize = e_picks.iter().map(|&i| exemplars.cands[i].tokens).sum();
        let (lp_l, g_l) = l_choice.log_prob_and_grad(budget.saturating_sub(used), &l_picks);
        let grads = exemplars.ids.into_iter().zip(g_e).chain(lessons.ids.into_iter().zip(g_l));
        (lp_e + lp_l, grads.collect())
    }

    /// Credits from the group-relative policy gradient; returns the surrogate loss and the
    /// gradient's norm.
    fn credit(&mut self, batch: &ScoredBatch<'_>) -> (f64, f64) {
        let g = batch.group_size.max(1) as f64;
        let groups = batch.tasks.len().max(1) as f64;
        let mut grad: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
        let mut loss = 0.0;
        let t = self.settings.selection_temperature;
        for (k, traj) in batch.trajectories.iter().enumerate() {
            let a = batch.advantages[k];
            let shown = traj.context.as_ref().map(|c| c.shown.as_slice()).unwrap_or_default();
            let (logp, grads) = self.log_prob(&batch.task_of(k).query, shown);
            loss -= a * logp / g / groups;
            if a != 0.0 {
                // d logit / d credit = 1 / selection_temperature.
                for (id, d) in grads {
                    *grad.entry(id).or_default() += a * d / g / t;
                }
            }
        }
        let norm = grad.values().map(|x| x * x).sum::<f64>().sqrt();
        for e in &mut self.state.exemplars {
            e.credit += self.learning_rate * grad.get(&e.id).copied().unwrap_or(0.0);
        }
        for l in &mut self.state.lessons {
            l.credit += self.learning_rate * grad.get(&l.id).copied().unwrap_or(0.0);
        }
        (loss, norm)
    }

    /// The best verified (and, with `grounded_exemplars`, grounded) trajectory of each group with a
    /// reward spread joins the bank.
    fn add_exemplars(&mut self, batch: &ScoredBatch<'_>) {
        let size = batch.group_size.max(1);
        for g in 0..batch.tasks.len() {
            let range = g * size..((g + 1) * size).min(batch.trajectories.len());
            let rewards = &batch.rewards[range.clone()];
            let (lo, hi) = rewards
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| (a.min(r), b.max(r)));
            if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            let grounded = |k: usize| {
                !self.settings.grounded_exemplars || state::grounded(&batch.trajectories[k])
            };
            let Some(best) = range
                .clone()
                .filter(|&k| batch.passed[k] && grounded(k))
                .max_by(|&a, &b| batch.rewards[a].total_cmp(&batch.rewards[b]).then(b.cmp(&a)))
            else {
                continue;
            };
            let query = &batch.tasks[g].query;
            if self.state.exemplars.iter().any(|e| &e.query == query) {
                continue;
            }
            let Some(messages) = state::demonstration(&batch.trajectories[best]) else { continue };
            let id = self.state.new_id('E');
            self.state.exemplars.push(Exemplar {
                id,
                query: query.clone(),
                messages,
                source: state::trajectory_id(batch.iteration, best, size),
                reward: batch.rewards[best],
                advantage: batch.advantages[best],
                added_iteration: batch.iteration,
                shown: 0,
                credit: 0.0,
            });
        }
    }

    /// Reflection on the groups with the largest reward spread; returns (applied, rejected, cost).
    fn reflect(&mut self, batch: &ScoredBatch<'_>) -> (usize, usize, Decimal) {
        let Some(reflector) = &self.reflector else { return (0, 0, Decimal::ZERO) };
        let r = &self.settings.reflection;
        let size = batch.group_size.max(1);
        let mut spreads: Vec<(usize, f64, usize, usize)> = (0..batch.tasks.len())
            .filter_map(|g| {
                let range = g * size..((g + 1) * size).min(batch.trajectories.len());
                let best =
                    range.clone().max_by(|&a, &b| batch.rewards[a].total_cmp(&batch.rewards[b]))?;
                let worst = range.min_by(|&a, &b| batch.rewards[a].total_cmp(&batch.rewards[b]))?;
                let spread = batch.rewards[best] - batch.rewards[worst];
                (spread > 0.0).then_some((g, spread, best, worst))
            })
            .collect();
        spreads.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let (mut applied, mut rejected, mut cost) = (0, 0, Decimal::ZERO);
        let mut log = Vec::new();
        for &(g, _, best, worst) in spreads.iter().take(r.groups_per_iteration) {
            let request = reflect::prompt(
                &batch.tasks[g].query,
                (&batch.trajectories[best], batch.rewards[best]),
                (&batch.trajectories[worst], batch.rewards[worst]),
                &self.state.lessons,
                r.max_ops_per_iteration,
                r.max_lesson_chars,
            );
            let answer = match reflect::ask(reflector, &request, r.max_tokens, self.temperature) {
                Ok((text, c)) => {
                    cost += c;
                    text
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reflector request failed; skipped");
                    rejected += 1;
                    log.push(json!({"iteration": batch.iteration, "group": g, "error": e}));
                    continue;
                }
            };
            let (ops, bad) = reflect::parse_ops(&answer, &self.state, r.max_lesson_chars);
            let mut done = Vec::new();
            let mut skipped: Vec<Value> =
                bad.into_iter().map(|(op, why)| json!({"op": op, "reason": why})).collect();
            for op in ops {
                if applied >= r.max_ops_per_iteration {
                    skipped.push(
                        json!({"op": format!("{op:?}"), "reason": "max_ops_per_iteration reached"}),
                    );
                    continue;
                }
                let source = state::trajectory_id(batch.iteration, best, size);
                match &op {
                    reflect::Op::Add(text) => {
                        let id = self.state.new_id('L');
                        self.state.lessons.push(Lesson {
                            id,
                            text: text.clone(),
                            sources: vec![
                                source,
                                state::trajectory_id(batch.iteration, worst, size),
                            ],
                            added_iteration: batch.iteration,
                            shown: 0,
                            credit: 0.0,
                        });
                    }
                    reflect::Op::Update(id, text) => {
                        if let Some(l) = self.state.lessons.iter_mut().find(|l| &l.id == id) {
                            l.text = text.clone();
                            l.added_iteration = batch.iteration;
                            l.sources.push(source);
                        }
                    }
                    reflect::Op::Delete(id) => self.state.lessons.retain(|l| &l.id != id),
                }
                applied += 1;
                done.push(format!("{op:?}"));
            }
            rejected += skipped.len();
            if !skipped.is_empty() {
                tracing::debug!(
                    group = g,
                    rejected = skipped.len(),
                    "reflector operations rejected"
                );
            }
            log.push(json!({
                "iteration": batch.iteration,
                "group": g,
                "answer": answer.chars().take(2000).collect::<String>(),
                "applied": done,
                "rejected": skipped,
            }));
        }
        if let Ok(mut saved) = self.saved.lock() {
            saved.1.extend(log);
        }
        (applied, rejected, cost)
    }

    /// Past the caps, the lowest-credit items go (the older on ties).
    fn retire(&mut self) {
        let s = &self.settings;
        while self.state.exemplars.len() > s.max_exemplars {
            let worst = (0..self.state.exemplars.len())
                .min_by(|&a, &b| {
                    self.state.exemplars[a].credit.total_cmp(&self.state.exemplars[b].credit)
                })
                .unwrap_or(0);
            self.state.exemplars.remove(worst);
        }
        while self.state.lessons.len() > s.max_lessons {
            let worst = (0..self.state.lessons.len())
                .min_by(|&a, &b| {
                    self.state.lessons[a].credit.total_cmp(&self.state.lessons[b].credit)
                })
                .unwrap_or(0);
            self.state.lessons.remove(worst);
        }
    }
}

impl Policy for PromptPolicy {
    fn describe(&self) -> String {
        format!(
            "prompt: {} on {} (system prompt + {} lessons + {} exemplars; credit step {})",
            self.backend.settings().model,
            self.backend.settings().base_url,
            self.state.lessons.len(),
            self.state.exemplars.len(),
            self.learning_rate
        )
    }

    fn backend(&self) -> Result<Box<dyn Backend + '_>, TrainError> {
        Ok(Box::new(&self.backend))
    }

    fn contexts(
        &self,
        queries: &[String],
        explore: bool,
        rng: &mut ChaCha8Rng,
    ) -> Option<Vec<PromptContext>> {
        Some(
            queries
                .iter()
                .map(|q| if explore { self.render(q, Some(rng)) } else { self.render(q, None) })
                .collect(),
        )
    }

    fn take_api_cost(&self) -> Decimal {
        self.embedder.as_ref().map_or(Decimal::ZERO, Embedder::take_cost)
    }

    fn update(&mut self, batch: &ScoredBatch<'_>) -> Result<UpdateStats, TrainError> {
        let mut shown_exemplars = 0usize;
        for t in batch.trajectories {
            for id in t.context.iter().flat_map(|c| &c.shown) {
                if let Some(e) = self.state.exemplars.iter_mut().find(|e| &e.id == id) {
                    e.shown += 1;
                    shown_exemplars += 1;
                } else if let Some(l) = self.state.lessons.iter_mut().find(|l| &l.id == id) {
                    l.shown += 1;
                }
            }
        }
        let (loss, grad_norm) = self.credit(batch);
        let scored = batch.advantages.iter().filter(|a| **a != 0.0).count();
        self.add_exemplars(batch);
        let (applied, rejected, reflection_cost) = self.reflect(batch);
        // Embeddings of this iteration's rollouts and credit (and of the evaluation before it).
        let cost =
            reflection_cost + self.embedder.as_ref().map_or(Decimal::ZERO, Embedder::take_cost);
        self.retire();
        self.state.iteration += 1;
        Ok(UpdateStats {
            loss,
            kl: None,
            clip_ratio: 0.0,
            grad_norm,
            scored_rows: scored,
            stepped: true,
            prompt: Some(PromptStats {
                library_size: self.state.lessons.len(),
                exemplar_bank_size: self.state.exemplars.len(),
                exemplars_shown: shown_exemplars as f64 / batch.trajectories.len().max(1) as f64,
                reflection_ops_applied: applied,
                reflection_ops_rejected: rejected,
            }),
            api_cost_usd: cost,
            forward_seconds: 0.0,
        })
    }

    fn checkpoint_files(&self, rng: &ChaCha8Rng) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
        let mut saved =
            self.saved.lock().map_err(|_| TrainError::Update("poisoned lock".into()))?;
        let reflections = std::mem::take(&mut saved.1);
        let diff = StateDiff::between(&saved.0, &self.state, reflections);
        saved.0 = self.state.clone();
        Ok(vec![
            (state::STATE_FILE.into(), pretty(&self.state)?),
            (state::DIFF_FILE.into(), pretty(&diff)?),
            (state::RNG_FILE.into(), pretty(rng)?),
        ])
    }
}

/// Pretty JSON of a checkpoint document.
fn pretty<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, TrainError> {
    serde_json::to_vec_pretty(v).map_err(|e| TrainError::Update(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcore_agent::backend::OpenAiSettings;
    use agentcore_agent::trajectory::{Step, StopReason, Trajectory, Usage};
    use agentcore_tasks::Task;
    use rand::SeedableRng;

    fn settings() -> (JobSettings, ApiAgent) {
        let mut p = PromptPolicySettings::default();
        p.reflection.enabled = false;
        let api = ApiAgent {
            endpoint: OpenAiSettings::new("http://127.0.0.1:9/v1", "m"),
            system_prompt: "Solve the task.".into(),
            prompt_policy: p,
            allow_private_endpoints: true,
        };
        let mut s = JobSettings { api: Some(api.clone()), ..JobSettings::default() };
        s.config.learning_rate = 0.5;
        (s, api)
    }

    fn task(query: &str, secret: &str) -> Task {
        let mut expected = serde_json::Map::new();
        expected.insert("result".into(), json!(secret));
        Task { query: query.into(), expected_outcome: expected, metadata: None }
    }

    /// A trajectory whose tool call printed its answer (or `7` when it has none).
    fn trajectory(query: &str, answer: Option<&str>, shown: &[&str]) -> Trajectory {
        printing(query, answer, answer.unwrap_or("7"), shown)
    }

    /// A trajectory whose tool call printed `output`, then answered `answer`.
    fn printing(query: &str, answer: Option<&str>, output: &str, shown: &[&str]) -> Trajectory {
        let call = json!({"type": "tool_call", "name": "python",
            "arguments": {"code": "print(len(basket))"},
            "text": "<tool_call>{\"name\": \"python\", \"arguments\": {\"code\": \"print(len(basket))\"}}"});
        let mut t = finished(query, vec![step(query, call, json!({"ok": true, "output": output}))]);
        t.final_answer = answer.map(str::to_owned);
        t.context = Some(PromptContext {
            system_prompt: String::new(),
            shown: shown.iter().map(|s| (*s).to_owned()).collect(),
        });
        t
    }

    /// A step of `action` that returned `result`.
    pub(super) fn step(state: &str, action: Value, result: Value) -> Step {
        Step { state: state.into(), action, result, timestamp: String::new(), duration_ms: 1 }
    }

    /// A trajectory of `steps` that stopped on an answer (none set yet), its tool calls counted
    /// from the steps.
    pub(super) fn finished(query: &str, steps: Vec<Step>) -> Trajectory {
        let calls: Vec<&Step> = steps.iter().filter(|s| s.action["type"] == "tool_call").collect();
        let tool_calls = u32::try_from(calls.len()).expect("a test's handful of calls");
        let successful_tool_calls =
            u32::try_from(calls.iter().filter(|s| s.result["ok"].as_bool() == Some(true)).count())
                .expect("a test's handful of calls");
        Trajectory {
            query: query.into(),
            steps,
            final_answer: None,
            stop_reason: StopReason::Answer,
            error: None,
            tokens: None,
            api_tokens: Vec::new(),
            usage: Usage::default(),
            cost_usd: Decimal::ZERO,
            execution_time_ms: 1,
            tool_calls,
            successful_tool_calls,
            verification_steps: 0,
            context: None,
        }
    }

    pub(super) fn exemplar(id: &str, query: &str) -> Exemplar {
        Exemplar {
            id: id.into(),
            query: query.into(),
            messages: vec![agentcore_agent::backend::Message::new(
                "assistant",
                "<answer>1</answer>",
            )],
            source: "it0-q0-s0".into(),
            reward: 1.0,
            advantage: 1.0,
            added_iteration: 0,
            shown: 0,
            credit: 0.0,
        }
    }

    #[test]
    fn items_shown_in_winning_rollouts_gain_credit_and_are_shown_first() {
        let (s, api) = settings();
        let mut policy = PromptPolicy::initial(&s, &api);
        policy.state.exemplars =
            vec![exemplar("E1", "Sort the list [5, 2]"), exemplar("E2", "Sort the list [6, 3]")];
        let q = "Sort the list [5, 6]";
        let t = task(q, "[5, 6]");
        let tasks = [&t];
        let trajs = vec![
            trajectory(q, Some("[5, 6]"), &["E1"]),
            trajectory(q, Some("[5, 6]"), &["E1"]),
            trajectory(q, Some("[6, 5]"), &["E2"]),
            trajectory(q, Some("[6, 5]"), &["E2"]),
        ];
        let batch = ScoredBatch {
            iteration: 1,
            tasks: &tasks,
            group_size: 4,
            trajectories: &trajs,
            rewards: &[1.0, 1.0, 0.0, 0.0],
            advantages: &[1.0, 1.0, -1.0, -1.0],
            passed: &[true, true, false, false],
        };
        let stats = policy.update(&batch).unwrap();
        let credit = |id: &str| policy.state.exemplars.iter().find(|e| e.id == id).unwrap().credit;
        assert!(credit("E1") > 0.0 && credit("E2") < 0.0, "{} {}", credit("E1"), credit("E2"));
        assert!(stats.grad_norm > 0.0);
        assert!(stats.loss.is_finite());
        let p = stats.prompt.unwrap();
        assert!((p.exemplars_shown - 1.0).abs() < 1e-12);
        assert_eq!(policy.state.exemplars[0].shown, 2);
        // The task already has no exemplar of its own query: the best verified rollout joins.
        assert_eq!(p.exemplar_bank_size, 3);
        let added = &policy.state.exemplars[2];
        assert_eq!((added.query.as_str(), added.source.as_str()), (q, "it1-q0-s0"));
        // Evaluation shows the credited exemplar first.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let c = policy.contexts(&["Sort the list [5, 6, 2, 3]".into()], false, &mut rng).unwrap();
        let e1 = c[0].shown.iter().position(|id| id == "E1").unwrap();
        let e2 = c[0].shown.iter().position(|id| id == "E2");
        assert!(e2.is_none_or(|e2| e1 < e2), "{:?}", c[0].shown);
        assert!(c[0].system_prompt.starts_with("Solve the task."));
    }

    #[test]
    fn a_lone_exemplar_that_misleads_loses_its_place_to_showing_nothing() {
        let q = "How many elements are in the list [4, 17, 19]?";
        let t = task(q, "3");
        let tasks = [&t];
        // The rollouts shown E1 failed; those shown nothing succeeded (unverified, so that no
        // exemplar joins and E1 stays the only candidate).
        let trajs = [
            trajectory(q, Some("4"), &["E1"]),
            trajectory(q, Some("4"), &["E1"]),
            trajectory(q, Some("3"), &[]),
            trajectory(q, Some("3"), &[]),
        ];
        // E1's credit after eight such updates, and what evaluation shows for another query.
        let run = |stop_option: bool| -> (f64, Vec<String>) {
            let (mut s, mut api) = settings();
            api.prompt_policy.stop_option = stop_option;
            s.api = Some(api.clone());
            let mut policy = PromptPolicy::initial(&s, &api);
            policy.state.exemplars =
                vec![exemplar("E1", "How many elements are in the list [1, 2]?")];
            for iteration in 0..8 {
                let batch = ScoredBatch {
                    iteration,
                    tasks: &tasks,
                    group_size: 4,
                    trajectories: &trajs,
                    rewards: &[0.0, 0.0, 1.0, 1.0],
                    advantages: &[-1.0, -1.0, 1.0, 1.0],
                    passed: &[false; 4],
                };
                policy.update(&batch).unwrap();
            }
            let credit = policy.state.exemplars.iter().find(|e| e.id == "E1").unwrap().credit;
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let eval = "How many elements are in the list [5, 6]?".to_owned();
            (credit, policy.contexts(&[eval], false, &mut rng).unwrap().remove(0).shown)
        };
        let (credit, shown) = run(true);
        assert!(credit < -1.2, "{credit}");
        assert!(shown.is_empty(), "{shown:?}");
        // Without the stop, every rollout of the query shows E1 whenever it is the only
        // candidate: the choice never varies, its credit cannot move, and it stays shown.
        let (credit, shown) = run(false);
        assert!(credit.abs() < 1e-12, "{credit}");
        assert_eq!(shown, ["E1"]);
    }

    #[test]
    fn expected_outcomes_never_enter_the_policy_and_failures_add_nothing() {
        let (s, api) = settings();
        let mut policy = PromptPolicy::initial(&s, &api);
        let t1 = task("Count the apples", "SECRET-EXPECTED-1");
        let t2 = task("Count the pears", "SECRET-EXPECTED-2");
        let tasks = [&t1, &t2];
        let trajs = vec![
            trajectory("Count the apples", Some("7"), &[]),
            trajectory("Count the apples", None, &[]),
            trajectory("Count the pears", Some("3"), &[]),
            trajectory("Count the pears", Some("4"), &[]),
        ];
        let batch = ScoredBatch {
            iteration: 2,
            tasks: &tasks,
            group_size: 2,
            trajectories: &trajs,
            rewards: &[1.0, 0.0, 0.0, 0.0],
            advantages: &[1.0, -1.0, 0.0, 0.0],
            passed: &[true, false, false, false],
        };
        policy.update(&batch).unwrap();
        // Only the group with a spread and a verified best gives an exemplar.
        assert_eq!(policy.state.exemplars.len(), 1);
        assert_eq!(policy.state.exemplars[0].query, "Count the apples");
        let text = serde_json::to_string(&policy.state).unwrap();
        assert!(!text.contains("SECRET-EXPECTED"), "{text}");
        // It is the model's own text, its stop string written back.
        let m = &policy.state.exemplars[0].messages;
        assert!(m[0].content.ends_with("</tool_call>"), "{m:?}");
        assert_eq!(m.last().unwrap().content, "<answer>7</answer>");
    }

    #[test]
    fn a_right_answer_after_a_call_that_printed_something_else_is_no_exemplar() {
        let q = "How many elements are in the list [4, 17, 19]?";
        let t = task(q, "3");
        let tasks = [&t];
        // Verified (the answer is right) but its call printed a wrong value; then a grounded one.
        let trajs = [
            printing(q, Some("3"), "[17, 18]", &[]),
            printing(q, Some("4"), "4", &[]),
            printing(q, Some("3"), "3\n", &[]),
        ];
        // The sources of the exemplars an update on the first `n` rollouts adds.
        let added = |grounded: bool, n: usize| -> Vec<String> {
            let (mut s, mut api) = settings();
            api.prompt_policy.grounded_exemplars = grounded;
            s.api = Some(api.clone());
            let mut policy = PromptPolicy::initial(&s, &api);
            let batch = ScoredBatch {
                iteration: 1,
                tasks: &tasks,
                group_size: n,
                trajectories: &trajs[..n],
                rewards: &[1.0, 0.0, 1.0][..n],
                advantages: &[0.7, -1.4, 0.7][..n],
                passed: &[true, false, true][..n],
            };
            policy.update(&batch).unwrap();
            policy.state.exemplars.iter().map(|e| e.source.clone()).collect()
        };
        assert_eq!(added(true, 3), ["it1-q0-s2"]);
        // Only the ungrounded one verified: no exemplar.
        assert!(added(true, 2).is_empty());
        // With the rule off, the first verified rollout joins.
        assert_eq!(added(false, 3), ["it1-q0-s0"]);
    }

    #[test]
    fn past_the_cap_the_lowest_credit_exemplar_is_retired() {
        let (mut s, mut api) = settings();
        api.prompt_policy.max_exemplars = 2;
        s.api = Some(api.clone());
        let mut policy = PromptPolicy::initial(&s, &api);
        let mut a = exemplar("E1", "a");
        a.credit = 0.5;
        let mut b = exemplar("E2", "b");
        b.credit = -0.5;
        let mut c = exemplar("E3", "c");
        c.credit = 0.1;
        policy.state.exemplars = vec![a, b, c];
        policy.retire();
        let ids: Vec<&str> = policy.state.exemplars.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec!["E1", "E3"]);
    }

    #[test]
    fn a_checkpoint_restores_the_state_and_the_rng() {
        let (s, api) = settings();
        let mut policy = PromptPolicy::initial(&s, &api);
        policy.state.exemplars = vec![exemplar("E1", "Sort the list [1, 2]")];
        let rng = ChaCha8Rng::seed_from_u64(5);
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in policy.checkpoint_files(&rng).unwrap() {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let (back, rng_back) = PromptPolicy::from_checkpoint(&s, &api, dir.path()).unwrap();
        assert_eq!(back.state, policy.state);
        assert_eq!(rng_back, rng);
        // A document of a newer version is refused, naming the file.
        let mut doc: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(state::STATE_FILE)).unwrap())
                .unwrap();
        doc["version"] = json!(state::VERSION + 1);
        std::fs::write(dir.path().join(state::STATE_FILE), doc.to_string()).unwrap();
        let err = PromptPolicy::from_checkpoint(&s, &api, dir.path()).err().unwrap().to_string();
        assert!(err.contains("prompt_policy.json") && err.contains("version"), "{err}");
    }
}

#[cfg(test)]
mod similarity_tests {
    #[test]
    fn a_query_is_most_similar_to_tasks_of_its_own_kind() {
        let texts = [
            "Find the maximum value in [3, 17, 4, 6]".to_owned(),
            "Sort the list [18, 1, 19]".to_owned(),
            "Reverse the list [2, 4, 6]".to_owned(),
            "Compute the sum of [4, 19, 18, 3]".to_owned(),
        ];
        let s = super::similarity("Find the maximum value in [1, 9, 5]", &texts);
        let least = agentcore_agent::definition::prompt_defaults::MIN_SIMILARITY;
        assert!(s[0] >= least, "{s:?}");
        assert!(s[1..].iter().all(|&x| x < least), "{s:?}");
        let s = super::similarity("Sort the list [5, 0, 7]", &texts);
        assert!(s[1] >= least, "{s:?}");
        assert!(s[0] < least && s[3] < least, "{s:?}");
        // "Reverse the list" shares a word: similar, but far less than a task of its own kind.
        assert!(s[2] > 0.0 && s[1] > 2.0 * s[2], "{s:?}");
        assert!(super::similarity("anything", &[]).is_empty());
    }

    #[test]
    fn shared_numbers_do_not_make_tasks_alike() {
        let texts = [
            "Find the maximum value in [9, 2, 14]".to_owned(),
            "Compute the sum of [9, 2, 14, 3]".to_owned(),
            "Sort the list [1, 5, 7]".to_owned(),
        ];
        let s = super::similarity("Sort the list [9, 2, 14]", &texts);
        let least = agentcore_agent::definition::prompt_defaults::MIN_SIMILARITY;
        assert!(s[2] >= least, "{s:?}");
        assert!(s[0] < least && s[1] < least, "{s:?}");
        assert!(s[2] > 3.0 * s[0].max(s[1]), "{s:?}");
        // Words stay whole (a letter in them keeps the digits: `x2`, `log10`).
        assert_eq!(super::kind_words("Is x2 in [1, 2]? It's log10"), "Is x2 in It's log10");
        // A text of numbers only is kept as it is.
        assert_eq!(super::kind_words("[1, 2]"), "[1, 2]");
    }
}

#[cfg(test)]
mod embedding_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use agentcore_agent::backend::OpenAiSettings;
    use agentcore_agent::definition::RetrievalKind;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rust_decimal::Decimal;
    use serde_json::{Value, json};

    use super::*;

    /// An embeddings server on loopback whose vectors know synonyms BM25 cannot: one axis per
    /// meaning (largest / maximum / biggest share one), 3 tokens per text. `fail`: every answer
    /// is a 500. Counts the texts it embedded.
    fn embedding_server(fail: bool) -> (String, Arc<AtomicUsize>) {
        let texts = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&texts);
        let (url, _) = agentcore_agent::testing::serve(move |body| {
            let input: Vec<String> = serde_json::from_slice::<Value>(body).unwrap()["input"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_lowercase())
                .collect();
            counter.fetch_add(input.len(), Ordering::SeqCst);
            if fail {
                return (500, json!({"error": "down"}).to_string());
            }
            let axes = [&["largest", "maximum", "biggest"][..], &["sum", "total"], &["sort"]];
            let data: Vec<Value> = input
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let v: Vec<f64> = axes
                        .iter()
                        .map(|words| f64::from(u8::from(words.iter().any(|w| t.contains(w)))))
                        .chain([0.1])
                        .collect();
                    json!({"index": i, "embedding": v})
                })
                .collect();
            (200, json!({"data": data, "usage": {"prompt_tokens": 3 * input.len()}}).to_string())
        });
        (format!("{url}/v1"), texts)
    }

    fn policy(url: Option<&str>) -> PromptPolicy {
        let mut p = PromptPolicySettings::default();
        p.reflection.enabled = false;
        if let Some(url) = url {
            let mut m = OpenAiSettings::new(url, "embedder");
            m.max_retries = 0;
            m.input_usd_per_million = Decimal::from(10);
            p.retrieval = agentcore_agent::definition::RetrievalSettings {
                kind: RetrievalKind::Embeddings,
                model: Some(m),
            };
        }
        let api = ApiAgent {
            endpoint: OpenAiSettings::new("http://127.0.0.1:9/v1", "m"),
            system_prompt: "Solve the task.".into(),
            prompt_policy: p,
            allow_private_endpoints: true,
        };
        let s = JobSettings { api: Some(api.clone()), ..JobSettings::default() };
        let mut policy = PromptPolicy::initial(&s, &api);
        let exemplar = super::tests::exemplar;
        policy.state.exemplars = vec![
            exemplar("E1", "What is the largest number of [3, 4]?"),
            exemplar("E2", "Give the total of [1, 2]"),
        ];
        policy
    }

    fn shown(policy: &PromptPolicy, query: &str) -> Vec<String> {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        policy.contexts(&[query.to_owned()], false, &mut rng).unwrap().remove(0).shown
    }

    #[test]
    fn embedding_retrieval_finds_the_exemplar_of_the_same_meaning_once_per_text() {
        let (url, texts) = embedding_server(false);
        let policy = policy(Some(&url));
        let query = "Find the maximum value in [1, 9]";
        assert_eq!(shown(&policy, query), ["E1"]);
        // The query and both exemplars were embedded once; a second rendering asks nothing.
        assert_eq!(texts.load(Ordering::SeqCst), 3);
        assert_eq!(shown(&policy, query), ["E1"]);
        assert_eq!(texts.load(Ordering::SeqCst), 3);
        assert_eq!(shown(&policy, "Compute the sum of [4, 5]"), ["E2"]);
        assert_eq!(texts.load(Ordering::SeqCst), 4);
        // 4 texts x 3 tokens at $10 per million tokens, reported once.
        let embedder = policy.embedder.as_ref().unwrap();
        assert_eq!(embedder.take_cost(), Decimal::new(12, 5));
        assert_eq!(embedder.take_cost(), Decimal::ZERO);
        // BM25 sees no shared word between "maximum value" and "largest number".
        assert!(!shown(&self::policy(None), query).contains(&"E1".to_owned()));
    }

    #[test]
    fn a_failing_embeddings_endpoint_falls_back_to_bm25() {
        let (url, texts) = embedding_server(true);
        let policy = policy(Some(&url));
        for query in ["Find the maximum value in [1, 9]", "Give the total of [3, 4]"] {
            assert_eq!(shown(&policy, query), shown(&self::policy(None), query), "{query}");
        }
        assert_eq!(texts.load(Ordering::SeqCst), 6, "each query asked again");
        assert_eq!(policy.embedder.as_ref().unwrap().take_cost(), Decimal::ZERO);
    }
}
