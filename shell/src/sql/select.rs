//! `SELECT cols | * | aggregates FROM t [WHERE ...] [ORDER BY ...] [LIMIT n] [OFFSET m]`,
//! and `SELECT exprs` without a table.
//!
//! Rows come in primary key order from [`scan::Cursor`]; without ORDER BY (or with an
//! ORDER BY that is a leading part of the primary key, ascending) a LIMIT stops the scan
//! early. Other orders sort in memory, keeping only the first OFFSET+LIMIT rows when a
//! LIMIT is given; a result without LIMIT is bounded by [`MAX_RESULT_ROWS`]. Ties keep
//! primary key order. NULLs sort last ascending and first descending (as PostgreSQL).

use std::cmp::Ordering;

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, SelectItem, SetExpr,
};

use super::expr::{bind, ident_name, Scalar, Scope};
use super::scan::Cursor;
use super::{single_table, Outcome};
use crate::catalog;
use crate::error::SqlError;
use crate::store::Store;
use crate::value::{normal_float, Value};

/// Rows a result may hold (add a LIMIT for more of a larger table).
pub const MAX_RESULT_ROWS: usize = 100_000;

#[derive(Clone, Debug)]
pub struct Select {
    query: ast::Query,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AggregateKind {
    CountRows,
    Count,
    Min,
    Max,
    Sum,
    Avg,
}

#[derive(Clone, Debug)]
enum Item {
    Scalar(Scalar),
    Aggregate(AggregateKind, Option<Scalar>),
}

#[derive(Clone, Debug)]
enum SortKey {
    /// An output column, by position.
    Output(usize),
    Row(Scalar),
}

#[derive(Clone, Debug)]
struct Order {
    key: SortKey,
    descending: bool,
    nulls_first: bool,
}

fn unsupported(what: &str) -> SqlError {
    SqlError::Unsupported(what.to_string())
}

impl Select {
    pub fn from_ast(query: ast::Query) -> Result<Self, SqlError> {
        if query.with.is_some() || query.fetch.is_some() || !query.locks.is_empty() {
            return Err(unsupported("WITH, FETCH and FOR UPDATE"));
        }
        let SetExpr::Select(select) = &*query.body else {
            return Err(unsupported("UNION, VALUES and nested queries"));
        };
        if select.distinct.is_some() {
            return Err(unsupported("DISTINCT"));
        }
        if select.having.is_some()
            || !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        {
            return Err(unsupported(
                "GROUP BY and HAVING (aggregates apply to all rows)",
            ));
        }
        if select.into.is_some() || select.top.is_some() || !select.lateral_views.is_empty() {
            return Err(unsupported("SELECT INTO, TOP and LATERAL VIEW"));
        }
        if let Some(ast::LimitClause::LimitOffset { limit_by, .. }) = &query.limit_clause {
            if !limit_by.is_empty() {
                return Err(unsupported("LIMIT BY"));
            }
        }
        Ok(Select { query })
    }

