//! SQL values and column types, with the comparison and arithmetic rules the shell uses.
//!
//! Comparisons follow SQL's three-valued logic: anything compared with NULL is unknown
//! (`None`), and a WHERE clause keeps only rows for which it is true. Integers and floats
//! compare by numeric value; other mixes of types are errors, not false.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SqlError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    Int,
    Float,
    Text,
    Bool,
    Bytes,
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::Int => "INT",
            ColumnType::Float => "FLOAT",
            ColumnType::Text => "TEXT",
            ColumnType::Bool => "BOOL",
            ColumnType::Bytes => "BYTES",
        })
    }
}

/// One value of a row. Floats are never NaN: an operation that would make one is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The type of a non-NULL value.
    pub fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Value::Null => return None,
            Value::Int(_) => ColumnType::Int,
            Value::Float(_) => ColumnType::Float,
            Value::Text(_) => ColumnType::Text,
            Value::Bool(_) => ColumnType::Bool,
            Value::Bytes(_) => ColumnType::Bytes,
        })
    }

    /// This value stored in a column of type `to`: integers widen to floats, an integral
    /// float narrows to an integer, text fills a BYTES column with its UTF-8 bytes; other
    /// mixes are errors. NULL stays NULL.
    pub fn coerce(self, to: ColumnType, column: &str) -> Result<Value, SqlError> {
        Ok(match (self, to) {
            (Value::Null, _) => Value::Null,
            (Value::Int(i), ColumnType::Int) => Value::Int(i),
            (Value::Int(i), ColumnType::Float) => Value::Float(i as f64),
            (Value::Float(f), ColumnType::Float) => Value::Float(normal_float(f)?),
            // Strictly above -2^63: that float is also what -9223372036854775809 and its
            // neighbours round to, and a true i64::MIN arrives as an INT literal.
            (Value::Float(f), ColumnType::Int)
                if f.fract() == 0.0 && f > i64::MIN as f64 && f < i64::MAX as f64 =>
            {
                Value::Int(f as i64)
            }
            (Value::Text(s), ColumnType::Text) => Value::Text(s),
            (Value::Text(s), ColumnType::Bytes) => Value::Bytes(s.into_bytes()),
            (Value::Bytes(b), ColumnType::Bytes) => Value::Bytes(b),
            (Value::Bool(b), ColumnType::Bool) => Value::Bool(b),
            (value, to) => {
                return Err(SqlError::Type(format!(
                    "column {column} is {to}; {} is not",
                    value.literal()
                )))
            }
        })
    }

    /// The value as SQL would spell it (strings quoted), for messages.
    pub fn literal(&self) -> String {
        match self {
            Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Value::Bytes(b) => format!("X'{}'", hex(b)),
            other => other.to_string(),
        }
    }

    /// SQL comparison: `None` if either side is NULL.
    pub fn compare(&self, other: &Value) -> Result<Option<Ordering>, SqlError> {
        Ok(Some(match (self, other) {
            (Value::Null, _) | (_, Value::Null) => return Ok(None),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Int(a), Value::Float(b)) => (*a as f64).total_cmp(b),
            (Value::Float(a), Value::Int(b)) => a.total_cmp(&(*b as f64)),
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Text(a), Value::Bytes(b)) => a.as_bytes().cmp(b.as_slice()),
            (Value::Bytes(a), Value::Text(b)) => a.as_slice().cmp(b.as_bytes()),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (a, b) => {
                return Err(SqlError::Type(format!(
                    "cannot compare {} with {}",
                    a.literal(),
                    b.literal()
                )))
            }
        }))
    }

    /// The order ORDER BY uses: NULL after every value (as PostgreSQL does for ASC).
    pub fn sort_order(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            // Values of one column share a type; a mix (from an expression) sorts by type.
            (a, b) => a
                .compare(b)
                .ok()
                .flatten()
                .unwrap_or_else(|| a.type_rank().cmp(&b.type_rank())),
        }
    }

    fn type_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Text(_) => 3,
            Value::Bytes(_) => 4,
        }
    }
}

/// A float result, refused if it is not a number or infinite; -0 becomes 0 so that equal
/// values have one encoding.
pub fn normal_float(f: f64) -> Result<f64, SqlError> {
    if !f.is_finite() {
        return Err(SqlError::Type(format!(
            "{f} is not a storable number (only finite floats are)"
        )));
    }
    Ok(if f == 0.0 { 0.0 } else { f })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => {
                // Always show that it is a float: 2 prints as 2.0.
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    write!(f, "{x:.1}")
                } else {
                    write!(f, "{x}")
                }
            }
            Value::Text(s) => f.write_str(s),
            Value::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Value::Bytes(b) => write!(f, "\\x{}", hex(b)),
        }
    }
}
