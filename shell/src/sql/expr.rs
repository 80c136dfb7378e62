//! Scalar expressions: sqlparser's `Expr` bound to a table's columns ([`Scalar`]), and
//! their evaluation on a row under SQL's NULL rules.

use std::cmp::Ordering;

use sqlparser::ast::{self, BinaryOperator, Expr, UnaryOperator};

use crate::catalog::TableDescriptor;
use crate::error::SqlError;
use crate::value::{normal_float, Value};

/// Where names in an expression resolve.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// `None`: no columns (the VALUES of an INSERT).
    pub table: Option<&'a TableDescriptor>,
    /// The name the table goes by in the statement (an alias, or its name).
    pub qualifier: Option<&'a str>,
    /// `EXCLUDED.col` names the row an INSERT ... ON CONFLICT DO UPDATE proposed.
    pub excluded: bool,
}

impl<'a> Scope<'a> {
    pub const NONE: Scope<'static> = Scope {
        table: None,
        qualifier: None,
        excluded: false,
    };

    pub fn of(table: &'a TableDescriptor) -> Self {
        Scope {
            table: Some(table),
            qualifier: Some(&table.name),
            excluded: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl Compare {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Compare::Eq => ordering == Ordering::Equal,
            Compare::NotEq => ordering != Ordering::Equal,
            Compare::Lt => ordering == Ordering::Less,
            Compare::LtEq => ordering != Ordering::Greater,
            Compare::Gt => ordering == Ordering::Greater,
            Compare::GtEq => ordering != Ordering::Less,
        }
    }

    /// The comparison with its sides swapped (`1 < x` is `x > 1`).
    pub fn flipped(self) -> Self {
        match self {
            Compare::Lt => Compare::Gt,
            Compare::LtEq => Compare::GtEq,
            Compare::Gt => Compare::Lt,
            Compare::GtEq => Compare::LtEq,
            other => other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
    Concat,
}

/// A bound expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Literal(Value),
    Column(usize),
    Excluded(usize),
    Compare(Box<Scalar>, Compare, Box<Scalar>),
    Arithmetic(Box<Scalar>, Arithmetic, Box<Scalar>),
    And(Box<Scalar>, Box<Scalar>),
    Or(Box<Scalar>, Box<Scalar>),
    Not(Box<Scalar>),
    Negate(Box<Scalar>),
    IsNull(Box<Scalar>, bool),
    InList(Box<Scalar>, Vec<Scalar>, bool),
    Like {
        value: Box<Scalar>,
        pattern: Box<Scalar>,
        negated: bool,
        case_insensitive: bool,
    },
}

/// The name of a column as SQL folds it: unquoted names are lower-cased.
pub fn ident_name(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// A literal value.
pub fn literal(value: &ast::Value) -> Result<Value, SqlError> {
    Ok(match value {
        ast::Value::Number(text, _) => match text.parse::<i64>() {
            Ok(int) => Value::Int(int),
            Err(_) => Value::Float(normal_float(text.parse::<f64>().map_err(|_| {
                SqlError::Type(format!("{text} is not a number this shell can store"))
            })?)?),
        },
        ast::Value::SingleQuotedString(text)
        | ast::Value::EscapedStringLiteral(text)
        | ast::Value::DoubleQuotedString(text) => Value::Text(text.clone()),
        ast::Value::HexStringLiteral(hex) => Value::Bytes(parse_hex(hex)?),
        ast::Value::Boolean(b) => Value::Bool(*b),
        ast::Value::Null => Value::Null,
        other => {
            return Err(SqlError::Unsupported(format!("the literal {other}")));
        }
    })
}

fn parse_hex(hex: &str) -> Result<Vec<u8>, SqlError> {
    if !hex.len().is_multiple_of(2) {
        return Err(SqlError::Type(format!(
            "X'{hex}' has an odd number of hex digits"
        )));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| SqlError::Type(format!("X'{hex}' is not hexadecimal")))
        })
        .collect()
}

