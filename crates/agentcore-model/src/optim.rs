//! AdamW with gradient-norm clipping, with its state open for checkpoints.
//!
//! candle-nn has an AdamW, but its moment estimates and step count are private, and a
//! checkpoint must save them for a resumed run to take exactly the step the uninterrupted run
//! took; this is the same update (PyTorch's `torch.optim.AdamW`), with the state exposed.
//! Gradients are clipped like `torch.nn.utils.clip_grad_norm_`: by the global L2 norm over every
//! parameter, scaled by `max_grad_norm / (norm + 1e-6)` when that is below 1.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::params::ParamStore;

/// AdamW settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Learning rate.
    pub learning_rate: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (TRL's default is 0).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping (TRL's `grad_norm`).
    pub grad_norm: f64,
    /// Factor the gradients were multiplied by (1 when not clipped).
    pub clip_coefficient: f64,
    /// Parameters that had no gradient this step (left unchanged).
    pub without_gradient: Vec<String>,
}

struct Slot {
    name: String,
    param: Var,
    m: Tensor,
    v: Tensor,
}

/// The scalars of one step.
struct Coefficients {
    clip: f64,
    beta1: f64,
    beta2: f64,
    bias1: f64,
    bias2: f64,
    eps: f64,
    lr: f64,
    /// `1 - lr * weight_decay`.
    decay: f64,
}

/// One slot's update in a single pass over its parameter, gradient and moments (the same
/// arithmetic as the tensor ops of [`AdamW::step`], in the parameter's dtype, without their
/// dozen intermediate tensors).
fn fused_step<T>(slot: &mut Slot, g: &Tensor, k: &Coefficients) -> Result<()>
where
    T: candle_core::WithDType + num_traits::Float + Send + Sync,
{
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    let t = |x: f64| T::from(x).unwrap_or_else(T::zero);
    let (clip, b1, b2, bias1, bias2) = (t(k.clip), t(k.beta1), t(k.beta2), t(k.bias1), t(k.bias2));
    let (eps, lr, decay, one) = (t(k.eps), t(k.lr), t(k.decay), T::one());
    let shape = slot.param.as_tensor().shape().clone();
    let g = g.flatten_all()?.to_vec1::<T>()?;
    let mut theta = slot.param.as_tensor().flatten_all()?.to_vec1::<T>()?;
    let mut m = slot.m.flatten_all()?.to_vec1::<T>()?;
    let mut v = slot.v.flatten_all()?.to_vec1::<T>()?;
    theta
        .par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((theta, m), v), g)| {
            for i in 0..theta.len() {
                let g = g[i] * clip;
                m[i] = m[i] * b1 + g * (one - b1);
                v[i] = v[i] * b2 + g * g * (one - b2);
                let update = (m[i] / bias1) / ((v[i] / bias2).sqrt() + eps);
                theta[i] = theta[i] * decay - update * lr;
            }
        });
    let device = slot.param.as_tensor().device().clone();
    slot.m = Tensor::from_vec(m, &shape, &device)?;
    slot.v = Tensor::from_vec(v, &shape, &device)?;
    slot.param.set(&Tensor::from_vec(theta, &shape, &device)?)?;
    Ok(())
}

/// The optimizer.
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    slots: Vec<Slot>,
}

impl AdamW {
    /// An optimizer over every parameter of the store, moments at zero.
    pub fn new(params: &ParamStore, config: AdamWConfig) -> Result<Self> {
        if !(config.learning_rate > 0.0 && config.learning_rate.is_finite()) {
            return Err(ModelError::invalid(
                "learning_rate",
                "must be > 0 and finite",
                config.learning_rate,
            ));
        }
        if let Some(n) = config.max_grad_norm
            && (n.is_nan() || n <= 0.0)
        {
            return Err(ModelError::invalid("max_grad_norm", "must be > 0 when given", n));
        }
        let slots = params
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.clone(),
                    param: var.clone(),
                    m: var.as_tensor().zeros_like()?,
                    v: var.as_tensor().zeros_like()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, step: 0, slots })
    }

    /// The settings.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Changes the learning rate (schedules).
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.config.learning_rate = learning_rate;
    }

    /// Global L2 norm of the gradients of the optimizer's parameters.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0.0;
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.param.as_tensor()) {
                sum += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(sum.sqrt())
    }

    /// Clips the gradients and updates every parameter that has one.
    pub fn step(&mut self, grads: &GradStore) -> Result<StepStats> {
        let grad_norm = self.grad_norm(grads)?;
        if !grad_norm.is_finite() {
            return Err(ModelError::invalid(
                "gradients",
                "must be finite (the loss diverged)",
                grad_norm,
            ));
        }
        let clip_coefficient = match self.config.max_grad_norm {
            Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.step += 1;
        let c = &self.config;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2 = 1.0 - c.beta2.powi(self.step as i32);
        let mut without_gradient = Vec::new();
        let coeffs = Coefficients {
            clip: clip_coefficient,
            beta1: c.beta1,
            beta2: c.beta2,
            bias1,
            bias2,
            eps: c.eps,
            lr: c.learning_rate,
            decay: 1.0 - c.learning_rate * c.weight_decay.max(0.0),
        };
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.param.as_tensor()) else {
                without_gradient.push(slot.name.clone());
                continue;
            };
            match g.dtype() {
                DType::F32 => {
                    fused_step::<f32>(slot, g, &coeffs)?;
                    continue;
                }
                DType::F64 => {
                    fused_step::<f64>(slot, g, &coeffs)?;
                    continue;
                }
                _ => {}
            }
            let g = (g * clip_coefficient)?;
            let theta = slot.param.as_tensor().detach();
            let theta = if c.weight_decay > 0.0 {
                (theta * (1.0 - c.learning_rate * c.weight_decay))?
            } else {
                theta
            };
            slot.m = ((&slot.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&slot.m / bias1)?;
            let v_hat = (&slot.v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            slot.param.set(&(theta - (update * c.learning_rate)?)?)?;
        }
        Ok(StepStats { grad_norm, clip_coefficient, without_gradient })
    }

    /// The moment tensors, named `exp_avg.<param>` and `exp_avg_sq.<param>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("exp_avg.{}", s.name), s.m.clone()),
                    (format!("exp_avg_sq.{}", s.name), s.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores moments and step count saved by [`AdamW::state_tensors`].
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
        source: &str,
    ) -> Result<()> {
        for slot in &mut self.slots {
            for (prefix, target) in [("exp_avg", &mut slot.m), ("exp_avg_sq", &mut slot.v)] {
                let key = format!("{prefix}.{}", slot.name);
                let value = tensors.get(&key).ok_or_else(|| ModelError::File {
                    path: source.to_string(),
                    message: format!("missing optimizer tensor `{key}`"),
                })?;
                if value.dims() != target.dims() {
                    return Err(ModelError::File {
                        path: source.to_string(),
                        message: format!(
                            "optimizer tensor `{key}` has shape {:?}, expected {:?}",
                            value.dims(),
                            target.dims()
                        ),
                    });
                }
                *target = value.clone();
            }
        }
        self.step = step;
        Ok(())
    }
}
