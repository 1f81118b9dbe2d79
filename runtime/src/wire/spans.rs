//! Provenance spans: `Datum.model_input_spans` and `Datum.loss_fn_input_spans` of the tinker 0.38.0
//! SDK (`tinker/types/provenance_spans.py`, `Datum.with_provenance`), which tinker-cookbook's RL
//! loops attach to every datum built from sampled sequences.
//!
//! As the SDK defines them: each list is a run of spans that tiles one field of the datum, the
//! model input tokens or the rows of `loss_fn_inputs["target_tokens"]`. A span's position in the
//! field follows from the lengths before it, so spans can neither overlap nor leave gaps; what a
//! client can get wrong is the total (it must equal the field's length), a negative offset or
//! length, an empty `sequence_id`, or sending one list without the other. Each span claims that
//! its positions are positions `offset..offset + length` of the named sequence's prompt
//! (`PromptProvenanceSpan`) or of its sampled tokens (`SampledProvenanceSpan`); lengths of 0 are
//! allowed. Whether those sequences exist, belong to the caller and are that long is for whoever
//! keeps the samples (the coordinator), from [`sequence_ids`] and the spans themselves.

use std::collections::BTreeSet;

use crate::control::{Datum, Provenance, ProvenanceSpan, SpanSource};

use super::error::Problem;
use super::proto::{self, provenance_span::Span};

/// Checks `datum`'s provenance (nothing to check without one) as the module doc describes.
///
/// # Errors
/// A message naming the field relative to the datum (`model_input_spans[2].sequence_id`, …) and
/// saying what to send instead.
pub fn validate(datum: &Datum) -> Result<(), String> {
    check(datum).map_err(|(field, problem)| format!("{field} {}", problem.0))
}

/// The sequence ids `datum`'s provenance names (prompt and sampled spans, both lists), each once.
/// Empty without provenance.
pub fn sequence_ids(datum: &Datum) -> BTreeSet<&str> {
    let Some(p) = &datum.provenance else { return BTreeSet::new() };
    p.model_input.iter().chain(&p.loss_fn_inputs).map(|s| s.sequence_id.as_str()).collect()
}

/// [`validate`], with the field and the problem apart (the decoder puts the datum's path first).
pub(crate) fn check(datum: &Datum) -> Result<(), (String, Problem)> {
    let Some(p) = &datum.provenance else { return Ok(()) };
    let (inputs, losses) = ("model_input_spans", "loss_fn_input_spans");
    if p.model_input.is_empty() != p.loss_fn_inputs.is_empty() {
        let (empty, set) = if p.model_input.is_empty() { (inputs, losses) } else { (losses, inputs) };
        let why = format!("is empty but {set} is set; provenance comes as a pair, send both lists or neither");
        return Err((empty.to_owned(), Problem::new(why)));
    }
    let rows = match datum.loss_fn_inputs.get("target_tokens").map(|t| t.shape.first()) {
        Some(Some(&rows)) => rows,
        Some(None) => {
            let why = "tile the rows of loss_fn_inputs[\"target_tokens\"], which has none (a 0-d tensor)";
            return Err((losses.to_owned(), Problem::new(why)));
        }
        None => {
            let why = "tile loss_fn_inputs[\"target_tokens\"], which is missing";
            return Err((losses.to_owned(), Problem::new(why)));
        }
    };
    let model_input = format!("model_input has {} tokens", datum.tokens.len());
    let targets = format!("loss_fn_inputs[\"target_tokens\"] has {rows} rows");
    for (field, spans, expected, what) in
        [(inputs, &p.model_input, datum.tokens.len(), model_input), (losses, &p.loss_fn_inputs, rows, targets)]
    {
        let mut total = 0u64;
        for (j, span) in spans.iter().enumerate() {
            if span.sequence_id.is_empty() {
                let why = "is empty; name the sample_sequence_id the tokens came from";
                return Err((format!("{field}[{j}].sequence_id"), Problem::new(why)));
            }
            // Offsets and lengths travel as int64: their end must stay representable there.
            if span.offset.checked_add(span.length).is_none_or(|end| end > i64::MAX as u64) {
                let why = format!("has offset {} + length {}, past the int64 range", span.offset, span.length);
                return Err((format!("{field}[{j}]"), Problem::new(why)));
            }
            total = total.saturating_add(span.length);
        }
        if total != expected as u64 {
            let why = format!("cover {total} positions but {what}; the spans must tile it exactly");
            return Err((field.to_owned(), Problem::new(why)));
        }
    }
    Ok(())
}

/// The decoded provenance of one datum: `None` when it has no spans at all; otherwise both lists
/// (tiling is [`check`]ed on the whole datum afterwards). Errors name the field relative to the
/// datum.
pub(crate) fn from_proto(
    model_input: &[proto::ProvenanceSpan],
    loss_fn_inputs: &[proto::ProvenanceSpan],
) -> Result<Option<Provenance>, (String, Problem)> {
    if model_input.is_empty() && loss_fn_inputs.is_empty() {
        return Ok(None);
    }
    let convert = |field: &str, spans: &[proto::ProvenanceSpan]| -> Result<Vec<ProvenanceSpan>, (String, Problem)> {
        spans.iter().enumerate().map(|(j, s)| span_from_proto(s).map_err(|p| (format!("{field}[{j}]"), p))).collect()
    };
    Ok(Some(Provenance {
        model_input: convert("model_input_spans", model_input)?,
        loss_fn_inputs: convert("loss_fn_input_spans", loss_fn_inputs)?,
    }))
}

