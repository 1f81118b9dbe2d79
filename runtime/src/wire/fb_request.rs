//! Decoding a protobuf `ForwardBackwardRequest` into the control types: model input chunks to one
//! token list, loss inputs to control tensors, and the two loss-config maps merged (the SDK writes
//! numbers into both `loss_fn_config` and `loss_fn_config_v2`, strings only into v2; v2 wins).
//! Provenance spans are kept on the datum once their tiling checks out (`spans`).

use std::collections::BTreeMap;

use prost::Message;

use crate::control::{Datum, TensorValues};

use super::error::{Problem, RequestAt, WireError};
use super::proto::{self, chunk::Chunk, loss_config_value::Value};
use super::tensor::tensor_from_proto;
use super::{le, spans};

/// A decoded `forward_backward` (or, with `forward_only`, `forward`) request.
#[derive(Clone, Debug, PartialEq)]
pub struct FbRequest {
    pub model_id: String,
    /// The client's per-model sequence number (the SDK starts at 1).
    pub seq_id: i32,
    pub data: Vec<Datum>,
    pub loss_fn: String,
    /// Numeric loss config values (`clip_low_threshold`, `beta`, …), all finite.
    pub loss_config: BTreeMap<String, f64>,
    /// Text loss config values (only `loss_fn_config_v2` carries them, e.g. a custom `loss_id`).
    pub loss_config_text: BTreeMap<String, String>,
    pub forward_only: bool,
}

/// Decodes an (already decompressed) `application/x-protobuf` forward_backward body.
pub fn decode_forward_backward(body: &[u8]) -> Result<FbRequest, WireError> {
    let msg = proto::ForwardBackwardRequest::decode(body)
        .map_err(|source| WireError::Protobuf { message: "ForwardBackwardRequest", source })?;
    let at = RequestAt { model_id: &msg.model_id, seq_id: msg.seq_id };
    if msg.data.is_empty() {
        return Err(at.invalid("data", Problem::new("is empty; send at least one datum")));
    }
    let data = msg.data.iter().enumerate().map(|(i, d)| datum_from_proto(&at, i, d)).collect::<Result<Vec<_>, _>>()?;
    let (loss_config, loss_config_text) = merge_loss_config(&at, &msg.loss_fn_config, &msg.loss_fn_config_v2)?;
    assert_eq!(data.len(), msg.data.len(), "one control datum per proto datum");
    Ok(FbRequest {
        model_id: msg.model_id,
        seq_id: msg.seq_id,
        data,
        loss_fn: msg.loss_fn,
        loss_config,
        loss_config_text,
        forward_only: msg.forward_only,
    })
}

fn datum_from_proto(at: &RequestAt, index: usize, msg: &proto::Datum) -> Result<Datum, WireError> {
    let in_datum = |(field, problem): (String, Problem)| at.invalid(format!("data[{index}].{field}"), problem);
    let mut tokens = Vec::new();
    for (c, chunk) in msg.model_input.iter().enumerate() {
        let chunk_tokens = chunk_tokens(chunk).map_err(|p| at.invalid(format!("data[{index}].model_input[{c}]"), p))?;
        tokens.extend(chunk_tokens);
    }
    if tokens.is_empty() {
        return Err(at.invalid(format!("data[{index}].model_input"), Problem::new("has no tokens")));
    }
    let mut loss_fn_inputs = BTreeMap::new();
    for (name, tensor) in &msg.loss_fn_inputs {
        let field = || format!("data[{index}].loss_fn_inputs[{name:?}]");
        let tensor = tensor_from_proto(tensor).map_err(|p| at.invalid(field(), p))?;
        if name == "target_tokens" {
            check_target_ids(&tensor.values).map_err(|p| at.invalid(field(), p))?;
        }
        loss_fn_inputs.insert(name.clone(), tensor);
    }
    let provenance = spans::from_proto(&msg.model_input_spans, &msg.loss_fn_input_spans).map_err(in_datum)?;
    let datum = Datum { tokens, loss_fn_inputs, provenance };
    spans::check(&datum).map_err(in_datum)?;
    Ok(datum)
}

fn chunk_tokens(chunk: &proto::Chunk) -> Result<Vec<u32>, Problem> {
    let packed = match &chunk.chunk {
        Some(Chunk::EncodedText(text)) => &text.tokens,
        Some(Chunk::Image(_)) => return Err(Problem::new("is an image chunk; image inputs are not supported")),
        Some(Chunk::Dmel(_)) => return Err(Problem::new("is an audio (dmel) chunk; audio inputs are not supported")),
        None => return Err(Problem::new("is an empty chunk; send an encoded_text chunk")),
    };
    let ids = le::read_i32(packed).map_err(|m| {
        Problem::new(format!("has encoded_text.tokens of {} bytes, not a whole number of int32 ids", m.len_bytes))
    })?;
    ids.iter()
        .enumerate()
        .map(|(i, &id)| u32::try_from(id).map_err(|_| Problem::new(format!("has negative token id {id} at index {i}"))))
        .collect()
}

