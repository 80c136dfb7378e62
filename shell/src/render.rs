//! Output formats: aligned tables (psql style), CSV, TSV, JSON; and the expanded (`\x`)
//! record layout. Rendering is pure: a result in, text out.

use comfy_table::{
    CellAlignment, ContentArrangement, ContentLineStyle, LineStyle, Table, TableStyle,
};

use crate::sql::Outcome;
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Tsv,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "tsv" => Ok(Format::Tsv),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown format {other:?} (table, csv, tsv or json)"
            )),
        }
    }
}

const PSQL_STYLE: TableStyle = TableStyle::new()
    .header_lines(ContentLineStyle::none().junction('|'))
    .header_separator(LineStyle::none().fill('-').junction('+'))
    .content_lines(ContentLineStyle::none().junction('|'));

/// `outcome` as text in `format` (ends with a newline unless empty).
pub fn render(outcome: &Outcome, format: Format, expanded: bool) -> String {
    match outcome {
        Outcome::Status { tag, notes } => match format {
            Format::Json => {
                let json = serde_json::json!({"status": tag, "notes": notes});
                format!("{json}\n")
            }
            _ => {
                let mut text = format!("{tag}\n");
                for note in notes {
                    text.push_str(&format!("NOTE: {note}\n"));
                }
                text
            }
        },
        Outcome::Rows { columns, rows } => match format {
            Format::Table if expanded => expanded_records(columns, rows),
            Format::Table => table(columns, rows),
            Format::Csv => separated(columns, rows, ',', csv_field),
            Format::Tsv => separated(columns, rows, '\t', tsv_field),
            Format::Json => json(columns, rows),
        },
    }
}

fn row_count(rows: usize) -> String {
    if rows == 1 {
        "(1 row)\n".to_string()
    } else {
        format!("({rows} rows)\n")
    }
}

fn table(columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut table = Table::new();
    table
        .load_style(PSQL_STYLE)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(columns.to_vec());
    for row in rows {
        table.add_row(row.iter().map(Value::to_string).collect::<Vec<_>>());
    }
    for (index, _) in columns.iter().enumerate() {
        let numeric = rows
            .iter()
            .any(|r| matches!(r.get(index), Some(Value::Int(_) | Value::Float(_))))
            && rows.iter().all(|r| {
                matches!(
                    r.get(index),
                    Some(Value::Int(_) | Value::Float(_) | Value::Null)
                )
            });
        if numeric {
            if let Some(column) = table.column_mut(index) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    let mut text: String = table
        .to_string()
        .lines()
        .map(|line| format!("{}\n", line.trim_end()))
        .collect();
    text.push_str(&row_count(rows.len()));
    text
}

fn expanded_records(columns: &[String], rows: &[Vec<Value>]) -> String {
    let width = columns.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    let mut text = String::new();
    for (number, row) in rows.iter().enumerate() {
        text.push_str(&format!("-[ RECORD {} ]-\n", number + 1));
        for (column, value) in columns.iter().zip(row) {
            text.push_str(&format!("{column:<width$} | {value}\n"));
        }
    }
    text.push_str(&row_count(rows.len()));
    text
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn tsv_field(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn separated(
    columns: &[String],
    rows: &[Vec<Value>],
    separator: char,
    field: fn(&str) -> String,
) -> String {
    let line = |fields: Vec<String>| {
        let mut line = fields.join(&separator.to_string());
        line.push('\n');
        line
    };
    let mut text = line(columns.iter().map(|c| field(c)).collect());
    for row in rows {
        text.push_str(&line(
            row.iter()
                .map(|v| match v {
                    // NULL is an empty field; an empty string is quoted in CSV to differ.
                    Value::Null => String::new(),
                    Value::Text(t) if t.is_empty() && separator == ',' => "\"\"".to_string(),
                    other => field(&other.to_string()),
                })
                .collect(),
        ));
    }
    text
}

pub fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Int(i) => serde_json::json!(i),
        Value::Float(f) => serde_json::json!(f),
        Value::Bool(b) => serde_json::json!(b),
        Value::Text(_) | Value::Bytes(_) => serde_json::json!(value.to_string()),
    }
}

fn json(columns: &[String], rows: &[Vec<Value>]) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let object: serde_json::Map<String, serde_json::Value> = columns
                .iter()
                .zip(row)
                .map(|(c, v)| (c.clone(), json_value(v)))
                .collect();
            serde_json::Value::Object(object)
        })
        .collect();
    format!("{}\n", serde_json::Value::Array(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_psql() {
        let outcome = Outcome::Rows {
            columns: vec!["id".into(), "name".into()],
            rows: vec![
                vec![Value::Int(1), Value::Text("a".into())],
                vec![Value::Int(10), Value::Null],
            ],
        };
        assert_eq!(
            render(&outcome, Format::Table, false),
            " id | name\n----+------\n  1 | a\n 10 | NULL\n(2 rows)\n"
        );
        assert_eq!(render(&outcome, Format::Csv, false), "id,name\n1,a\n10,\n");
        assert_eq!(
            render(&outcome, Format::Json, false),
            "[{\"id\":1,\"name\":\"a\"},{\"id\":10,\"name\":null}]\n"
        );
    }
}
