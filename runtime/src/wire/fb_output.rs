//! Encoding a worker's [`ForwardBackwardResult`] as the protobuf `ForwardBackwardOutput` the SDK's
//! `deserialize_forward_backward_output` reads: per-datum `logprobs` and `elementwise_loss` as
//! `BatchedTensor`s inside `ArrayRecord`s, plus the metrics.
//!
//! One record holds a run of consecutive datums whose outputs share dtype and trailing shape (a
//! `BatchedTensor` has one `trailing_shape`); mixing `(N)` and `(N, K)` datums gives several
//! records, which the SDK concatenates in order.

use std::collections::BTreeMap;

use prost::Message;

use crate::control::{DatumOutput, ForwardBackwardResult, Tensor, TensorValues};

use super::le;
use super::proto::{self, DType};
use super::tensor::values_len;

/// What the SDK reports as `loss_fn_output_type` (it keeps the text after the last `:`).
const OUTPUT_TYPE: &str = "ArrayRecord";

/// Encodes `result`; every metric key must be `name:reduction` with exactly one `:` (the SDK
/// crashes on anything else when it merges chunk metrics).
pub fn encode_forward_backward_output(result: &ForwardBackwardResult) -> Vec<u8> {
    for key in result.metrics.keys() {
        assert_eq!(key.matches(':').count(), 1, "metric {key:?} must be name:reduction");
    }
    let mut records = Vec::new();
    let mut start = 0;
    while start < result.outputs.len() {
        let layout = record_layout(&result.outputs[start]);
        let run = result.outputs[start..].iter().take_while(|o| record_layout(o) == layout).count();
        records.push(array_record(&result.outputs[start..start + run]));
        start += run;
    }
    let total: i64 = records.iter().map(|r| r.num_datums).sum();
    assert_eq!(usize::try_from(total).ok(), Some(result.outputs.len()), "every datum is in exactly one record");
    let msg = proto::ForwardBackwardOutput {
        loss_fn_output_type: OUTPUT_TYPE.to_owned(),
        loss_fn_outputs: records,
        metrics: result.metrics.clone(),
    };
    msg.encode_to_vec()
}

/// (dtype, trailing shape) of each output field, in field order.
type Layout = [(DType, Vec<i64>); 2];

fn record_layout(output: &DatumOutput) -> Layout {
    [tensor_layout(&output.logprobs), tensor_layout(&output.elementwise_loss)]
}

fn tensor_layout(tensor: &Tensor) -> (DType, Vec<i64>) {
    assert!(!tensor.shape.is_empty(), "per-datum outputs have a leading token dimension");
    assert_eq!(tensor.shape.iter().product::<usize>(), values_len(&tensor.values), "shape covers the values");
    let dtype = match tensor.values {
        TensorValues::F32(_) => DType::Float32,
        TensorValues::I64(_) => DType::Int64,
    };
    let trailing = tensor.shape[1..].iter().map(|&d| i64::try_from(d).expect("a dimension fits in i64")).collect();
    (dtype, trailing)
}

fn array_record(outputs: &[DatumOutput]) -> proto::ArrayRecord {
    assert!(!outputs.is_empty(), "a record holds at least one datum");
    let mut fields = BTreeMap::new();
    fields.insert("logprobs".to_owned(), batched(outputs.iter().map(|o| &o.logprobs)));
    fields.insert("elementwise_loss".to_owned(), batched(outputs.iter().map(|o| &o.elementwise_loss)));
    let num_datums = i64::try_from(outputs.len()).expect("a datum count fits in i64");
    proto::ArrayRecord { type_tag: OUTPUT_TYPE.to_owned(), fields, num_datums }
}