fn check_target_ids(values: &TensorValues) -> Result<(), Problem> {
    let TensorValues::I64(ids) = values else { return Ok(()) };
    match ids.iter().position(|&id| id < 0) {
        None => Ok(()),
        Some(i) => Err(Problem::new(format!("has negative token id {} at index {i}", ids[i]))),
    }
}

type LossConfig = (BTreeMap<String, f64>, BTreeMap<String, String>);

fn merge_loss_config(
    at: &RequestAt,
    v1: &BTreeMap<String, f64>,
    v2: &BTreeMap<String, proto::LossConfigValue>,
) -> Result<LossConfig, WireError> {
    let finite = |field: String, value: f64| {
        if value.is_finite() {
            Ok(value)
        } else {
            Err(at.invalid(field, Problem::new(format!("is {value}; loss config numbers must be finite"))))
        }
    };
    let mut numbers = BTreeMap::new();
    let mut texts = BTreeMap::new();
    for (key, &value) in v1 {
        numbers.insert(key.clone(), finite(format!("loss_fn_config[{key:?}]"), value)?);
    }
    for (key, value) in v2 {
        let field = format!("loss_fn_config_v2[{key:?}]");
        match &value.value {
            Some(Value::Number(number)) => {
                numbers.insert(key.clone(), finite(field, *number)?);
                texts.remove(key);
            }
            Some(Value::Text(text)) => {
                texts.insert(key.clone(), text.clone());
                numbers.remove(key);
            }
            None => return Err(at.invalid(field, Problem::new("has neither a number nor a text value"))),
        }
    }
    assert!(numbers.keys().all(|k| !texts.contains_key(k)), "a config key is either a number or a text");
    Ok((numbers, texts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::tensor::Encoding;
    use crate::wire::proto::DType;

    fn text_chunk(tokens: &[i32]) -> proto::Chunk {
        proto::Chunk {
            chunk: Some(Chunk::EncodedText(proto::EncodedTextChunk { tokens: le::write_i32(tokens.iter().copied()) })),
        }
    }

    fn int64_tensor(values: &[i64]) -> proto::Tensor {
        proto::Tensor {
            encoding: Some(Encoding::Dense(le::write_i64(values.iter().copied()))),
            dtype: DType::Int64 as i32,
            shape: vec![values.len() as i64],
        }
    }

    fn datum(tokens: &[i32], targets: &[i64]) -> proto::Datum {
        proto::Datum {
            model_input: vec![text_chunk(tokens)],
            loss_fn_inputs: BTreeMap::from([("target_tokens".to_owned(), int64_tensor(targets))]),
            ..Default::default()
        }
    }

    fn request(data: Vec<proto::Datum>) -> proto::ForwardBackwardRequest {
        proto::ForwardBackwardRequest {
            model_id: "s:train:0".to_owned(),
            seq_id: 4,
            data,
            loss_fn: "cross_entropy".to_owned(),
            ..Default::default()
        }
    }

    fn decode_error(msg: &proto::ForwardBackwardRequest) -> String {
        let error = decode_forward_backward(&msg.encode_to_vec()).unwrap_err();
        assert_eq!(error.request_seq(), Some(("s:train:0", 4)), "{error}");
        error.to_string()
    }

    #[test]
    fn chunks_concatenate_into_one_token_list() {
        let mut d = datum(&[1, 2], &[2, 3, 4]);
        d.model_input.push(text_chunk(&[3]));
        let decoded = decode_forward_backward(&request(vec![d]).encode_to_vec()).unwrap();
        assert_eq!(decoded.data[0].tokens, vec![1, 2, 3]);
        assert_eq!(decoded.data[0].loss_fn_inputs["target_tokens"].values, TensorValues::I64(vec![2, 3, 4]));
        assert_eq!((decoded.seq_id, decoded.forward_only), (4, false));
    }

    #[test]
    fn image_audio_and_empty_chunks_are_rejected_by_position() {
        let image = proto::Chunk { chunk: Some(Chunk::Image(proto::ImageChunk::default())) };
        let mut d = datum(&[1], &[2]);
        d.model_input.push(image);
        let message = decode_error(&request(vec![datum(&[1], &[2]), d]));
        assert!(
            message.ends_with("data[1].model_input[1] is an image chunk; image inputs are not supported"),
            "{message}"
        );
        let dmel = proto::Chunk { chunk: Some(Chunk::Dmel(proto::DmelChunk::default())) };
        let d = proto::Datum { model_input: vec![dmel], ..datum(&[], &[2]) };
        assert!(decode_error(&request(vec![d])).contains("audio inputs are not supported"));
        let d = proto::Datum { model_input: vec![proto::Chunk { chunk: None }], ..datum(&[], &[2]) };
        assert!(decode_error(&request(vec![d])).contains("data[0].model_input[0] is an empty chunk"));
    }

    #[test]
    fn ragged_token_bytes_negative_ids_and_empty_inputs_are_rejected() {
        let ragged =
            proto::Chunk { chunk: Some(Chunk::EncodedText(proto::EncodedTextChunk { tokens: vec![1, 0, 0] })) };
        let d = proto::Datum { model_input: vec![ragged], ..datum(&[], &[2]) };
        assert!(decode_error(&request(vec![d])).contains("tokens of 3 bytes, not a whole number of int32 ids"));
        let message = decode_error(&request(vec![datum(&[1, 2], &[2, -5])]));
        assert!(message.contains("data[0].loss_fn_inputs[\"target_tokens\"] has negative token id -5 at index 1"));
        assert!(decode_error(&request(vec![datum(&[], &[])])).contains("data[0].model_input has no tokens"));
        assert!(decode_error(&request(vec![])).contains("data is empty"));
    }

    fn sampled(id: &str, offset: i64, length: i64) -> proto::ProvenanceSpan {
        let span = proto::SampledProvenanceSpan { sequence_id: id.to_owned(), offset, length };
        proto::ProvenanceSpan { span: Some(proto::provenance_span::Span::SampledTokens(span)) }
    }

    #[test]
    fn provenance_spans_are_kept_on_the_datum_once_they_tile_it() {
        let d = proto::Datum {
            model_input_spans: vec![sampled("s-1", 0, 1), sampled("s-2", 4, 1)],
            loss_fn_input_spans: vec![sampled("s-2", 5, 2)],
            ..datum(&[1, 2], &[2, 3])
        };
        let decoded = decode_forward_backward(&request(vec![datum(&[1], &[2]), d]).encode_to_vec()).unwrap();
        assert_eq!(decoded.data[0].provenance, None);
        let p = decoded.data[1].provenance.as_ref().unwrap();
        assert_eq!(
            p.model_input.iter().map(|s| (s.sequence_id.as_str(), s.offset)).collect::<Vec<_>>(),
            [("s-1", 0), ("s-2", 4)]
        );
        assert_eq!(p.loss_fn_inputs[0].length, 2);
    }

    #[test]
    fn provenance_spans_that_do_not_tile_or_are_malformed_are_rejected_by_position() {
        let d = proto::Datum {
            model_input_spans: vec![sampled("s-1", 0, 1)],
            loss_fn_input_spans: vec![sampled("s-1", 0, 2)],
            ..datum(&[1, 2], &[2, 3])
        };
        let message = decode_error(&request(vec![d]));
        assert!(
            message.ends_with(
                "data[0].model_input_spans cover 1 positions but model_input has 2 tokens; the spans must tile it exactly"
            ),
            "{message}"
        );
        let span = proto::ProvenanceSpan { span: None };
        let d = proto::Datum { loss_fn_input_spans: vec![span], ..datum(&[1], &[2]) };
        let message = decode_error(&request(vec![d]));
        assert!(message.contains("data[0].loss_fn_input_spans[0] has neither prompt_tokens nor sampled_tokens"));
        let d = proto::Datum { loss_fn_input_spans: vec![sampled("s", 0, 1)], ..datum(&[1], &[2]) };
        let message = decode_error(&request(vec![d]));
        assert!(message.contains("data[0].model_input_spans is empty but loss_fn_input_spans is set"), "{message}");
    }

    #[test]
    fn v2_config_values_win_over_v1_and_texts_stay_apart() {
        let mut msg = request(vec![datum(&[1], &[2])]);
        msg.loss_fn_config =
            BTreeMap::from([("beta".to_owned(), 1.0), ("mode".to_owned(), 3.0), ("lo".to_owned(), 0.8)]);
        let number = |x| proto::LossConfigValue { value: Some(Value::Number(x)) };
        let text = |s: &str| proto::LossConfigValue { value: Some(Value::Text(s.to_owned())) };
        msg.loss_fn_config_v2 = BTreeMap::from([("beta".to_owned(), number(0.05)), ("mode".to_owned(), text("fast"))]);
        let decoded = decode_forward_backward(&msg.encode_to_vec()).unwrap();
        assert_eq!(decoded.loss_config, BTreeMap::from([("beta".to_owned(), 0.05), ("lo".to_owned(), 0.8)]));
        assert_eq!(decoded.loss_config_text, BTreeMap::from([("mode".to_owned(), "fast".to_owned())]));
    }

    #[test]
    fn non_finite_or_empty_config_values_are_rejected_by_key() {
        let mut msg = request(vec![datum(&[1], &[2])]);
        msg.loss_fn_config = BTreeMap::from([("beta".to_owned(), f64::NAN)]);
        assert!(decode_error(&msg).contains("loss_fn_config[\"beta\"] is NaN; loss config numbers must be finite"));
        msg.loss_fn_config.clear();
        msg.loss_fn_config_v2 = BTreeMap::from([("k".to_owned(), proto::LossConfigValue { value: None })]);
        assert!(decode_error(&msg).contains("loss_fn_config_v2[\"k\"] has neither a number nor a text value"));
    }

    #[test]
    fn bytes_that_are_not_a_forward_backward_request_have_no_seq_id() {
        let error = decode_forward_backward(&[0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(error, WireError::Protobuf { message: "ForwardBackwardRequest", .. }), "{error}");
        assert_eq!(error.request_seq(), None);
    }
}
