//! What a finished job leaves in its run directory: `report.md` (the guide's "Document
//! Everything" shape) and the learning curves `curves.png` and `curves.svg` (train and
//! validation success, reward, loss and cost per iteration).

use std::fmt::Write as _;
use std::path::Path;

use agentcore_fs::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use rust_decimal::prelude::ToPrimitive;

use crate::TrainError;
use crate::events::{IterationMetrics, Summary};
use crate::settings::JobSettings;

/// The font of the PNG (the SVG names a family and lets the viewer draw it): DejaVu Sans, whose
/// license is beside it in `assets/`.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Only fails on a malformed font, which the bundled one is not (tests draw with it).
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot(e.to_string())
}

type Series = Vec<(f64, f64)>;

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    lines: &[(&str, &Series, RGBColor)],
    reference: Option<(&str, f64)>,
    x_max: f64,
) -> Result<(), TrainError> {
    let values = lines.iter().flat_map(|(_, s, _)| s.iter().map(|p| p.1));
    let values: Vec<f64> = values.chain(reference.map(|r| r.1)).collect();
    let (mut lo, mut hi) =
        values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.08;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(52)
        .build_cartesian_2d(0f64..x_max.max(1.0), (lo - pad)..(hi + pad))
        .map_err(plot_err)?;
    // Enough decimals that neighbouring tick labels differ (cost axes span fractions of a cent).
    let decimals = (-((hi - lo) / 10.0).log10().floor()).clamp(0.0, 8.0) as usize;
    let y_label = move |v: &f64| format!("{v:.decimals$}");
    chart
        .configure_mesh()
        .y_label_formatter(&y_label)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("iteration")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(plot_err)?;
    for (name, series, color) in lines {
        let color = *color;
        if series.len() == 1 || name.contains("validation") {
            chart
                .draw_series(series.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(LineSeries::new(series.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    if let Some((name, y)) = reference {
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(LineSeries::new([(0.0, y), (x_max.max(1.0), y)], grey.stroke_width(1)))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], grey));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    summary: &Summary,
    history: &[IterationMetrics],
    evals: &[(u32, f64)],
) -> Result<(), TrainError> {
    root.fill(&WHITE).map_err(plot_err)?;
    let x_max = f64::from(history.last().map_or(1, |m| m.iteration));
    let series = |f: &dyn Fn(&IterationMetrics) -> f64| -> Series {
        history.iter().map(|m| (f64::from(m.iteration), f(m))).collect()
    };
    let train = series(&|m| m.success_rate * 100.0);
    let mut validation: Series = vec![(0.0, summary.baseline_success_rate * 100.0)];
    validation.extend(evals.iter().map(|&(i, e)| (f64::from(i), e * 100.0)));
    if validation.last().is_none_or(|p| p.0 < x_max) {
        validation.push((x_max, summary.final_success_rate * 100.0));
    }
    let reward = series(&|m| m.avg_reward);
    let loss = series(&|m| m.train_loss);
    let cost = series(&|m| m.cost_usd.to_f64().unwrap_or(0.0));
    let panels = root.split_evenly((2, 2));
    let (blue, orange) = (RGBColor(31, 119, 180), RGBColor(255, 127, 14));
    panel(
        &panels[0],
        "success rate (%)",
        &[("train (sampled)", &train, blue), ("validation (greedy)", &validation, orange)],
        Some(("baseline", summary.baseline_success_rate * 100.0)),
        x_max,
    )?;
    panel(&panels[1], "mean reward", &[("train", &reward, blue)], None, x_max)?;
    panel(&panels[2], "loss", &[("train", &loss, blue)], None, x_max)?;
    let budget = summary.budget_usd.to_f64().unwrap_or(0.0);
    let over = cost.last().is_some_and(|c| c.1 > budget * 0.5);
    panel(
        &panels[3],
        "cost (USD)",
        &[("spent", &cost, blue)],
        over.then_some(("budget", budget)),
        x_max,
    )?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Draws the learning curves as PNG and SVG.
///
/// # Errors
/// Drawing or file errors.
pub fn write_curves(
    dir: &Path,
    summary: &Summary,
    history: &[IterationMetrics],
    evals: &[(u32, f64)],
) -> Result<(), TrainError> {
    register_font();
    let size = (1200u32, 800u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, summary, history, evals)?;
    }
    write_atomic(&dir.join("curves.svg"), svg.as_bytes())?;
    let mut pixels = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        draw(&root, summary, history, evals)?;
    }
    let image = image::RgbImage::from_raw(size.0, size.1, pixels)
        .ok_or_else(|| plot_err("the pixel buffer has the wrong size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).map_err(plot_err)?;
    write_atomic(&dir.join("curves.png"), png.get_ref())?;
    Ok(())
}

/// The serde name of a config enum.
fn name<T: serde::Serialize>(x: &T) -> String {
    serde_json::to_value(x).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// `report.md`: goal, data, config, results, cost against budget, convergence, best checkpoint.
#[must_use]
pub fn markdown(
    settings: &JobSettings,
    summary: &Summary,
    history: &[IterationMetrics],
    evals: &[(u32, f64)],
) -> String {
    let c = &settings.config;
    let s = summary;
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let mut out = String::new();
    let _ = writeln!(out, "# Training report: job `{}`\n", s.job_id);
    let agent = match (&settings.api, &settings.model) {
        (Some(api), _) => format!("`{}` behind {}", api.endpoint.model, api.endpoint.base_url),
        (None, Some(m)) => format!("`{}`", m.path.display()),
        (None, None) => "the built-in model".to_string(),
    };
    let goal = if settings.data.is_some() {
        "the job's own tasks: reach each task's expected outcome"
    } else {
        "the `seed` task suite: answer each query with the verified result of a tool call"
    };
    let _ = writeln!(
        out,
        "## Goal\nImprove agent `{}` ({agent} with a sandboxed `python` tool) on {goal}.\n",
        s.agent_id,
    );
    let policy = match &settings.model {
        Some(m) => format!(
            "- Policy: {} (targets {}); no warm start.\n",
            s.policy,
            m.lora.target_modules.join(", ")
        ),
        None if !s.policy.is_empty() => format!("- Policy: {}.\n", s.policy),
        None => String::new(),
    };
    let tasks = match &settings.data {
        Some(data) => format!(
            "- {} training tasks and {} held-out tasks from the job's data{}.\n",
            s.train_queries,
            s.eval_queries,
            if data.eval.is_empty() {
                " (held out per family from the training tasks)"
            } else {
                ""
            }
        ),
        None => format!(
            "- {} seed tasks (difficulty 1-{}), split per family: {} for training, {} held out \
             for evaluation (unseen queries of the trained families).\n",
            settings.n_tasks, settings.max_difficulty, s.train_queries, s.eval_queries,
        ),
    };
    let warm_start = if settings.warm_starts() {
        format!(
            "- Warm start: {} supervised steps on {} imperfect demonstrations ({}).\n",
            settings.warm_start.steps,
            settings.warm_start.n_demos,
            if s.warm_start_cached {
                "from the cache".to_string()
            } else {
                format!("{:.0} s", s.warm_start_seconds)
            }
        )
    } else {
        String::new()
    };
    let _ = writeln!(out, "## Data\n{policy}{tasks}{warm_start}");
    let _ = writeln!(
        out,
        "## Configuration\n| setting | value |\n| --- | --- |\n| n_iterations | {} |\n| batch_size | {} |\n\
         | n_trajectories_per_query | {} |\n| learning_rate | {} |\n| loss_type | {} |\n\
         | scale_rewards | {} |\n| beta | {} |\n| temperature | {} |\n| num_iterations | {} |\n\
         | max_budget_usd | {} |\n| seed | {} |\n",
        c.n_iterations,
        c.batch_size,
        c.n_trajectories_per_query,
        c.learning_rate,
        name(&c.loss_type),
        name(&c.scale_rewards),
        c.beta,
        c.temperature,
        c.num_iterations,
        c.max_budget_usd,
        c.seed
    );
    let _ = writeln!(
        out,
        "## Results\n- Success rate {} -> {} ({:+.1} points, McNemar exact p = {:.2e}) on {} \
         held-out queries.\n- 95% Wilson intervals: baseline [{}, {}], final [{}, {}].\n\
         - Paired outcomes: {} improved, {} regressed, {} both solved, {} neither.\n",
        pct(s.baseline_success_rate),
        pct(s.final_success_rate),
        (s.final_success_rate - s.baseline_success_rate) * 100.0,
        s.p_value,
        s.eval_queries,
        pct(s.baseline_interval.0),
        pct(s.baseline_interval.1),
        pct(s.final_interval.0),
        pct(s.final_interval.1),
        s.mcnemar.treatment_only,
        s.mcnemar.baseline_only,
        s.mcnemar.both_succeeded,
        s.mcnemar.neither_succeeded
    );
    let _ = writeln!(out, "| family | baseline | final |\n| --- | --- | --- |");
    for (family, (b, f)) in &s.per_family {
        let _ = writeln!(out, "| {family} | {} | {} |", pct(*b), pct(*f));
    }
    let _ = writeln!(out, "\n![learning curves](curves.png)\n");
    let spent_share = if c.max_budget_usd.is_zero() {
        String::new()
    } else {
        format!(
            " ({:.1}% of the budget)",
            (s.cost_usd / c.max_budget_usd).to_f64().unwrap_or(0.0) * 100.0
        )
    };
    let _ = writeln!(
        out,
        "## Cost\n${} spent of ${}{} at ${}/hour of compute; wall time {:.0} s.\n",
        s.cost_usd.round_dp(4),
        c.max_budget_usd,
        spent_share,
        settings.price_per_hour_usd,
        s.wall_seconds
    );
    let convergence = match s.stop_reason {
        crate::events::StopReason::Completed => {
            format!("All {} iterations ran.", s.iterations)
        }
        crate::events::StopReason::EarlyStopped => format!(
            "Stopped early after iteration {}: validation did not improve for {} evaluations.",
            s.iterations,
            c.early_stopping_patience.unwrap_or(0)
        ),
        crate::events::StopReason::BudgetExhausted => format!(
            "Stopped after iteration {}: the next iteration would have exceeded the budget.",
            s.iterations
        ),
        crate::events::StopReason::Cancelled => {
            format!("Cancelled after iteration {} (checkpoint saved).", s.iterations)
        }
    };
    let curve: Vec<String> = evals.iter().map(|(i, e)| format!("{i}: {}", pct(*e))).collect();
    let last_loss = history.last().map_or(0.0, |m| m.train_loss);
    let _ = writeln!(
        out,
        "## Convergence\n{convergence} Validation during the run: {}. Last train loss {:.4}.\n",
        if curve.is_empty() { "none".to_string() } else { curve.join(", ") },
        last_loss
    );
    let _ = writeln!(
        out,
        "## Best checkpoint\n{}\n",
        match (&s.best_checkpoint_id, s.best_eval_success_rate) {
            (Some(id), Some(e)) => format!("`{id}` (validation {})", pct(e)),
            _ => "none with a validation score".to_string(),
        }
    );
    out
}

/// The files [`write()`] makes in the run directory.
pub const FILES: &[&str] = &["report.md", "curves.png", "curves.svg"];

/// Writes `report.md`, `curves.png` and `curves.svg` into the run directory.
///
/// # Errors
/// Drawing or file errors.
pub fn write(
    dir: &Path,
    settings: &JobSettings,
    summary: &Summary,
    history: &[IterationMetrics],
    evals: &[(u32, f64)],
) -> Result<(), TrainError> {
    write_curves(dir, summary, history, evals)?;
    write_atomic(&dir.join("report.md"), markdown(settings, summary, history, evals).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoints::JobState;
    use crate::settings::{ApiAgent, JobData};
    use crate::summary::{SummaryInputs, summarize};
    use agentcore_agent::backend::OpenAiSettings;
    use agentcore_tasks::Task;

    fn task(query: &str) -> Task {
        let mut expected = serde_json::Map::new();
        expected.insert("result".into(), serde_json::json!(1));
        Task { query: query.into(), expected_outcome: expected, metadata: None }
    }

    /// The report of a job of `settings` whose 2 held-out tasks went from 0 to 1 solved, with
    /// the warm start as the job reports it.
    fn report(settings: &JobSettings, cached: bool) -> String {
        let eval = [task("a"), task("b")];
        let mut state = JobState::new(0.0, cached);
        state.baseline = vec![false, false];
        let inputs = SummaryInputs {
            job_id: "j",
            agent_id: settings.agent_id(),
            policy: "p".into(),
            train_queries: 100,
            wall_seconds: 1.0,
            cost_usd: rust_decimal::Decimal::ZERO,
            budget_usd: rust_decimal::Decimal::ONE,
            run_dir: Path::new("run"),
            warm_starts: settings.warm_starts(),
        };
        let summary = summarize(inputs, &state, &eval, &[true, false]).expect("summary");
        markdown(settings, &summary, &[], &[])
    }

    #[test]
    fn a_prompt_job_on_its_own_tasks_reports_its_endpoint_and_data_and_no_warm_start() {
        let api = ApiAgent {
            endpoint: OpenAiSettings::new("http://127.0.0.1:8765/v1", "gemma-3-270m"),
            system_prompt: "Solve the task.".into(),
            prompt_policy: agentcore_agent::definition::PromptPolicySettings::default(),
            allow_private_endpoints: true,
        };
        let data = JobData { train: vec![task("t"); 100], eval: vec![task("a"), task("b")] };
        let settings = JobSettings { api: Some(api), data: Some(data), ..JobSettings::embedded() };
        let md = report(&settings, true);
        assert!(md.contains("`gemma-3-270m` behind http://127.0.0.1:8765/v1"), "{md}");
        assert!(
            md.contains("100 training tasks and 2 held-out tasks from the job's data."),
            "{md}"
        );
        assert!(md.contains("the job's own tasks"), "{md}");
        for wrong in ["Warm start", "seed tasks", "`seed` task suite", "built-in model"] {
            assert!(!md.contains(wrong), "a prompt job's report says {wrong:?}:\n{md}");
        }
    }

    #[test]
    fn the_built_in_models_report_names_its_warm_start_and_the_seed_suite() {
        let settings = JobSettings::embedded();
        let md = report(&settings, true);
        assert!(md.contains("the built-in model"), "{md}");
        assert!(md.contains("`seed` task suite"), "{md}");
        assert!(md.contains(&format!("seed tasks (difficulty 1-{})", settings.max_difficulty)));
        let warm = format!(
            "Warm start: {} supervised steps on {} imperfect demonstrations (from the cache)",
            settings.warm_start.steps, settings.warm_start.n_demos
        );
        assert!(md.contains(&warm), "{md}");
    }
}