/// Binds `expr` in `scope`.
pub fn bind(expr: &Expr, scope: Scope<'_>) -> Result<Scalar, SqlError> {
    let boxed = |e: &Expr| bind(e, scope).map(Box::new);
    Ok(match expr {
        Expr::Value(value) => Scalar::Literal(literal(&value.value)?),
        Expr::Identifier(ident) => column(scope, None, ident)?,
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [qualifier, name] => column(scope, Some(qualifier), name)?,
            _ => {
                return Err(SqlError::UnknownColumn(format!(
                    "column {expr} does not exist"
                )))
            }
        },
        Expr::Nested(inner) => bind(inner, scope)?,
        Expr::BinaryOp { left, op, right } => {
            let (left, right) = (boxed(left)?, boxed(right)?);
            let compare = |c| Scalar::Compare(left.clone(), c, right.clone());
            let arithmetic = |a| Scalar::Arithmetic(left.clone(), a, right.clone());
            match op {
                BinaryOperator::Eq => compare(Compare::Eq),
                BinaryOperator::NotEq => compare(Compare::NotEq),
                BinaryOperator::Lt => compare(Compare::Lt),
                BinaryOperator::LtEq => compare(Compare::LtEq),
                BinaryOperator::Gt => compare(Compare::Gt),
                BinaryOperator::GtEq => compare(Compare::GtEq),
                BinaryOperator::Plus => arithmetic(Arithmetic::Add),
                BinaryOperator::Minus => arithmetic(Arithmetic::Subtract),
                BinaryOperator::Multiply => arithmetic(Arithmetic::Multiply),
                BinaryOperator::Divide => arithmetic(Arithmetic::Divide),
                BinaryOperator::Modulo => arithmetic(Arithmetic::Modulo),
                BinaryOperator::StringConcat => arithmetic(Arithmetic::Concat),
                BinaryOperator::And => Scalar::And(left, right),
                BinaryOperator::Or => Scalar::Or(left, right),
                other => return Err(SqlError::Unsupported(format!("the operator {other}"))),
            }
        }
        Expr::UnaryOp { op, expr } => match op {
            UnaryOperator::Not => Scalar::Not(boxed(expr)?),
            UnaryOperator::Minus => match &**expr {
                // -9223372036854775808 is a literal, not the negation of one too large. The
                // text decides: larger numbers round to the same float.
                Expr::Value(value) if matches!(&value.value, ast::Value::Number(text, _) if text == "9223372036854775808") => {
                    Scalar::Literal(Value::Int(i64::MIN))
                }
                // A negated number is a literal too, so that key ranges can use it.
                _ => match bind(expr, scope)? {
                    // -(-9223372036854775808) does not fit: Negate reports it when run.
                    Scalar::Literal(Value::Int(int)) if int != i64::MIN => {
                        Scalar::Literal(Value::Int(-int))
                    }
                    Scalar::Literal(Value::Float(float)) => {
                        Scalar::Literal(Value::Float(normal_float(-float)?))
                    }
                    inner => Scalar::Negate(Box::new(inner)),
                },
            },
            UnaryOperator::Plus => bind(expr, scope)?,
            other => return Err(SqlError::Unsupported(format!("the operator {other}"))),
        },
        Expr::IsNull(inner) => Scalar::IsNull(boxed(inner)?, false),
        Expr::IsNotNull(inner) => Scalar::IsNull(boxed(inner)?, true),
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let value = boxed(expr)?;
            let within = Scalar::And(
                Box::new(Scalar::Compare(value.clone(), Compare::GtEq, boxed(low)?)),
                Box::new(Scalar::Compare(value, Compare::LtEq, boxed(high)?)),
            );
            if *negated {
                Scalar::Not(Box::new(within))
            } else {
                within
            }
        }
        Expr::In {
            expr,
            target: ast::InTarget::List(list),
            negated,
            ..
        } => Scalar::InList(
            boxed(expr)?,
            list.iter()
                .map(|e| bind(e, scope))
                .collect::<Result<_, _>>()?,
            *negated,
        ),
        Expr::Like {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => Scalar::Like {
            value: boxed(expr)?,
            pattern: boxed(pattern)?,
            negated: *negated,
            case_insensitive: false,
        },
        Expr::ILike {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => Scalar::Like {
            value: boxed(expr)?,
            pattern: boxed(pattern)?,
            negated: *negated,
            case_insensitive: true,
        },
        Expr::Function(function) => {
            return Err(SqlError::Unsupported(format!(
                "the function {} here (aggregates go in a SELECT's column list)",
                function.name
            )))
        }
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::In { .. } => {
            return Err(SqlError::Unsupported("subqueries".to_string()))
        }
        other => return Err(SqlError::Unsupported(format!("the expression {other}"))),
    })
}

