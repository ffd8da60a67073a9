//! JSON and CSV products (plans, truth tables, manifests), written atomically.

use super::{write_atomic, IoError};
use std::path::Path;

/// Write a value as pretty JSON, atomically.
///
/// # Errors
/// [`IoError`] naming the path.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), IoError> {
    if let Some(at) = find_non_finite(value) {
        // JSON has no NaN or infinity: serde_json writes null, which reads back as "missing"
        tracing::warn!("{}: `{at}` is not a finite number (NaN or infinite); JSON stores it as null", path.display());
    }
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| IoError::Format { path: path.to_path_buf(), message: e.to_string() })?;
    write_text(path, &(text + "\n"))
}

/// Read a JSON file.
///
/// # Errors
/// [`IoError`] naming the path and what is wrong.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, IoError> {
    let text = std::fs::read_to_string(path).map_err(|e| IoError::fs(path, e))?;
    serde_json::from_str(&text).map_err(|e| IoError::Format { path: path.to_path_buf(), message: e.to_string() })
}

/// Write text atomically.
///
/// # Errors
/// [`IoError`] naming the path.
pub fn write_text(path: &Path, text: &str) -> Result<(), IoError> {
    write_atomic(path, |tmp| std::fs::write(tmp, text).map_err(|e| IoError::fs(tmp, e)))
}

/// Where `value` holds a NaN or infinite `f32`/`f64`, as a path like `exposures[3].rms`; `None` when
/// every float is finite. serde_json writes such a number as `null` without a word, which then fails
/// to read back as a number (or reads back as a missing value), so products and messages are checked.
pub fn find_non_finite<T: serde::Serialize + ?Sized>(value: &T) -> Option<String> {
    let mut f = Finder::default();
    let _ = value.serialize(&mut f);
    f.found
}

#[derive(Default)]
struct Finder {
    path: Vec<String>,
    counters: Vec<usize>,
    key: Option<String>,
    found: Option<String>,
}

/// Stops the walk (the first non-finite number is enough), or carries another type's own error.
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stop")
    }
}
impl std::error::Error for Stop {}
impl serde::ser::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl Finder {
    fn float(&mut self, finite: bool) -> Result<(), Stop> {
        if finite {
            return Ok(());
        }
        let mut at = String::new();
        for p in &self.path {
            if !at.is_empty() && !p.starts_with('[') {
                at.push('.');
            }
            at.push_str(p);
        }
        self.found = Some(if at.is_empty() { "(the value)".to_string() } else { at });
        Err(Stop)
    }
    fn within<T: serde::Serialize + ?Sized>(&mut self, name: String, v: &T) -> Result<(), Stop> {
        self.path.push(name);
        v.serialize(&mut *self)?;
        self.path.pop();
        Ok(())
    }
    fn element<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
        let i = self.counters.last().copied().unwrap_or(0);
        if let Some(c) = self.counters.last_mut() {
            *c += 1;
        }
        self.within(format!("[{i}]"), v)
    }
}

impl serde::Serializer for &mut Finder {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;
    fn serialize_bool(self, _: bool) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Stop> {
        self.float(v.is_finite())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Stop> {
        self.float(v.is_finite())
    }
    fn serialize_char(self, _: char) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_some<T: serde::Serialize + ?Sized>(self, v: &T) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_newtype_struct<T: serde::Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: serde::Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), Stop> {
        self.within(variant.to_string(), v)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Stop> {
        self.counters.push(0);
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Stop> {
        self.counters.push(0);
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Stop> {
        self.counters.push(0);
        Ok(self)
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self, Stop> {
        self.counters.push(0);
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self, Stop> {
        Ok(self)
    }
}

macro_rules! seq_like {
    ($($t:ident :: $f:ident),*) => {$(
        impl serde::ser::$t for &mut Finder {
            type Ok = ();
            type Error = Stop;
            fn $f<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
                self.element(v)
            }
            fn end(self) -> Result<(), Stop> {
                self.counters.pop();
                Ok(())
            }
        }
    )*};
}
seq_like!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl serde::ser::SerializeMap for &mut Finder {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: serde::Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Stop> {
        self.key = Some(serde_json::to_string(k).map_or_else(|_| "?".into(), |s| s.trim_matches('"').to_string()));
        Ok(())
    }
    fn serialize_value<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Stop> {
        let k = self.key.take().unwrap_or_default();
        self.within(k, v)
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

macro_rules! struct_like {
    ($($t:ident),*) => {$(
        impl serde::ser::$t for &mut Finder {
            type Ok = ();
            type Error = Stop;
            fn serialize_field<T: serde::Serialize + ?Sized>(&mut self, name: &'static str, v: &T) -> Result<(), Stop> {
                self.within(name.to_string(), v)
            }
            fn end(self) -> Result<(), Stop> {
                Ok(())
            }
        }
    )*};
}
struct_like!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Pair {
        name: String,
        rms: Vec<f64>,
        extra: std::collections::BTreeMap<String, Option<f32>>,
    }

    #[test]
    fn non_finite_numbers_are_found_by_path() {
        let mut p = Pair { name: "a".into(), rms: vec![1.0, 2.0], extra: Default::default() };
        p.extra.insert("k".into(), Some(1.5));
        p.extra.insert("m".into(), None);
        assert_eq!(find_non_finite(&p), None);
        p.rms[1] = f64::NAN;
        assert_eq!(find_non_finite(&p).as_deref(), Some("rms[1]"));
        p.rms[1] = 0.0;
        p.extra.insert("z".into(), Some(f32::INFINITY));
        assert_eq!(find_non_finite(&vec![p]).as_deref(), Some("[0].extra.z"));
        assert_eq!(find_non_finite(&f64::NAN).as_deref(), Some("(the value)"));
        assert_eq!(find_non_finite(&(1u8, [0.5f64, f64::NEG_INFINITY])).as_deref(), Some("[1][1]"));
    }
}
