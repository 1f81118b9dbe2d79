//! One datum's `loss_fn_inputs`: typed tensors keyed by name (the HTTP layer maps Tinker's
//! `TensorData` onto [`LossInput`]), and the validating reader every loss uses to get at them.
//!
//! Everything a client can get wrong about its inputs (a missing or unexpected key, a wrong shape
//! or dtype, a non-finite float, a negative token id) is a [`LossInputError`] naming the datum and
//! the key: these become `user` errors in the API, never panics.

use std::collections::BTreeMap;

use thiserror::Error;

/// The values of one input tensor, in one of Tinker's two public dtypes.
#[derive(Clone, Debug, PartialEq)]
pub enum LossValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl LossValues {
    pub fn len(&self) -> usize {
        match self {
            LossValues::F32(v) => v.len(),
            LossValues::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Tinker dtype name (`float32`, `int64`).
    pub fn dtype(&self) -> &'static str {
        match self {
            LossValues::F32(_) => "float32",
            LossValues::I64(_) => "int64",
        }
    }
}

/// A dense row-major tensor whose values fill its shape (checked at construction).
#[derive(Clone, Debug, PartialEq)]
pub struct LossInput {
    shape: Vec<usize>,
    values: LossValues,
}

/// A tensor whose value count does not match its shape.
#[derive(Clone, Debug, Error, PartialEq)]
#[error(
    "tensor has {len} values but its shape {shape:?} holds {expected}; send a shape whose product is the data length"
)]
pub struct TensorShapeError {
    pub shape: Vec<usize>,
    pub len: usize,
    pub expected: usize,
}

impl LossInput {
    /// # Errors
    /// [`TensorShapeError`] when `values` does not fill `shape` exactly.
    pub fn new(shape: Vec<usize>, values: LossValues) -> Result<Self, TensorShapeError> {
        let expected: usize = shape.iter().product();
        if expected != values.len() {
            return Err(TensorShapeError { shape, len: values.len(), expected });
        }
        Ok(LossInput { shape, values })
    }

    /// A 1-D float32 tensor.
    pub fn vector_f32(data: Vec<f32>) -> Self {
        LossInput { shape: vec![data.len()], values: LossValues::F32(data) }
    }

    /// A 1-D int64 tensor.
    pub fn vector_i64(data: Vec<i64>) -> Self {
        LossInput { shape: vec![data.len()], values: LossValues::I64(data) }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn values(&self) -> &LossValues {
        &self.values
    }
}

/// One datum's inputs by key (`target_tokens`, `weights`, `logprobs`, `advantages`, ...).
pub type LossInputs = BTreeMap<String, LossInput>;

/// A client's `loss_fn_inputs` that a loss cannot use. Every variant names the datum (its index
/// in the request) and the key.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum LossInputError {
    #[error("datum {datum}: loss_fn `{loss}` requires loss_fn_inputs key `{key}`, which is missing")]
    Missing { datum: usize, loss: &'static str, key: String },
    #[error(
        "datum {datum}: loss_fn `{loss}` does not use loss_fn_inputs key `{key}` (it accepts: {accepted}); remove it"
    )]
    Unexpected { datum: usize, loss: &'static str, key: String, accepted: String },
    #[error("datum {datum}: loss_fn_inputs[`{key}`] has shape {got:?}, expected {expected}")]
    Shape { datum: usize, key: String, expected: String, got: Vec<usize> },
    #[error("datum {datum}: loss_fn_inputs[`{key}`] has dtype {got}, expected {expected}")]
    Dtype { datum: usize, key: String, expected: &'static str, got: &'static str },
    #[error("datum {datum}: loss_fn_inputs[`{key}`][{index}] is {value}, which is not a finite number")]
    NotFinite { datum: usize, key: String, index: usize, value: f64 },
    #[error("datum {datum}: loss_fn_inputs[`{key}`][{index}] is invalid: {why}")]
    Invalid { datum: usize, key: String, index: usize, why: String },
    #[error(
        "datum {datum}: loss_fn `{loss}` overflowed at token {index} (loss or gradient not finite); the \
         inputs are too far apart, e.g. sampler `logprobs` far below the learner's make exp(lp - q) overflow"
    )]
    Overflow { datum: usize, loss: &'static str, index: usize },
}

/// The target tokens of one datum: `ids (n, k)` row-major; `k == 1` for 1-D `target_tokens`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub ids: Vec<u32>, // (n, k)
    pub n: usize,
    pub k: usize,
}

/// Reads and validates `target_tokens` of datum `datum`, which must have `n_tokens` rows (one per
/// model input token): shape `(n_tokens)` or `(n_tokens, k)` with `k ≥ 1`, dtype int64, values in
/// `0..=u32::MAX`. (Whether an id is below the vocabulary size is the caller's check.)
///
/// # Errors
/// [`LossInputError`] naming `target_tokens` when it is missing or malformed.
pub fn target_tokens(
    datum: usize,
    loss: &'static str,
    inputs: &LossInputs,
    n_tokens: usize,
) -> Result<Targets, LossInputError> {
    let key = "target_tokens";
    let input = inputs.get(key).ok_or(LossInputError::Missing { datum, loss, key: key.into() })?;
    let k = match input.shape() {
        [n] if *n == n_tokens => 1,
        [n, k] if *n == n_tokens && *k >= 1 => *k,
        got => {
            let expected = format!("[{n_tokens}] or [{n_tokens}, K] with K ≥ 1 (one row per model input token)");
            return Err(LossInputError::Shape { datum, key: key.into(), expected, got: got.to_vec() });
        }
    };
    let LossValues::I64(raw) = input.values() else {
        return Err(LossInputError::Dtype { datum, key: key.into(), expected: "int64", got: input.values().dtype() });
    };
    let mut ids = Vec::with_capacity(raw.len());
    for (index, &id) in raw.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| LossInputError::Invalid {
            datum,
            key: key.into(),
            index,
            why: format!("{id} is not a token id (must be in 0..=4294967295)"),
        })?;
        ids.push(id);
    }
    assert_eq!(ids.len(), n_tokens * k, "LossInput::new guarantees the values fill the shape");
    Ok(Targets { ids, n: n_tokens, k })
}