fn column(
    scope: Scope<'_>,
    qualifier: Option<&ast::Ident>,
    name: &ast::Ident,
) -> Result<Scalar, SqlError> {
    let name = ident_name(name);
    let qualifier = qualifier.map(ident_name);
    let Some(table) = scope.table else {
        return Err(SqlError::UnknownColumn(format!(
            "column {name} cannot be used here (only values can)"
        )));
    };
    let index = table.column_index(&name).ok_or_else(|| {
        SqlError::UnknownColumn(format!(
            "column {name} does not exist in table {}",
            table.name
        ))
    })?;
    match qualifier.as_deref() {
        None => Ok(Scalar::Column(index)),
        Some("excluded") if scope.excluded => Ok(Scalar::Excluded(index)),
        Some(q) if Some(q) == scope.qualifier || q == table.name => Ok(Scalar::Column(index)),
        Some(q) => Err(SqlError::UnknownColumn(format!(
            "{q}.{name}: there is no table {q} in this statement"
        ))),
    }
}

fn truth(value: &Value) -> Result<Option<bool>, SqlError> {
    match value {
        Value::Bool(b) => Ok(Some(*b)),
        Value::Null => Ok(None),
        other => Err(SqlError::Type(format!(
            "{} is not a boolean condition",
            other.literal()
        ))),
    }
}

fn from_truth(truth: Option<bool>) -> Value {
    truth.map_or(Value::Null, Value::Bool)
}

impl Scalar {
    /// The value on `row` (and the proposed row `excluded`, in ON CONFLICT DO UPDATE).
    pub fn eval(&self, row: &[Value], excluded: Option<&[Value]>) -> Result<Value, SqlError> {
        Ok(match self {
            Scalar::Literal(value) => value.clone(),
            Scalar::Column(index) => row.get(*index).cloned().unwrap_or(Value::Null),
            Scalar::Excluded(index) => excluded
                .and_then(|row| row.get(*index))
                .cloned()
                .unwrap_or(Value::Null),
            Scalar::Compare(left, compare, right) => {
                let ordering = left
                    .eval(row, excluded)?
                    .compare(&right.eval(row, excluded)?)?;
                from_truth(ordering.map(|o| compare.holds(o)))
            }
            Scalar::Arithmetic(left, op, right) => {
                arithmetic(left.eval(row, excluded)?, *op, right.eval(row, excluded)?)?
            }
            Scalar::And(left, right) => {
                let left = truth(&left.eval(row, excluded)?)?;
                if left == Some(false) {
                    return Ok(Value::Bool(false));
                }
                let right = truth(&right.eval(row, excluded)?)?;
                from_truth(match (left, right) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                })
            }
            Scalar::Or(left, right) => {
                let left = truth(&left.eval(row, excluded)?)?;
                if left == Some(true) {
                    return Ok(Value::Bool(true));
                }
                let right = truth(&right.eval(row, excluded)?)?;
                from_truth(match (left, right) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                })
            }
            Scalar::Not(inner) => from_truth(truth(&inner.eval(row, excluded)?)?.map(|b| !b)),
            Scalar::Negate(inner) => match inner.eval(row, excluded)? {
                Value::Int(i) => Value::Int(i.checked_neg().ok_or_else(overflow)?),
                Value::Float(f) => Value::Float(normal_float(-f)?),
                Value::Null => Value::Null,
                other => return Err(SqlError::Type(format!("cannot negate {}", other.literal()))),
            },
            Scalar::IsNull(inner, negated) => {
                Value::Bool(inner.eval(row, excluded)?.is_null() != *negated)
            }
            Scalar::InList(value, list, negated) => {
                let value = value.eval(row, excluded)?;
                let mut found = Some(false);
                for item in list {
                    match value.compare(&item.eval(row, excluded)?)? {
                        Some(Ordering::Equal) => {
                            found = Some(true);
                            break;
                        }
                        Some(_) => {}
                        None => found = None,
                    }
                }
                from_truth(found.map(|f| f != *negated))
            }
            Scalar::Like {
                value,
                pattern,
                negated,
                case_insensitive,
            } => match (value.eval(row, excluded)?, pattern.eval(row, excluded)?) {
                (Value::Null, _) | (_, Value::Null) => Value::Null,
                (Value::Text(value), Value::Text(pattern)) => {
                    let matched = if *case_insensitive {
                        like(&value.to_lowercase(), &pattern.to_lowercase())?
                    } else {
                        like(&value, &pattern)?
                    };
                    Value::Bool(matched != *negated)
                }
                (value, _) => {
                    return Err(SqlError::Type(format!(
                        "LIKE needs text, not {}",
                        value.literal()
                    )))
                }
            },
        })
    }

    /// True if the condition holds on `row` (NULL does not).
    pub fn holds(&self, row: &[Value]) -> Result<bool, SqlError> {
        Ok(truth(&self.eval(row, None)?)? == Some(true))
    }

    /// The value of an expression that names no column.
    pub fn constant(&self) -> Result<Value, SqlError> {
        self.eval(&[], None)
    }
}

