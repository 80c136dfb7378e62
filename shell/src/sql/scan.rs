//! Reading a table's rows: which keys a WHERE clause can touch ([`plan_range`]), and a
//! cursor that reads them page by page, decodes them and keeps those the clause holds for.
//!
//! The range is only ever a superset: every row read is checked against the whole clause,
//! so a predicate the planner does not understand costs a wider scan, never a wrong row.
//! Equalities on every primary key column become one get; equalities on the leading
//! columns, then bounds on the next one, become a range scan; anything else scans the
//! table.

use std::collections::BTreeMap;

use rshard_common::api::{key_after, MAX_KEY_BYTES};

use super::expr::{Compare, Scalar};
use crate::catalog::TableDescriptor;
use crate::encoding::{self, decode_row, decode_row_key, prefix_end, table_prefix};
use crate::error::SqlError;
use crate::store::Store;
use crate::value::{ColumnType, Value};

/// Keys read per scan request.
pub const PAGE_ROWS: usize = 1000;

/// A stored row: its key, its stored value, and its column values in table order.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: Vec<u8>,
    pub stored: Vec<u8>,
    pub values: Vec<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    Point(Vec<u8>),
    /// `[start, end)`.
    Span {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

impl KeyRange {
    /// True if the range reads rows in primary key order from the first (always).
    pub fn is_point(&self) -> bool {
        matches!(self, KeyRange::Point(_))
    }
}

/// Decodes the row stored at `key`.
pub fn decode(table: &TableDescriptor, key: Vec<u8>, stored: Vec<u8>) -> Result<Row, SqlError> {
    let key_values = decode_row_key(table.id, &key, table.primary_key.len())?;
    let mut by_id = decode_row(&stored)?;
    let mut values = vec![Value::Null; table.columns.len()];
    for (position, &index) in table.primary_key.iter().enumerate() {
        values[index] = key_values[position].clone();
    }
    for (index, column) in table.columns.iter().enumerate() {
        if !table.is_key_column(index) {
            if let Some(value) = by_id.remove(&column.id) {
                values[index] = value;
            }
        }
    }
    Ok(Row {
        key,
        stored,
        values,
    })
}

/// The key and stored value of a row of `table` with `values` (in table order).
pub fn encode(table: &TableDescriptor, values: &[Value]) -> Result<(Vec<u8>, Vec<u8>), SqlError> {
    let key_values: Vec<&Value> = table.primary_key.iter().map(|&i| &values[i]).collect();
    let key = encoding::row_key(table.id, &key_values);
    let others: BTreeMap<u32, Value> = table
        .columns
        .iter()
        .enumerate()
        .filter(|(index, _)| !table.is_key_column(*index))
        .map(|(index, column)| (column.id, values[index].clone()))
        .collect();
    Ok((key, encoding::encode_row(&others)?))
}

/// A bound on one key column from a conjunct.
#[derive(Default, Clone)]
struct Bounds {
    equal: Option<Value>,
    lower: Option<(Value, bool)>,
    upper: Option<(Value, bool)>,
}

fn conjuncts<'a>(filter: &'a Scalar, out: &mut Vec<&'a Scalar>) {
    match filter {
        Scalar::And(left, right) => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        other => out.push(other),
    }
}

/// Rows a page's filter evaluates between two yields to the runtime.
const ROWS_BETWEEN_YIELDS: usize = 16;

/// 2^53: from here on, not every INT has a float of its own.
const MAX_EXACT_INT_FLOAT: f64 = 9_007_199_254_740_992.0;