/// Concatenates same-layout tensors; `offsets` are the int64 LE byte offsets of each datum's start
/// plus the end, so `num_datums + 1` entries starting at 0.
fn batched<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> proto::BatchedTensor {
    let mut data = Vec::new();
    let mut offsets = vec![0i64];
    let mut layout = None;
    for tensor in tensors {
        let this = tensor_layout(tensor);
        assert!(layout.as_ref().is_none_or(|l| *l == this), "one batched tensor has one dtype and trailing shape");
        layout = Some(this);
        match &tensor.values {
            TensorValues::F32(v) => data.extend(le::write_f32(v.iter().copied())),
            TensorValues::I64(v) => data.extend(le::write_i64(v.iter().copied())),
        }
        offsets.push(i64::try_from(data.len()).expect("a byte length fits in i64"));
    }
    let (dtype, trailing_shape) = layout.expect("batched is called with at least one tensor");
    proto::BatchedTensor { data, offsets: le::write_i64(offsets), dtype: dtype as i32, trailing_shape }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(logprobs: Tensor, len: usize) -> DatumOutput {
        DatumOutput {
            logprobs,
            elementwise_loss: Tensor { shape: vec![len], values: TensorValues::F32(vec![0.5; len]) },
        }
    }

    fn per_token(values: &[f32]) -> Tensor {
        Tensor { shape: vec![values.len()], values: TensorValues::F32(values.to_vec()) }
    }

    fn decode(result: &ForwardBackwardResult) -> proto::ForwardBackwardOutput {
        proto::ForwardBackwardOutput::decode(encode_forward_backward_output(result).as_slice()).unwrap()
    }

    #[test]
    fn same_layout_datums_share_one_record_with_byte_offsets() {
        let result = ForwardBackwardResult {
            outputs: vec![output(per_token(&[-1.0, -2.0]), 2), output(per_token(&[-3.0]), 1)],
            metrics: BTreeMap::from([("loss:sum".to_owned(), 3.0)]),
        };
        let msg = decode(&result);
        assert_eq!(msg.loss_fn_output_type, "ArrayRecord");
        assert_eq!(msg.metrics, result.metrics);
        let [record] = msg.loss_fn_outputs.as_slice() else { panic!("one record, got {}", msg.loss_fn_outputs.len()) };
        assert_eq!(record.num_datums, 2);
        let logprobs = &record.fields["logprobs"];
        assert_eq!(le::read_f32(&logprobs.data).unwrap(), vec![-1.0, -2.0, -3.0]);
        assert_eq!(le::read_i64(&logprobs.offsets).unwrap(), vec![0, 8, 12]);
        assert_eq!((logprobs.dtype, logprobs.trailing_shape.as_slice()), (DType::Float32 as i32, &[][..]));
        assert_eq!(le::read_i64(&record.fields["elementwise_loss"].offsets).unwrap(), vec![0, 8, 12]);
    }

    #[test]
    fn a_change_of_trailing_shape_or_dtype_starts_a_new_record() {
        let top_k = Tensor { shape: vec![1, 2], values: TensorValues::F32(vec![-0.5, -0.7]) };
        let ints = Tensor { shape: vec![1], values: TensorValues::I64(vec![4]) };
        let result = ForwardBackwardResult {
            outputs: vec![
                output(per_token(&[-1.0]), 1),
                output(top_k, 1),
                output(ints, 1),
                output(per_token(&[-2.0]), 1),
            ],
            metrics: BTreeMap::new(),
        };
        let msg = decode(&result);
        let layouts: Vec<(i64, i32, Vec<i64>)> = msg
            .loss_fn_outputs
            .iter()
            .map(|r| (r.num_datums, r.fields["logprobs"].dtype, r.fields["logprobs"].trailing_shape.clone()))
            .collect();
        let (f32_, i64_) = (DType::Float32 as i32, DType::Int64 as i32);
        assert_eq!(layouts, vec![(1, f32_, vec![]), (1, f32_, vec![2]), (1, i64_, vec![]), (1, f32_, vec![])]);
    }

    #[test]
    fn no_datums_encode_as_no_records() {
        let result = ForwardBackwardResult { outputs: vec![], metrics: BTreeMap::from([("loss:sum".to_owned(), 0.0)]) };
        assert!(decode(&result).loss_fn_outputs.is_empty());
    }

    #[test]
    #[should_panic(expected = "must be name:reduction")]
    fn a_metric_without_a_reduction_is_a_programmer_error() {
        let result = ForwardBackwardResult { outputs: vec![], metrics: BTreeMap::from([("loss".to_owned(), 0.0)]) };
        encode_forward_backward_output(&result);
    }
}
