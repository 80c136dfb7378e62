//! `CREATE TABLE [IF NOT EXISTS] t (col TYPE [PRIMARY KEY] [NOT NULL] [NULL] [DEFAULT v],
//! ..., [PRIMARY KEY (a, b)])`.

use sqlparser::ast::{self, ColumnOption, DataType, TableConstraint};

use super::expr::{bind, ident_name, Scope};
use super::{table_name, Outcome};
use crate::catalog::{self, ColumnDescriptor, TableDescriptor, TableState};
use crate::error::SqlError;
use crate::store::Store;
use crate::value::ColumnType;

/// Columns per table at most.
pub const MAX_COLUMNS: usize = 256;

#[derive(Clone, Debug)]
pub struct CreateTable {
    pub if_not_exists: bool,
    pub table: TableDescriptor,
}

pub fn column_type(data_type: &DataType) -> Result<ColumnType, SqlError> {
    Ok(match data_type {
        DataType::Int(_)
        | DataType::Integer(_)
        | DataType::BigInt(_)
        | DataType::SmallInt(_)
        | DataType::Int4(_)
        | DataType::Int8(_)
        | DataType::Int64 => ColumnType::Int,
        DataType::Float(_)
        | DataType::Double(_)
        | DataType::DoublePrecision
        | DataType::Real
        | DataType::Float4
        | DataType::Float8
        | DataType::Float64 => ColumnType::Float,
        DataType::Text | DataType::Varchar(_) | DataType::String(_) | DataType::Char(_) => {
            ColumnType::Text
        }
        DataType::Bool | DataType::Boolean => ColumnType::Bool,
        DataType::Bytea | DataType::Bytes(_) | DataType::Blob(_) | DataType::Varbinary(_) => {
            ColumnType::Bytes
        }
        other => {
            return Err(SqlError::Unsupported(format!(
                "the type {other} (INT, BIGINT, FLOAT, DOUBLE, TEXT, VARCHAR, BOOL, BYTES)"
            )))
        }
    })
}

impl CreateTable {
    pub fn from_ast(create: ast::CreateTable) -> Result<Self, SqlError> {
        if create.or_replace || create.temporary || create.query.is_some() || create.like.is_some()
        {
            return Err(SqlError::Unsupported(
                "CREATE TABLE with OR REPLACE, TEMPORARY, AS or LIKE".to_string(),
            ));
        }
        let name = table_name(&create.name)?;
        if create.columns.is_empty() {
            return Err(SqlError::Constraint(format!("table {name} needs columns")));
        }
        if create.columns.len() > MAX_COLUMNS {
            return Err(SqlError::Limit(format!(
                "{} columns is over the limit of {MAX_COLUMNS}",
                create.columns.len()
            )));
        }
        let mut columns: Vec<ColumnDescriptor> = Vec::new();
        let mut primary_key: Vec<usize> = Vec::new();
        let mut key_given_by_column = false;
        for (index, column) in create.columns.iter().enumerate() {
            let column_name = ident_name(&column.name);
            if columns.iter().any(|c| c.name == column_name) {
                return Err(SqlError::Constraint(format!(
                    "column {column_name} is named twice"
                )));
            }
            let column_type = column_type(&column.data_type)?;
            let mut descriptor = ColumnDescriptor {
                id: index as u32 + 1,
                name: column_name.clone(),
                column_type,
                nullable: true,
                default: None,
            };
            for option in &column.options {
                match &option.option {
                    ColumnOption::Null => descriptor.nullable = true,
                    ColumnOption::NotNull => descriptor.nullable = false,
                    ColumnOption::Default(expr) => {
                        let value = bind(expr, Scope::NONE)?.constant()?;
                        descriptor.default = Some(value.coerce(column_type, &column_name)?);
                    }
                    ColumnOption::PrimaryKey(_) => {
                        if !primary_key.is_empty() {
                            return Err(SqlError::Constraint(
                                "only one PRIMARY KEY per table".to_string(),
                            ));
                        }
                        primary_key.push(index);
                        key_given_by_column = true;
                    }
                    other => {
                        return Err(SqlError::Unsupported(format!("the column option {other}")))
                    }
                }
            }
            columns.push(descriptor);
        }
        for constraint in &create.constraints {
            match constraint {
                TableConstraint::PrimaryKey(key) => {
                    if key_given_by_column || !primary_key.is_empty() {
                        return Err(SqlError::Constraint(
                            "only one PRIMARY KEY per table".to_string(),
                        ));
                    }
                    for part in &key.columns {
                        let column = match &part.column.expr {
                            ast::Expr::Identifier(ident) => ident_name(ident),
                            other => {
                                return Err(SqlError::Unsupported(format!("the key part {other}")))
                            }
                        };
                        let index =
                            columns
                                .iter()
                                .position(|c| c.name == column)
                                .ok_or_else(|| {
                                    SqlError::UnknownColumn(format!(
                                        "key column {column} does not exist"
                                    ))
                                })?;
                        if primary_key.contains(&index) {
                            return Err(SqlError::Constraint(format!(
                                "column {column} is in the primary key twice"
                            )));
                        }
                        primary_key.push(index);
                    }
                }
                other => return Err(SqlError::Unsupported(format!("the constraint {other}"))),
            }
        }
        if primary_key.is_empty() {
            return Err(SqlError::Constraint(format!(
                "table {name} needs a PRIMARY KEY (rows are stored by it)"
            )));
        }
        for &index in &primary_key {
            columns[index].nullable = false;
        }
        Ok(CreateTable {
            if_not_exists: create.if_not_exists,
            table: TableDescriptor {
                id: 0,
                name,
                columns,
                primary_key,
                state: TableState::Public,
            },
        })
    }

    pub async fn execute(self, store: &Store) -> Result<Outcome, SqlError> {
        let name = self.table.name.clone();
        match catalog::create(store, self.table).await? {
            Some(_) => Ok(Outcome::status("CREATE TABLE")),
            None if self.if_not_exists => Ok(Outcome::Status {
                tag: "CREATE TABLE".to_string(),
                notes: vec![format!("table {name} already exists, skipping")],
            }),
            None => Err(SqlError::TableExists(name)),
        }
    }
}
