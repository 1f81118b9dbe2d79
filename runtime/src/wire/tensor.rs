//! A `tinker_public.Tensor` (dense or sparse CSR) to a control [`Tensor`]: dtype widening
//! (int32 → int64, bfloat16 → float32), shape checks, CSR expansion with 0 in absent cells, and
//! rejection of non-finite floats. Problems come back without a location; the caller knows which
//! datum and input the tensor was.

use crate::control::{Tensor, TensorValues};

use super::error::Problem;
use super::le::{self, Misaligned};
use super::proto::{self, tensor::Encoding, DType};

/// The most elements one decoded tensor may hold (256 MiB as float32). Sparse tensors are expanded
/// to dense, so their declared shape is checked against this before anything is allocated.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 26;

pub(crate) fn tensor_from_proto(msg: &proto::Tensor) -> Result<Tensor, Problem> {
    let dtype = match DType::try_from(msg.dtype) {
        Ok(DType::Unspecified) | Err(_) => {
            return Err(Problem::new(format!(
                "has dtype {}, which is not float32 (1), int64 (2), int32 (3) or bfloat16 (4)",
                msg.dtype
            )))
        }
        Ok(dtype) => dtype,
    };
    let shape = msg
        .shape
        .iter()
        .map(|&dim| {
            usize::try_from(dim).map_err(|_| Problem::new(format!("has a negative dimension in shape {:?}", msg.shape)))
        })
        .collect::<Result<Vec<usize>, Problem>>()?;
    let tensor = match &msg.encoding {
        // An unset oneof is an empty dense payload: fine for a zero-element shape, a mismatch otherwise.
        None => dense(dtype, shape, &[])?,
        Some(Encoding::Dense(bytes)) => dense(dtype, shape, bytes)?,
        Some(Encoding::SparseCsr(csr)) => sparse(dtype, shape, csr)?,
    };
    check_finite(&tensor.values)?;
    assert_eq!(tensor.shape.iter().product::<usize>(), values_len(&tensor.values), "decoded shape covers the values");
    Ok(tensor)
}

fn dense(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, Problem> {
    let values = read_values(dtype, bytes).map_err(|m| misaligned("dense", dtype, m))?;
    let len = values_len(&values);
    // An empty shape means "1-D, length from the bytes" (tinker-protocol.md §4.2).
    let shape = if shape.is_empty() { vec![len] } else { shape };
    let elements = element_count(&shape)?;
    if elements != len {
        return Err(Problem::new(format!(
            "has {len} values but its shape {shape:?} needs {elements}; send values matching the shape"
        )));
    }
    Ok(Tensor { shape, values })
}

fn sparse(dtype: DType, shape: Vec<usize>, csr: &proto::SparseCsr) -> Result<Tensor, Problem> {
    let &[rows, cols] = shape.as_slice() else {
        return Err(Problem::new(format!("is sparse CSR with shape {shape:?}; CSR tensors must be 2-D [rows, cols]")));
    };
    let elements = element_count(&shape)?;
    let crow = le::read_i64(&csr.crow_indices).map_err(|m| misaligned("sparse_csr.crow_indices", DType::Int64, m))?;
    let col = le::read_i64(&csr.col_indices).map_err(|m| misaligned("sparse_csr.col_indices", DType::Int64, m))?;
    let values = read_values(dtype, &csr.values).map_err(|m| misaligned("sparse_csr.values", dtype, m))?;
    let nnz = values_len(&values);
    if crow.len() != rows + 1 || col.len() != nnz {
        return Err(Problem::new(format!(
            "is sparse CSR [{rows}, {cols}] with {nnz} values, {} crow_indices and {} col_indices; \
             it needs {} crow_indices and {nnz} col_indices",
            crow.len(),
            col.len(),
            rows + 1
        )));
    }
    let flat = csr_flat_positions(&crow, &col, cols)?; // (nnz) row-major indices
    let values = match values {
        TensorValues::F32(v) => TensorValues::F32(scatter(&flat, &v, elements, 0.0)),
        TensorValues::I64(v) => TensorValues::I64(scatter(&flat, &v, elements, 0)),
    };
    Ok(Tensor { shape, values })
}

/// Row-major positions of the CSR entries, checking that row pointers start at 0, never decrease
/// and end at nnz, and that each row's columns are in range and strictly increasing.
fn csr_flat_positions(crow: &[i64], col: &[i64], cols: usize) -> Result<Vec<usize>, Problem> {
    let nnz = col.len();
    if crow.first() != Some(&0) || crow.last() != i64::try_from(nnz).ok().as_ref() {
        return Err(Problem::new(format!("has sparse_csr.crow_indices {crow:?} that do not run from 0 to nnz {nnz}")));
    }
    if let Some(row) = crow.windows(2).position(|pair| pair[1] < pair[0]) {
        return Err(Problem::new(format!("has sparse_csr.crow_indices that decrease after row {row}")));
    }
    let mut flat = Vec::with_capacity(nnz);
    for (row, pair) in crow.windows(2).enumerate() {
        // Non-decreasing from 0 to nnz: 0 ≤ start ≤ end ≤ nnz, so both convert and index `col`.
        let row_cols = &col[pair[0] as usize..pair[1] as usize];
        let mut previous: Option<i64> = None;
        for &c in row_cols {
            let in_range = usize::try_from(c).is_ok_and(|c| c < cols);
            if !in_range || previous.is_some_and(|p| p >= c) {
                return Err(Problem::new(format!(
                    "has sparse_csr.col_indices {row_cols:?} in row {row}; they must be increasing and below {cols}"
                )));
            }
            previous = Some(c);
            flat.push(row * cols + c as usize);
        }
    }
    assert_eq!(flat.len(), nnz, "every CSR entry has a position");
    Ok(flat)
}

fn scatter<T: Copy>(positions: &[usize], values: &[T], elements: usize, absent: T) -> Vec<T> {
    assert_eq!(positions.len(), values.len(), "one position per value");
    let mut dense = vec![absent; elements];
    for (&position, &value) in positions.iter().zip(values) {
        dense[position] = value;
    }
    dense
}

fn read_values(dtype: DType, bytes: &[u8]) -> Result<TensorValues, Misaligned> {
    Ok(match dtype {
        DType::Float32 => TensorValues::F32(le::read_f32(bytes)?),
        DType::Bfloat16 => TensorValues::F32(le::read_bf16_as_f32(bytes)?),
        DType::Int64 => TensorValues::I64(le::read_i64(bytes)?),
        DType::Int32 => TensorValues::I64(le::read_i32(bytes)?.into_iter().map(i64::from).collect()),
        DType::Unspecified => unreachable!("tensor_from_proto rejects DTYPE_UNSPECIFIED before reading values"),
    })
}

fn element_count(shape: &[usize]) -> Result<usize, Problem> {
    shape
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| Problem::new(format!("has shape {shape:?}, over the limit of {MAX_TENSOR_ELEMENTS} elements")))
}