/// Validating access to one datum's inputs on behalf of one loss.
pub(crate) struct InputReader<'a> {
    pub datum: usize,
    pub loss: &'static str,
    pub inputs: &'a LossInputs,
}

impl InputReader<'_> {
    /// Rejects any key outside `accepted`, so a misspelt optional key cannot silently be ignored.
    pub fn check_keys(&self, accepted: &[&str]) -> Result<(), LossInputError> {
        match self.inputs.keys().find(|key| !accepted.contains(&key.as_str())) {
            Some(key) => Err(LossInputError::Unexpected {
                datum: self.datum,
                loss: self.loss,
                key: key.clone(),
                accepted: accepted.join(", "),
            }),
            None => Ok(()),
        }
    }

    /// A required float tensor of exactly `shape`, widened to f64. int64 tensors are accepted too
    /// (a client that sends integer advantages means those numbers).
    pub fn floats(&self, key: &str, shape: &[usize]) -> Result<Vec<f64>, LossInputError> {
        self.floats_opt(key, shape)?.ok_or(LossInputError::Missing {
            datum: self.datum,
            loss: self.loss,
            key: key.into(),
        })
    }

    /// Like [`Self::floats`] for an optional key: `None` when absent.
    pub fn floats_opt(&self, key: &str, shape: &[usize]) -> Result<Option<Vec<f64>>, LossInputError> {
        let Some(input) = self.inputs.get(key) else { return Ok(None) };
        if input.shape() != shape {
            let expected = format!("{shape:?}");
            return Err(LossInputError::Shape {
                datum: self.datum,
                key: key.into(),
                expected,
                got: input.shape().to_vec(),
            });
        }
        let values: Vec<f64> = match input.values() {
            LossValues::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            LossValues::I64(v) => v.iter().map(|&x| x as f64).collect(),
        };
        if let Some(index) = values.iter().position(|x| !x.is_finite()) {
            return Err(LossInputError::NotFinite { datum: self.datum, key: key.into(), index, value: values[index] });
        }
        Ok(Some(values))
    }

    /// An error about value `index` of `key`.
    pub fn invalid(&self, key: &str, index: usize, why: String) -> LossInputError {
        LossInputError::Invalid { datum: self.datum, key: key.into(), index, why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(entries: Vec<(&str, LossInput)>) -> LossInputs {
        entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn a_tensor_whose_values_do_not_fill_its_shape_is_rejected() {
        let err = LossInput::new(vec![2, 3], LossValues::F32(vec![0.0; 5])).unwrap_err();
        assert_eq!(err, TensorShapeError { shape: vec![2, 3], len: 5, expected: 6 });
        assert!(LossInput::new(vec![2, 3], LossValues::I64(vec![0; 6])).is_ok());
    }

    #[test]
    fn target_tokens_accept_one_and_two_dimensional_shapes() {
        let one = inputs(vec![("target_tokens", LossInput::vector_i64(vec![3, 4, 5]))]);
        assert_eq!(target_tokens(0, "ppo", &one, 3).unwrap(), Targets { ids: vec![3, 4, 5], n: 3, k: 1 });
        let two =
            inputs(vec![("target_tokens", LossInput::new(vec![2, 2], LossValues::I64(vec![1, 2, 3, 4])).unwrap())]);
        assert_eq!(target_tokens(0, "ppo", &two, 2).unwrap(), Targets { ids: vec![1, 2, 3, 4], n: 2, k: 2 });
    }

    #[test]
    fn bad_target_tokens_name_the_datum_and_the_key() {
        let wrong_len = inputs(vec![("target_tokens", LossInput::vector_i64(vec![3, 4]))]);
        let err = target_tokens(7, "ppo", &wrong_len, 3).unwrap_err().to_string();
        assert!(err.contains("datum 7") && err.contains("target_tokens") && err.contains("[2]"), "{err}");
        let negative = inputs(vec![("target_tokens", LossInput::vector_i64(vec![3, -1]))]);
        assert!(matches!(target_tokens(1, "ppo", &negative, 2), Err(LossInputError::Invalid { index: 1, .. })));
        let float = inputs(vec![("target_tokens", LossInput::vector_f32(vec![3.0, 1.0]))]);
        assert!(matches!(target_tokens(1, "ppo", &float, 2), Err(LossInputError::Dtype { .. })));
        assert!(matches!(
            target_tokens(2, "ppo", &LossInputs::new(), 2),
            Err(LossInputError::Missing { datum: 2, .. })
        ));
    }

    #[test]
    fn reader_rejects_non_finite_floats_and_unexpected_keys() {
        let map = inputs(vec![
            ("weights", LossInput::vector_f32(vec![1.0, f32::NAN])),
            ("extra", LossInput::vector_i64(vec![1])),
        ]);
        let reader = InputReader { datum: 4, loss: "cross_entropy", inputs: &map };
        let err = reader.floats("weights", &[2]).unwrap_err();
        assert!(matches!(err, LossInputError::NotFinite { datum: 4, index: 1, .. }));
        let err = reader.check_keys(&["weights"]).unwrap_err().to_string();
        assert!(err.contains("`extra`") && err.contains("datum 4"), "{err}");
        assert_eq!(reader.floats_opt("absent", &[2]).unwrap(), None);
    }
}