/// The keys of `table` that rows matching `filter` can have.
pub fn plan_range(table: &TableDescriptor, filter: Option<&Scalar>) -> KeyRange {
    let mut bounds = vec![Bounds::default(); table.columns.len()];
    let mut parts = Vec::new();
    if let Some(filter) = filter {
        conjuncts(filter, &mut parts);
    }
    for part in parts {
        let (index, compare, value) = match part {
            Scalar::Compare(left, compare, right) => match (&**left, &**right) {
                (Scalar::Column(i), Scalar::Literal(v)) => (*i, *compare, v),
                (Scalar::Literal(v), Scalar::Column(i)) => (*i, compare.flipped(), v),
                _ => continue,
            },
            _ => continue,
        };
        let column = &table.columns[index];
        // INT against FLOAT compares as floats, which above 2^53 cannot tell neighbouring
        // INTs apart: such a literal would bound the range more tightly than the filter
        // matches, so it leaves the range alone.
        if matches!(value, Value::Float(f) if f.abs() >= MAX_EXACT_INT_FLOAT)
            && column.column_type == ColumnType::Int
        {
            continue;
        }
        // A literal that does not fit the column's type (1.5 against an INT) leaves the
        // range alone; the filter decides.
        let Ok(value) = value.clone().coerce(column.column_type, &column.name) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        let bound = &mut bounds[index];
        match compare {
            Compare::Eq => bound.equal = bound.equal.take().or(Some(value)),
            Compare::Gt | Compare::GtEq if bound.lower.is_none() => {
                bound.lower = Some((value, compare == Compare::GtEq));
            }
            Compare::Lt | Compare::LtEq if bound.upper.is_none() => {
                bound.upper = Some((value, compare == Compare::LtEq));
            }
            _ => {}
        }
    }
    let mut prefix = table_prefix(table.id);
    for (position, &index) in table.primary_key.iter().enumerate() {
        if let Some(value) = &bounds[index].equal {
            encoding::encode_key_value(value, &mut prefix);
            if position + 1 == table.primary_key.len() {
                return KeyRange::Point(prefix);
            }
            continue;
        }
        let with = |value: &Value| {
            let mut key = prefix.clone();
            encoding::encode_key_value(value, &mut key);
            key
        };
        let start = match &bounds[index].lower {
            Some((value, true)) => with(value),
            Some((value, false)) => prefix_end(&with(value)),
            None => prefix.clone(),
        };
        let end = match &bounds[index].upper {
            Some((value, true)) => prefix_end(&with(value)),
            Some((value, false)) => with(value),
            None => prefix_end(&prefix),
        };
        return KeyRange::Span { start, end };
    }
    let end = prefix_end(&prefix);
    KeyRange::Span { start: prefix, end }
}

/// Reads the rows of a range page by page, keeping those `filter` holds for.
#[derive(Debug)]
pub struct Cursor<'a> {
    table: &'a TableDescriptor,
    filter: Option<&'a Scalar>,
    range: KeyRange,
    /// Where the next page starts; `None` once done.
    from: Option<Vec<u8>>,
}

impl<'a> Cursor<'a> {
    pub fn new(table: &'a TableDescriptor, filter: Option<&'a Scalar>) -> Self {
        let range = plan_range(table, filter);
        // No stored key is longer than the cluster's limit, and no request may name one.
        let from = match &range {
            // So a longer point holds nothing,
            KeyRange::Point(key) if key.len() > MAX_KEY_BYTES => None,
            KeyRange::Point(key) => Some(key.clone()),
            // and a longer start reads from its first MAX_KEY_BYTES bytes: a few keys
            // more, which the filter then drops.
            KeyRange::Span { start, .. } => Some(start[..start.len().min(MAX_KEY_BYTES)].to_vec()),
        };
        Cursor {
            table,
            filter,
            range,
            from,
        }
    }

    pub fn range(&self) -> &KeyRange {
        &self.range
    }

    /// The next page of matching rows (maybe empty); `None` once the range is read.
    pub async fn next_page(&mut self, store: &Store) -> Result<Option<Vec<Row>>, SqlError> {
        let Some(from) = self.from.take() else {
            return Ok(None);
        };
        let items = match &self.range {
            KeyRange::Point(key) => store
                .get(key)
                .await?
                .map(|stored| vec![(key.clone(), stored)])
                .unwrap_or_default(),
            KeyRange::Span { end, .. } => {
                let items = store.scan(&from, end, PAGE_ROWS).await?;
                if items.len() == PAGE_ROWS {
                    self.from = items.last().and_then(|(key, _)| key_after(key));
                }
                items
            }
        };
        let mut rows = Vec::with_capacity(items.len());
        for (position, (key, stored)) in items.into_iter().enumerate() {
            // A filter can be slow (a LIKE may take tens of milliseconds on a long value):
            // yielding now and then lets Ctrl-C, waiting beside the statement, be heard
            // within a page rather than after it.
            if position % ROWS_BETWEEN_YIELDS == ROWS_BETWEEN_YIELDS - 1 {
                tokio::task::yield_now().await;
            }
            let row = decode(self.table, key, stored)?;
            let keep = match self.filter {
                Some(filter) => filter.holds(&row.values)?,
                None => true,
            };
            if keep {
                rows.push(row);
            }
        }
        Ok(Some(rows))
    }
}