fn overflow() -> SqlError {
    SqlError::Type("integer out of range (64-bit)".to_string())
}

fn arithmetic(left: Value, op: Arithmetic, right: Value) -> Result<Value, SqlError> {
    use Arithmetic::*;
    Ok(match (left, right) {
        (Value::Null, _) | (_, Value::Null) => Value::Null,
        (Value::Text(a), Value::Text(b)) if op == Concat => Value::Text(a + &b),
        (Value::Int(a), Value::Int(b)) => Value::Int(
            match op {
                Add => a.checked_add(b),
                Subtract => a.checked_sub(b),
                Multiply => a.checked_mul(b),
                Divide | Modulo if b == 0 => return Err(division_by_zero()),
                Divide => a.checked_div(b),
                Modulo => a.checked_rem(b),
                Concat => return Err(concat_error()),
            }
            .ok_or_else(overflow)?,
        ),
        (a @ (Value::Int(_) | Value::Float(_)), b @ (Value::Int(_) | Value::Float(_))) => {
            let as_float = |v: Value| match v {
                Value::Int(i) => i as f64,
                Value::Float(f) => f,
                _ => 0.0,
            };
            let (a, b) = (as_float(a), as_float(b));
            Value::Float(normal_float(match op {
                Add => a + b,
                Subtract => a - b,
                Multiply => a * b,
                Divide | Modulo if b == 0.0 => return Err(division_by_zero()),
                Divide => a / b,
                Modulo => a % b,
                Concat => return Err(concat_error()),
            })?)
        }
        (a, b) => {
            return Err(SqlError::Type(format!(
                "cannot compute {} {} {}",
                a.literal(),
                match op {
                    Add => "+",
                    Subtract => "-",
                    Multiply => "*",
                    Divide => "/",
                    Modulo => "%",
                    Concat => "||",
                },
                b.literal()
            )))
        }
    })
}

fn division_by_zero() -> SqlError {
    SqlError::Type("division by zero".to_string())
}

fn concat_error() -> SqlError {
    SqlError::Type("|| joins text only".to_string())
}

/// Steps one LIKE match may take. Matching is linear in practice but can take length of
/// value times length of pattern steps (`'aaa…a' LIKE '%aaa…ab'`), which on a 1 MiB row
/// would hold the statement for hours; past this it is an error.
const MAX_LIKE_STEPS: usize = 20_000_000;

/// SQL LIKE: `%` any run of characters, `_` one character; no escape character.
fn like(value: &str, pattern: &str) -> Result<bool, SqlError> {
    let value: Vec<char> = value.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    // Iterative matching with one backtrack point (the last %): linear in practice, never
    // exponential.
    let (mut v, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0;
    while v < value.len() {
        steps += 1;
        if steps > MAX_LIKE_STEPS {
            return Err(SqlError::Limit(format!(
                "LIKE took more than {MAX_LIKE_STEPS} steps on one value of {} characters; use a simpler pattern",
                value.len()
            )));
        }
        match pattern.get(p) {
            Some('%') => {
                star = Some((p, v));
                p += 1;
            }
            Some('_') => {
                v += 1;
                p += 1;
            }
            Some(c) if *c == value[v] => {
                v += 1;
                p += 1;
            }
            _ => match star {
                Some((star_p, star_v)) => {
                    p = star_p + 1;
                    v = star_v + 1;
                    star = Some((star_p, star_v + 1));
                }
                None => return Ok(false),
            },
        }
    }
    Ok(pattern[p..].iter().all(|c| *c == '%'))
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_matches_as_sql_does() {
        let like = |value: &str, pattern: &str| like(value, pattern).expect("within the budget");
        assert!(like("hello", "h%o"));
        assert!(like("hello", "%"));
        assert!(like("", "%"));
        assert!(!like("", "_"));
        assert!(like("hello", "_ell_"));
        assert!(!like("hello", "h%x"));
        assert!(like("abcabc", "%abc"));
        assert!(like("aaab", "%a%b"));
        assert!(!like("ab", "a"));
    }

    /// The worst case of the backtracking match ends in an error, not in hours.
    #[test]
    fn a_pathological_like_is_refused() {
        let value = "a".repeat(100_000);
        let pattern = format!("%{}b", "a".repeat(1_000));
        assert!(like(&value, &pattern).is_err());
        assert!(like(&value, "%a%a%").expect("linear"));
    }
}