fn check_finite(values: &TensorValues) -> Result<(), Problem> {
    let TensorValues::F32(values) = values else { return Ok(()) };
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => {
            Err(Problem::new(format!("holds {} at index {index}; every float must be finite", values[index])))
        }
    }
}

fn misaligned(part: &str, dtype: DType, m: Misaligned) -> Problem {
    Problem::new(format!(
        "has {part} of {} bytes, not a whole number of {}-byte {} elements",
        m.len_bytes,
        m.width_bytes,
        dtype_name(dtype)
    ))
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::Unspecified => "unspecified",
        DType::Float32 => "float32",
        DType::Int64 => "int64",
        DType::Int32 => "int32",
        DType::Bfloat16 => "bfloat16",
    }
}

pub(crate) fn values_len(values: &TensorValues) -> usize {
    match values {
        TensorValues::F32(v) => v.len(),
        TensorValues::I64(v) => v.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense_msg(dtype: DType, shape: &[i64], bytes: Vec<u8>) -> proto::Tensor {
        proto::Tensor { encoding: Some(Encoding::Dense(bytes)), dtype: dtype as i32, shape: shape.to_vec() }
    }

    fn csr_msg(shape: &[i64], values: &[f32], crow: &[i64], col: &[i64]) -> proto::Tensor {
        let csr = proto::SparseCsr {
            values: le::write_f32(values.iter().copied()),
            crow_indices: le::write_i64(crow.iter().copied()),
            col_indices: le::write_i64(col.iter().copied()),
        };
        proto::Tensor { encoding: Some(Encoding::SparseCsr(csr)), dtype: DType::Float32 as i32, shape: shape.to_vec() }
    }

    fn problem(msg: &proto::Tensor) -> String {
        tensor_from_proto(msg).unwrap_err().0
    }

    #[test]
    fn a_dense_two_d_tensor_keeps_its_shape_and_row_major_values() {
        let msg = dense_msg(DType::Int64, &[2, 2], le::write_i64([1, 2, 3, 4]));
        let tensor = tensor_from_proto(&msg).unwrap();
        assert_eq!(tensor, Tensor { shape: vec![2, 2], values: TensorValues::I64(vec![1, 2, 3, 4]) });
    }

    #[test]
    fn a_value_count_that_does_not_fill_the_shape_is_rejected() {
        let msg = dense_msg(DType::Float32, &[2, 3], le::write_f32([0.0; 5]));
        assert_eq!(problem(&msg), "has 5 values but its shape [2, 3] needs 6; send values matching the shape");
    }

    #[test]
    fn negative_dimensions_unknown_dtypes_and_ragged_bytes_are_rejected() {
        assert!(problem(&dense_msg(DType::Int64, &[-1], vec![])).contains("negative dimension"));
        let unspecified = dense_msg(DType::Unspecified, &[], vec![]);
        assert!(problem(&unspecified).contains("has dtype 0, which is not float32"));
        let unknown = proto::Tensor { dtype: 9, ..dense_msg(DType::Float32, &[], vec![]) };
        assert!(problem(&unknown).contains("has dtype 9"));
        let ragged = dense_msg(DType::Int64, &[], vec![0; 12]);
        assert_eq!(problem(&ragged), "has dense of 12 bytes, not a whole number of 8-byte int64 elements");
    }

    #[test]
    fn non_finite_floats_are_rejected_with_their_index() {
        let msg = dense_msg(DType::Float32, &[3], le::write_f32([1.0, 2.0, f32::INFINITY]));
        assert_eq!(problem(&msg), "holds inf at index 2; every float must be finite");
        let msg = dense_msg(DType::Float32, &[1], le::write_f32([f32::NAN]));
        assert!(problem(&msg).starts_with("holds NaN at index 0"));
    }

    #[test]
    fn an_unset_encoding_is_an_empty_tensor_and_only_fits_a_zero_element_shape() {
        let empty = proto::Tensor { encoding: None, dtype: DType::Float32 as i32, shape: vec![0] };
        assert_eq!(tensor_from_proto(&empty).unwrap(), Tensor { shape: vec![0], values: TensorValues::F32(vec![]) });
        let missing = proto::Tensor { shape: vec![2], ..empty };
        assert!(problem(&missing).contains("has 0 values but its shape [2] needs 2"));
    }

    #[test]
    fn sparse_csr_expands_with_zeros_in_absent_cells() {
        // [[0, 1.5, 0], [0, 0, 0], [2, 0, 3]]
        let msg = csr_msg(&[3, 3], &[1.5, 2.0, 3.0], &[0, 1, 1, 3], &[1, 0, 2]);
        let tensor = tensor_from_proto(&msg).unwrap();
        assert_eq!(tensor.shape, vec![3, 3]);
        assert_eq!(tensor.values, TensorValues::F32(vec![0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 3.0]));
    }

    #[test]
    fn malformed_csr_indices_are_rejected_before_any_indexing() {
        let not_two_d = csr_msg(&[4], &[], &[0], &[]);
        assert!(problem(&not_two_d).contains("must be 2-D"));
        let short_crow = csr_msg(&[2, 2], &[1.0], &[0, 1], &[0]);
        assert!(problem(&short_crow).contains("it needs 3 crow_indices and 1 col_indices"));
        let wrong_end = csr_msg(&[2, 2], &[1.0], &[0, 1, 2], &[0]);
        assert!(problem(&wrong_end).contains("do not run from 0 to nnz 1"));
        // Rises past nnz, then comes back: must fail on the decrease, not index out of bounds.
        let decreasing = csr_msg(&[3, 2], &[1.0, 2.0], &[0, 5, 1, 2], &[0, 1]);
        assert!(problem(&decreasing).contains("decrease after row 1"));
        let column_out_of_range = csr_msg(&[1, 2], &[1.0], &[0, 1], &[2]);
        assert!(problem(&column_out_of_range).contains("below 2"));
        let repeated_column = csr_msg(&[1, 3], &[1.0, 2.0], &[0, 2], &[1, 1]);
        assert!(problem(&repeated_column).contains("must be increasing"));
        let negative_column = csr_msg(&[1, 3], &[1.0], &[0, 1], &[-1]);
        assert!(problem(&negative_column).contains("must be increasing and below 3"));
    }

    #[test]
    fn a_huge_sparse_shape_is_rejected_without_allocating_it() {
        let huge = csr_msg(&[1 << 20, 1 << 20], &[], &[0], &[]);
        assert!(problem(&huge).contains("over the limit of 67108864 elements"));
        let overflowing = csr_msg(&[i64::MAX, i64::MAX], &[], &[0], &[]);
        assert!(problem(&overflowing).contains("over the limit"));
    }

    #[test]
    fn sparse_int32_values_widen_like_dense_ones() {
        let csr = proto::SparseCsr {
            values: le::write_i32([-7]),
            crow_indices: le::write_i64([0, 0, 1]),
            col_indices: le::write_i64([1]),
        };
        let msg =
            proto::Tensor { encoding: Some(Encoding::SparseCsr(csr)), dtype: DType::Int32 as i32, shape: vec![2, 2] };
        assert_eq!(tensor_from_proto(&msg).unwrap().values, TensorValues::I64(vec![0, 0, 0, -7]));
    }
}