    pub async fn execute(self, store: &Store) -> Result<Outcome, SqlError> {
        let SetExpr::Select(select) = &*self.query.body else {
            return Err(unsupported("UNION, VALUES and nested queries"));
        };
        let (limit, offset) = limits(&self.query)?;
        let table = if select.from.is_empty() {
            None
        } else {
            let (name, alias) = single_table(&select.from)?;
            Some((catalog::table(store, &name).await?, alias))
        };
        let scope = match &table {
            Some((table, alias)) => Scope {
                qualifier: Some(alias.as_deref().unwrap_or(&table.name)),
                ..Scope::of(table)
            },
            None => Scope::NONE,
        };
        let mut names = Vec::new();
        let mut items = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    let Some((table, _)) = &table else {
                        return Err(unsupported("* without a table"));
                    };
                    for (index, column) in table.columns.iter().enumerate() {
                        names.push(column.name.clone());
                        items.push(Item::Scalar(Scalar::Column(index)));
                    }
                }
                SelectItem::UnnamedExpr(expr) => {
                    names.push(output_name(expr));
                    items.push(item_of(expr, scope)?);
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    names.push(ident_name(alias));
                    items.push(item_of(expr, scope)?);
                }
                SelectItem::ExprWithAliases { .. } => return Err(unsupported("several aliases")),
            }
        }
        let aggregates = items
            .iter()
            .filter(|i| matches!(i, Item::Aggregate(..)))
            .count();
        if aggregates > 0 && aggregates < items.len() {
            return Err(SqlError::Unsupported(
                "mixing aggregates with plain columns (GROUP BY is not supported)".to_string(),
            ));
        }
        let filter = select
            .selection
            .as_ref()
            .map(|e| bind(e, scope))
            .transpose()?;
        let orders = match &self.query.order_by {
            None => Vec::new(),
            Some(order_by) => match &order_by.kind {
                ast::OrderByKind::Expressions(exprs) => exprs
                    .iter()
                    .map(|e| order_of(e, &names, &items, scope))
                    .collect::<Result<Vec<_>, _>>()?,
                ast::OrderByKind::All(_) => return Err(unsupported("ORDER BY ALL")),
            },
        };
        let Some((table, _)) = &table else {
            // No table: one row of constants (a WHERE may still drop it).
            let keep = match &filter {
                Some(f) => f.holds(&[])?,
                None => true,
            };
            let row = items
                .iter()
                .map(|item| match item {
                    Item::Scalar(s) => s.constant(),
                    Item::Aggregate(..) => Err(unsupported("aggregates without a table")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let rows = if keep { vec![row] } else { Vec::new() };
            return Ok(Outcome::Rows {
                columns: names,
                rows: window(rows, offset, limit),
            });
        };
        let mut cursor = Cursor::new(table, filter.as_ref());
        if aggregates > 0 {
            let mut states: Vec<Aggregate> = items
                .iter()
                .map(|item| match item {
                    Item::Aggregate(kind, arg) => Aggregate::new(*kind, arg.clone()),
                    Item::Scalar(_) => Aggregate::new(AggregateKind::CountRows, None),
                })
                .collect();
            while let Some(page) = cursor.next_page(store).await? {
                for row in page {
                    for state in &mut states {
                        state.add(&row.values)?;
                    }
                }
            }
            let row = states
                .into_iter()
                .map(Aggregate::finish)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Outcome::Rows {
                columns: names,
                rows: window(vec![row], offset, limit),
            });
        }
        // ORDER BY a leading part of the primary key, ascending, is scan order.
        let scan_ordered = orders.iter().enumerate().all(|(position, order)| {
            !order.descending
                && !order.nulls_first
                && matches!(&order.key, SortKey::Row(Scalar::Column(c)) if table.primary_key.get(position) == Some(c))
        });
        // In scan order the OFFSET rows are passed over as they come, never held.
        let mut to_skip = if scan_ordered { offset } else { 0 };
        let offset = offset - to_skip;
        // Rows worth holding: at most OFFSET + LIMIT once sorted, if that is a result size
        // this shell returns; otherwise every row, up to the result limit.
        let wanted = limit
            .map(|l| l.saturating_add(offset))
            .filter(|&wanted| wanted <= MAX_RESULT_ROWS);
        let mut rows: Vec<(Vec<Value>, Vec<Value>)> = Vec::new();
        'scan: while let Some(page) = cursor.next_page(store).await? {
            for row in page {
                if to_skip > 0 {
                    to_skip -= 1;
                    continue;
                }
                let output = items
                    .iter()
                    .map(|item| match item {
                        Item::Scalar(s) => s.eval(&row.values, None),
                        Item::Aggregate(..) => Err(unsupported("an aggregate here")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let keys = if scan_ordered {
                    Vec::new()
                } else {
                    orders
                        .iter()
                        .map(|order| match &order.key {
                            SortKey::Output(i) => Ok(output[*i].clone()),
                            SortKey::Row(s) => s.eval(&row.values, None),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                };
                rows.push((keys, output));
                match wanted {
                    Some(wanted) if scan_ordered && rows.len() >= wanted => break 'scan,
                    Some(wanted) if rows.len() >= (wanted.saturating_mul(2)).max(10_000) => {
                        sort(&mut rows, &orders);
                        rows.truncate(wanted);
                    }
                    Some(_) => {}
                    None if rows.len() > MAX_RESULT_ROWS => {
                        return Err(SqlError::Limit(format!(
                            "the result has more than {MAX_RESULT_ROWS} rows; add a LIMIT or a narrower WHERE"
                        )))
                    }
                    _ => {}
                }
            }
        }
        if !scan_ordered {
            sort(&mut rows, &orders);
        }
        let rows = rows.into_iter().map(|(_, output)| output).collect();
        Ok(Outcome::Rows {
            columns: names,
            rows: window(rows, offset, limit),
        })
    }
}

fn window(rows: Vec<Vec<Value>>, offset: usize, limit: Option<usize>) -> Vec<Vec<Value>> {
    rows.into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect()
}

fn sort(rows: &mut [(Vec<Value>, Vec<Value>)], orders: &[Order]) {
    rows.sort_by(|(a, _), (b, _)| {
        for (order, (a, b)) in orders.iter().zip(a.iter().zip(b)) {
            let ordering = match (a.is_null(), b.is_null()) {
                (true, true) => Ordering::Equal,
                (true, false) if order.nulls_first => Ordering::Less,
                (true, false) => Ordering::Greater,
                (false, true) if order.nulls_first => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) if order.descending => b.sort_order(a),
                (false, false) => a.sort_order(b),
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        Ordering::Equal
    });
}

fn constant_count(expr: &Expr, what: &str) -> Result<usize, SqlError> {
    match bind(expr, Scope::NONE)?.constant()? {
        Value::Int(n) if n >= 0 => Ok(n as usize),
        other => Err(SqlError::Type(format!(
            "{what} must be a non-negative integer, not {}",
            other.literal()
        ))),
    }
}

fn limits(query: &ast::Query) -> Result<(Option<usize>, usize), SqlError> {
    match &query.limit_clause {
        None => Ok((None, 0)),
        Some(ast::LimitClause::LimitOffset { limit, offset, .. }) => {
            let limit = limit
                .as_ref()
                .map(|e| constant_count(e, "LIMIT"))
                .transpose()?;
            let offset = offset
                .as_ref()
                .map(|o| constant_count(&o.value, "OFFSET"))
                .transpose()?
                .unwrap_or(0);
            Ok((limit, offset))
        }
        Some(ast::LimitClause::OffsetCommaLimit { offset, limit }) => Ok((
            Some(constant_count(limit, "LIMIT")?),
            constant_count(offset, "OFFSET")?,
        )),
    }
}

fn output_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => ident_name(ident),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        Expr::Function(function) => function.name.to_string().to_lowercase(),
        _ => "?column?".to_string(),
    }
}

fn item_of(expr: &Expr, scope: Scope<'_>) -> Result<Item, SqlError> {
    let Expr::Function(function) = expr else {
        return Ok(Item::Scalar(bind(expr, scope)?));
    };
    let name = function.name.to_string().to_lowercase();
    let kind = match name.as_str() {
        "count" => AggregateKind::Count,
        "min" => AggregateKind::Min,
        "max" => AggregateKind::Max,
        "sum" => AggregateKind::Sum,
        "avg" => AggregateKind::Avg,
        _ => {
            return Err(SqlError::Unsupported(format!(
                "the function {name} (COUNT, MIN, MAX, SUM and AVG are)"
            )))
        }
    };
    if function.over.is_some() || function.filter.is_some() || !function.within_group.is_empty() {
        return Err(unsupported("window functions, FILTER and WITHIN GROUP"));
    }
    let args = match &function.args {
        FunctionArguments::List(list)
            if list.duplicate_treatment.is_none() && list.clauses.is_empty() =>
        {
            &list.args
        }
        _ => return Err(SqlError::Unsupported(format!("this call of {name}"))),
    };
    match (kind, args.as_slice()) {
        (AggregateKind::Count, [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]) => {
            Ok(Item::Aggregate(AggregateKind::CountRows, None))
        }
        (kind, [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))]) => {
            Ok(Item::Aggregate(kind, Some(bind(arg, scope)?)))
        }
        _ => Err(SqlError::Unsupported(format!(
            "{name} with these arguments"
        ))),
    }
}

/// The sort key of output column `position`: the table column itself when that is what
/// the column shows, so that ORDER BY the primary key is recognised as scan order.
fn output_key(position: usize, items: &[Item]) -> SortKey {
    match items.get(position) {
        Some(Item::Scalar(column @ Scalar::Column(_))) => SortKey::Row(column.clone()),
        _ => SortKey::Output(position),
    }
}

fn order_of(
    expr: &ast::OrderByExpr,
    names: &[String],
    items: &[Item],
    scope: Scope<'_>,
) -> Result<Order, SqlError> {
    if expr.with_fill.is_some() {
        return Err(unsupported("WITH FILL"));
    }
    let descending = match &expr.options.sort {
        None | Some(ast::OrderBySort::Asc) => false,
        Some(ast::OrderBySort::Desc) => true,
        Some(ast::OrderBySort::Using(_)) => return Err(unsupported("ORDER BY ... USING")),
    };
    let nulls_first = expr.options.nulls_first.unwrap_or(descending);
    let key = match &expr.expr {
        // ORDER BY 2: the second output column.
        Expr::Value(value) => match super::expr::literal(&value.value)? {
            Value::Int(n) if n >= 1 && (n as usize) <= names.len() => {
                output_key(n as usize - 1, items)
            }
            other => {
                return Err(SqlError::Type(format!(
                    "ORDER BY {}: there is no output column at that position",
                    other.literal()
                )))
            }
        },
        // A bare name is an output column's first, then the table's (as in PostgreSQL:
        // `SELECT -v AS v ... ORDER BY v` sorts by the negated value).
        Expr::Identifier(ident) => {
            let name = ident_name(ident);
            match names.iter().position(|n| *n == name) {
                Some(position) => output_key(position, items),
                None => SortKey::Row(bind(&expr.expr, scope)?),
            }
        }
        other => SortKey::Row(bind(other, scope)?),
    };
    Ok(Order {
        key,
        descending,
        nulls_first,
    })
}

#[derive(Debug)]
struct Aggregate {
    kind: AggregateKind,
    arg: Option<Scalar>,
    count: u64,
    int_sum: i128,
    float_sum: f64,
    saw_float: bool,
    extreme: Option<Value>,
}

impl Aggregate {
    fn new(kind: AggregateKind, arg: Option<Scalar>) -> Self {
        Aggregate {
            kind,
            arg,
            count: 0,
            int_sum: 0,
            float_sum: 0.0,
            saw_float: false,
            extreme: None,
        }
    }

    fn add(&mut self, row: &[Value]) -> Result<(), SqlError> {
        let Some(arg) = &self.arg else {
            self.count += 1;
            return Ok(());
        };
        let value = arg.eval(row, None)?;
        if value.is_null() {
            return Ok(());
        }
        self.count += 1;
        match self.kind {
            AggregateKind::CountRows | AggregateKind::Count => {}
            AggregateKind::Min | AggregateKind::Max => {
                let replace = match &self.extreme {
                    None => true,
                    Some(current) => {
                        let ordering = value.compare(current)?.unwrap_or(Ordering::Equal);
                        (self.kind == AggregateKind::Min && ordering == Ordering::Less)
                            || (self.kind == AggregateKind::Max && ordering == Ordering::Greater)
                    }
                };
                if replace {
                    self.extreme = Some(value);
                }
            }
            AggregateKind::Sum | AggregateKind::Avg => match value {
                Value::Int(i) => {
                    self.float_sum += i as f64;
                    // i128 holds the sum of 2^64 of the largest INTs, so only SUM's final
                    // value needs to fit 64 bits; a running total may pass through more.
                    self.int_sum = self.int_sum.checked_add(i128::from(i)).ok_or_else(|| {
                        SqlError::Type("SUM is out of the 128-bit integer range".to_string())
                    })?;
                }
                Value::Float(f) => {
                    self.saw_float = true;
                    self.float_sum += f;
                }
                other => {
                    return Err(SqlError::Type(format!(
                        "SUM and AVG need numbers, not {}",
                        other.literal()
                    )))
                }
            },
        }
        Ok(())
    }

    fn finish(self) -> Result<Value, SqlError> {
        Ok(match self.kind {
            AggregateKind::CountRows | AggregateKind::Count => Value::Int(self.count as i64),
            AggregateKind::Min | AggregateKind::Max => self.extreme.unwrap_or(Value::Null),
            _ if self.count == 0 => Value::Null,
            AggregateKind::Sum if self.saw_float => Value::Float(normal_float(self.float_sum)?),
            AggregateKind::Sum => Value::Int(i64::try_from(self.int_sum).map_err(|_| {
                SqlError::Type(format!(
                    "SUM is {}, out of the 64-bit integer range",
                    self.int_sum
                ))
            })?),
            AggregateKind::Avg if self.saw_float => {
                Value::Float(normal_float(self.float_sum / self.count as f64)?)
            }
            AggregateKind::Avg => {
                Value::Float(normal_float(self.int_sum as f64 / self.count as f64)?)
            }
        })
    }
}
