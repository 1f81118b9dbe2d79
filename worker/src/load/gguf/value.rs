//! GGUF metadata values and the key → value map, with typed accessors whose errors name the key.

use std::collections::BTreeMap;

use super::super::error::LoadError;

/// One GGUF metadata value (all thirteen GGUF value types).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as a non-negative integer, whatever its integer width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, whatever its integer width.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Every metadata key of a GGUF file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufMetadata {
    pub values: BTreeMap<String, GgufValue>,
}

impl GgufMetadata {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.values.get(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>, LoadError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| LoadError::GgufKeyType { key: key.to_string(), expected }),
        }
    }

    fn required<T>(key: &str, v: Option<T>) -> Result<T, LoadError> {
        v.ok_or_else(|| LoadError::GgufMissingKey { key: key.to_string() })
    }

    /// # Errors
    /// `GgufKeyType` when present but not a non-negative integer that fits `usize`.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, LoadError> {
        self.typed(key, "a non-negative integer", |v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
    }

    /// # Errors
    /// `GgufMissingKey` when absent, else as [`GgufMetadata::opt_usize`].
    pub fn get_usize(&self, key: &str) -> Result<usize, LoadError> {
        Self::required(key, self.opt_usize(key)?)
    }

    /// # Errors
    /// `GgufKeyType` when present but not a number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        self.typed(key, "a number", GgufValue::as_f64)
    }

    /// # Errors
    /// `GgufKeyType` when present but not a string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, LoadError> {
        self.typed(key, "a string", GgufValue::as_str)
    }

    /// # Errors
    /// `GgufMissingKey` when absent, else as [`GgufMetadata::opt_str`].
    pub fn get_str(&self, key: &str) -> Result<&str, LoadError> {
        Self::required(key, self.opt_str(key)?)
    }

    /// # Errors
    /// `GgufKeyType` when present but not a bool.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, LoadError> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }

    /// An array of strings (token lists, merges).
    ///
    /// # Errors
    /// `GgufKeyType` when present but not an array of strings.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, LoadError> {
        self.typed(key, "an array of strings", |v| v.as_array()?.iter().map(GgufValue::as_str).collect())
    }

    /// An array of integers (token types).
    ///
    /// # Errors
    /// `GgufKeyType` when present but not an array of integers.
    pub fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, LoadError> {
        self.typed(key, "an array of integers", |v| v.as_array()?.iter().map(GgufValue::as_i64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, GgufValue)]) -> GgufMetadata {
        GgufMetadata { values: pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    #[test]
    fn integers_of_any_width_read_as_usize_but_negatives_do_not() {
        let m = meta(&[("a", GgufValue::U8(7)), ("b", GgufValue::I64(9)), ("c", GgufValue::I32(-1))]);
        assert_eq!(m.get_usize("a").unwrap(), 7);
        assert_eq!(m.get_usize("b").unwrap(), 9);
        assert!(matches!(m.get_usize("c"), Err(LoadError::GgufKeyType { .. })));
        assert!(matches!(m.get_usize("zzz"), Err(LoadError::GgufMissingKey { .. })));
        assert_eq!(m.opt_usize("zzz").unwrap(), None);
    }

    #[test]
    fn typed_arrays_reject_mixed_elements() {
        let good = GgufValue::Array(vec![GgufValue::Str("a".into()), GgufValue::Str("b".into())]);
        let bad = GgufValue::Array(vec![GgufValue::Str("a".into()), GgufValue::U8(1)]);
        let m = meta(&[("good", good), ("bad", bad)]);
        assert_eq!(m.opt_str_array("good").unwrap(), Some(vec!["a", "b"]));
        let err = m.opt_str_array("bad").unwrap_err().to_string();
        assert!(err.contains("`bad`") && err.contains("array of strings"), "{err}");
    }
}
