//! Named trainable parameters, kept in name order so that iteration (optimizer state,
//! checkpoints, gradient norms) is deterministic.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::error::{ModelError, Result};

/// Trainable parameters by name (Hugging Face naming: `model.layers.0.self_attn.q_proj.weight`).
#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    vars: BTreeMap<String, Var>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter initialised from N(0, std) drawn from `rng` (candle's own RNG cannot
    /// be seeded, so every initial weight comes from the caller's seeded RNG).
    pub fn normal<R: Rng + ?Sized>(
        &mut self,
        name: &str,
        shape: &[usize],
        std: f64,
        rng: &mut R,
        device: &Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let dist = Normal::new(0.0, std)
            .map_err(|e| ModelError::invalid("init std", e.to_string(), std))?;
        let data: Vec<f32> = (0..n).map(|_| dist.sample(rng) as f32).collect();
        self.insert(name, Tensor::from_vec(data, shape, device)?)
    }

    /// Adds a parameter filled with `value`.
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        value: f64,
        device: &Device,
    ) -> Result<Tensor> {
        self.insert(name, (Tensor::ones(shape, DType::F32, device)? * value)?)
    }

    /// Adds a parameter with the given initial value; returns the tensor view of it (updates
    /// made through the optimizer are visible through this tensor).
    pub fn insert(&mut self, name: &str, value: Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(&value)?;
        let tensor = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    /// The parameter with this name.
    pub fn get(&self, name: &str) -> Result<&Var> {
        self.vars.get(name).ok_or_else(|| ModelError::invalid("parameter name", "must exist", name))
    }

    /// Parameters in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// Number of parameters (tensors).
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// Total number of scalar weights.
    pub fn num_weights(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Snapshot of every parameter (copies, so later updates do not change it).
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect()
    }

    /// Serializes every parameter as safetensors bytes with the given metadata.
    pub fn to_safetensors(&self, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let tensors: Vec<(String, Tensor)> =
            self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        safetensors::serialize(tensors, Some(metadata)).map_err(|e| {
            ModelError::invalid("safetensors serialization", e.to_string(), "parameters")
        })
    }

    /// Copies values from `tensors` into the parameters of the same names. Every parameter must
    /// be present with its shape; extra tensors are an error too (a checkpoint of another model).
    pub fn load_values(&self, tensors: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        for (name, var) in &self.vars {
            let value = tensors.get(name).ok_or_else(|| ModelError::File {
                path: source.to_string(),
                message: format!("missing tensor `{name}`"),
            })?;
            if value.dims() != var.dims() {
                return Err(ModelError::File {
                    path: source.to_string(),
                    message: format!(
                        "tensor `{name}` has shape {:?}, the model expects {:?}",
                        value.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(&value.to_dtype(var.dtype())?)?;
        }
        if let Some(extra) = tensors.keys().find(|k| !self.vars.contains_key(*k)) {
            return Err(ModelError::File {
                path: source.to_string(),
                message: format!("unexpected tensor `{extra}` (a checkpoint of another model?)"),
            });
        }
        Ok(())
    }
}
