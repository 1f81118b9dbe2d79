//! Host tensors and the name → tensor map that loaders produce and models consume.
//!
//! Names are HF transformers names (`model.layers.0.self_attn.q_proj.weight`), shapes are HF
//! shapes (`nn.Linear` weights are `(out, in)`), data is f32 row-major: loaders dequantize and
//! un-permute so that a model never needs to know which file format its weights came from.

use std::collections::BTreeMap;

use thiserror::Error;

/// A dense f32 tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// # Panics
    /// When `data.len()` is not the product of `shape` (a programmer error).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not fill its shape {shape:?}");
        HostTensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        HostTensor { shape, data: vec![0.0; n] }
    }
}

/// A weight the model asked for that the checkpoint does not provide as expected.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum WeightError {
    #[error("weight `{name}` is missing from the checkpoint")]
    Missing { name: String },
    #[error("weight `{name}` has shape {got:?}, expected {expected:?} from config.json")]
    Shape { name: String, expected: Vec<usize>, got: Vec<usize> },
}

/// Every tensor of a checkpoint by HF name, in sorted order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightMap {
    pub tensors: BTreeMap<String, HostTensor>,
}

impl WeightMap {
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) {
        self.tensors.insert(name.into(), tensor);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns `name`, checking its shape.
    ///
    /// # Errors
    /// `WeightError` when the tensor is absent or its shape differs from `expected`.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor, WeightError> {
        let t = self.tensors.remove(name).ok_or_else(|| WeightError::Missing { name: name.to_string() })?;
        if t.shape != expected {
            return Err(WeightError::Shape { name: name.to_string(), expected: expected.to_vec(), got: t.shape });
        }
        Ok(t)
    }
}
