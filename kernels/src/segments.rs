//! Validation of `segments`, the cumulative row offsets that every segmented reduction takes
//! (see the `Backend` module doc). It owns the one precondition check both backends share, so a
//! malformed segment list is caught the same way everywhere.

/// Asserts that `segments` is `[0, .., rows]` and non-decreasing: a programmer error otherwise.
pub fn assert_segments(segments: &[usize], rows: usize) {
    assert!(segments.len() >= 2, "segments must hold at least [0, rows], got {segments:?}");
    assert_eq!(segments[0], 0, "segments must start at row 0, got {segments:?}");
    assert_eq!(segments[segments.len() - 1], rows, "segments must end at rows = {rows}, got {segments:?}");
    assert!(segments.windows(2).all(|w| w[0] <= w[1]), "segments must be non-decreasing, got {segments:?}");
}

#[cfg(test)]
mod tests {
    use super::assert_segments;

    #[test]
    fn a_well_formed_segment_list_passes() {
        assert_segments(&[0, 3, 3, 7], 7);
        assert_segments(&[0, 0], 0);
    }

    #[test]
    #[should_panic(expected = "end at rows")]
    fn a_segment_list_not_covering_every_row_panics() {
        assert_segments(&[0, 3], 4);
    }

    #[test]
    #[should_panic(expected = "non-decreasing")]
    fn a_decreasing_segment_list_panics() {
        assert_segments(&[0, 5, 2, 6], 6);
    }
}
