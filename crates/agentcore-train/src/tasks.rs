//! The generated seed tasks of a job without data of its own.

use agentcore_tasks::Task;
use agentcore_tasks::seed;

use crate::TrainError;

/// `n` seed tasks with difficulties 1..=`max_difficulty` in equal shares.
///
/// # Errors
/// A difficulty outside 1..=3.
pub fn seed_tasks(n: usize, seed: u64, max_difficulty: u8) -> Result<Vec<Task>, TrainError> {
    let levels = usize::from(max_difficulty.max(1));
    let mut out = Vec::with_capacity(n);
    for (k, d) in (1..=max_difficulty.max(1)).enumerate() {
        let share = n / levels + usize::from(k < n % levels);
        out.extend(seed::generate(share, seed.wrapping_add(k as u64), Some(d))?);
    }
    Ok(out)
}