fn span_from_proto(msg: &proto::ProvenanceSpan) -> Result<ProvenanceSpan, Problem> {
    let (source, sequence_id, offset, length) = match &msg.span {
        Some(Span::PromptTokens(s)) => (SpanSource::Prompt, &s.sequence_id, s.offset, s.length),
        Some(Span::SampledTokens(s)) => (SpanSource::Sampled, &s.sequence_id, s.offset, s.length),
        None => return Err(Problem::new("has neither prompt_tokens nor sampled_tokens; send one of them")),
    };
    let non_negative = |name: &str, value: i64| {
        u64::try_from(value).map_err(|_| Problem::new(format!("has {name} {value}; it must be ≥ 0")))
    };
    Ok(ProvenanceSpan {
        source,
        sequence_id: sequence_id.clone(),
        offset: non_negative("offset", offset)?,
        length: non_negative("length", length)?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::control::{Tensor, TensorValues};

    fn span(source: SpanSource, id: &str, offset: u64, length: u64) -> ProvenanceSpan {
        ProvenanceSpan { source, sequence_id: id.into(), offset, length }
    }

    /// rl_loop's shape: sequence "s-1" with a 3-token prompt and 3 sampled tokens; the inputs are
    /// the prompt and the first 2 sampled, the targets the prompt from its second token and all 3
    /// sampled. A zero-length run naming "s-2" sits among the inputs (the SDK allows length 0).
    fn datum() -> Datum {
        let targets = Tensor { shape: vec![5], values: TensorValues::I64(vec![1, 2, 3, 4, 5]) };
        Datum {
            tokens: vec![9, 1, 2, 3, 4],
            loss_fn_inputs: BTreeMap::from([("target_tokens".to_owned(), targets)]),
            provenance: Some(Provenance {
                model_input: vec![
                    span(SpanSource::Prompt, "s-1", 0, 3),
                    span(SpanSource::Sampled, "s-2", 0, 0),
                    span(SpanSource::Sampled, "s-1", 0, 2),
                ],
                loss_fn_inputs: vec![span(SpanSource::Prompt, "s-1", 1, 2), span(SpanSource::Sampled, "s-1", 0, 3)],
            }),
        }
    }

    #[test]
    fn spans_that_tile_both_fields_pass_and_name_their_sequences_once() {
        let d = datum();
        assert_eq!(validate(&d), Ok(()));
        assert_eq!(sequence_ids(&d).into_iter().collect::<Vec<_>>(), vec!["s-1", "s-2"]);
        let plain = Datum { provenance: None, ..d };
        assert_eq!(validate(&plain), Ok(()));
        assert!(sequence_ids(&plain).is_empty());
    }

    #[test]
    fn a_tiling_that_misses_or_overshoots_its_field_is_named_with_both_counts() {
        let mut d = datum();
        d.provenance.as_mut().unwrap().model_input[2].length = 1;
        assert_eq!(
            validate(&d).unwrap_err(),
            "model_input_spans cover 4 positions but model_input has 5 tokens; the spans must tile it exactly"
        );
        let mut d = datum();
        d.provenance.as_mut().unwrap().loss_fn_inputs[1].length = 4;
        let message = validate(&d).unwrap_err();
        assert!(message.starts_with("loss_fn_input_spans cover 6 positions but loss_fn_inputs"), "{message}");
    }

    #[test]
    fn half_a_pair_an_empty_id_an_overflowing_end_or_missing_targets_are_refused() {
        let mut d = datum();
        d.provenance.as_mut().unwrap().loss_fn_inputs.clear();
        assert!(validate(&d).unwrap_err().starts_with("loss_fn_input_spans is empty but model_input_spans is set"));
        let mut d = datum();
        d.provenance.as_mut().unwrap().model_input[1].sequence_id.clear();
        assert!(validate(&d).unwrap_err().starts_with("model_input_spans[1].sequence_id is empty"));
        let mut d = datum();
        d.provenance.as_mut().unwrap().model_input[0].offset = u64::MAX - 1;
        assert!(validate(&d).unwrap_err().starts_with("model_input_spans[0] has offset"));
        let mut d = datum();
        d.loss_fn_inputs.clear();
        assert!(validate(&d).unwrap_err().contains("target_tokens\"], which is missing"));
    }

    #[test]
    fn proto_spans_convert_by_kind_and_refuse_negative_or_empty_spans() {
        let prompt = |offset, length| proto::ProvenanceSpan {
            span: Some(Span::PromptTokens(proto::PromptProvenanceSpan { sequence_id: "a".into(), offset, length })),
        };
        let sampled = proto::ProvenanceSpan {
            span: Some(Span::SampledTokens(proto::SampledProvenanceSpan {
                sequence_id: "b".into(),
                offset: 0,
                length: 2,
            })),
        };
        let got = from_proto(&[prompt(1, 3)], std::slice::from_ref(&sampled)).unwrap().unwrap();
        assert_eq!(got.model_input, vec![span(SpanSource::Prompt, "a", 1, 3)]);
        assert_eq!(got.loss_fn_inputs, vec![span(SpanSource::Sampled, "b", 0, 2)]);
        assert_eq!(from_proto(&[], &[]).unwrap(), None);
        let (field, problem) = from_proto(&[prompt(0, 1), prompt(-1, 2)], &[]).unwrap_err();
        assert_eq!((field.as_str(), problem.0.as_str()), ("model_input_spans[1]", "has offset -1; it must be ≥ 0"));
        let (field, problem) = from_proto(&[], &[proto::ProvenanceSpan { span: None }]).unwrap_err();
        assert_eq!(field, "loss_fn_input_spans[0]");
        assert!(problem.0.contains("neither prompt_tokens nor sampled_tokens"), "{problem:?}");
    }
}
