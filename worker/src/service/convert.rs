//! Conversions between the control protocol's plain data (`runtime::control`) and the worker's
//! training types: datums in, per-datum outputs out, Adam hyperparameters. Shape errors here are
//! the caller's and name the datum and key.

use runtime::control::{self, AdamConfig, DatumOutput, ForwardBackwardResult, Tensor, TensorValues};

use super::error::ServiceError;
use crate::loss::{LossInput, LossInputs, LossValues};
use crate::optim::AdamParams;
use crate::train::{self, FbOutput};

/// A control datum as a training datum.
///
/// # Errors
/// `ServiceError::TensorShape` naming the datum and key whose values do not fill its shape.
pub(super) fn datum(index: usize, d: control::Datum) -> Result<train::Datum, ServiceError> {
    // Provenance was checked by the coordinator and no loss of lathe reads it, so it stops here.
    let control::Datum { tokens, loss_fn_inputs, provenance: _ } = d;
    let mut inputs = LossInputs::new();
    for (key, tensor) in loss_fn_inputs {
        let values = match tensor.values {
            TensorValues::F32(v) => LossValues::F32(v),
            TensorValues::I64(v) => LossValues::I64(v),
        };
        let input = LossInput::new(tensor.shape, values).map_err(|source| ServiceError::TensorShape {
            datum: index,
            key: key.clone(),
            source,
        })?;
        inputs.insert(key, input);
    }
    Ok(train::Datum { tokens, loss_fn_inputs: inputs })
}

/// The per-datum outputs: `logprobs` shaped like each datum's `target_tokens`, `elementwise_loss`
/// `(N)`.
pub(super) fn outputs(data: &[train::Datum], out: FbOutput) -> ForwardBackwardResult {
    assert_eq!(data.len(), out.logprobs.len(), "one output per datum");
    let outputs = data
        .iter()
        .zip(out.logprobs)
        .zip(out.elementwise_loss)
        .map(|((d, logprobs), loss)| {
            let shape = d.loss_fn_inputs.get("target_tokens").map(|t| t.shape().to_vec()).expect("validated by train");
            assert_eq!(shape.iter().product::<usize>(), logprobs.len(), "logprobs are shaped like target_tokens");
            DatumOutput {
                logprobs: Tensor { shape, values: TensorValues::F32(logprobs) },
                elementwise_loss: Tensor { shape: vec![loss.len()], values: TensorValues::F32(loss) },
            }
        })
        .collect();
    ForwardBackwardResult { outputs, metrics: out.metrics }
}

/// Tinker's `AdamParams`, validated.
///
/// # Errors
/// `ServiceError::Optim` naming the first invalid field.
pub(super) fn adam(c: &AdamConfig) -> Result<AdamParams, ServiceError> {
    Ok(AdamParams::new(c.learning_rate, c.beta1, c.beta2, c.eps, c.weight_decay, c.grad_clip_norm)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_tensor_that_does_not_fill_its_shape_names_datum_and_key() {
        let bad = Tensor { shape: vec![3], values: TensorValues::F32(vec![1.0, 2.0]) };
        let d = control::Datum {
            tokens: vec![1, 2, 3],
            loss_fn_inputs: BTreeMap::from([("weights".into(), bad)]),
            provenance: None,
        };
        let err = datum(4, d).unwrap_err().to_string();
        assert!(err.contains("datum 4") && err.contains("weights"), "{err}");
    }

    #[test]
    fn logprobs_take_the_shape_of_their_target_tokens() {
        let targets = Tensor { shape: vec![2, 2], values: TensorValues::I64(vec![1, 2, 3, 4]) };
        let d = control::Datum {
            tokens: vec![5, 6],
            loss_fn_inputs: BTreeMap::from([("target_tokens".into(), targets)]),
            provenance: None,
        };
        let data = vec![datum(0, d).unwrap()];
        let out = FbOutput {
            logprobs: vec![vec![-1.0, -2.0, -3.0, -4.0]],
            elementwise_loss: vec![vec![0.5, 0.25]],
            metrics: BTreeMap::from([("loss:sum".into(), 0.75)]),
        };
        let r = outputs(&data, out);
        assert_eq!(r.outputs[0].logprobs.shape, vec![2, 2]);
        assert_eq!(r.outputs[0].elementwise_loss.shape, vec![2]);
        assert_eq!(r.metrics["loss:sum"], 0.75);
    }
}
