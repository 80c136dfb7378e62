//! `DELETE FROM t [WHERE cond]`: matching rows are read page by page and each deleted by a
//! compare-and-swap on the row as read; a row changed meanwhile is deleted only if the
//! condition still holds for it.

use sqlparser::ast;

use super::expr::{bind, Scope};
use super::insert::batch_note;
use super::scan::Cursor;
use super::update::{rewrite, Progress};
use super::{single_table, Outcome};
use crate::catalog;
use crate::error::SqlError;
use crate::store::Store;

#[derive(Clone, Debug)]
pub struct Delete {
    table: String,
    alias: Option<String>,
    selection: Option<ast::Expr>,
}

impl Delete {
    pub fn from_ast(delete: ast::Delete) -> Result<Self, SqlError> {
        if delete.using.is_some()
            || delete.returning.is_some()
            || !delete.order_by.is_empty()
            || delete.limit.is_some()
            || !delete.tables.is_empty()
        {
            return Err(SqlError::Unsupported(
                "DELETE with USING, RETURNING, ORDER BY or LIMIT".to_string(),
            ));
        }
        let from = match &delete.from {
            ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from) => from,
        };
        let (table, alias) = single_table(from)?;
        Ok(Delete {
            table,
            alias,
            selection: delete.selection,
        })
    }

    pub async fn execute(self, store: &Store) -> Result<Outcome, SqlError> {
        let table = catalog::table(store, &self.table).await?;
        let scope = Scope {
            qualifier: Some(self.alias.as_deref().unwrap_or(&table.name)),
            ..Scope::of(&table)
        };
        let filter = self
            .selection
            .as_ref()
            .map(|e| bind(e, scope))
            .transpose()?;
        let mut cursor = Cursor::new(&table, filter.as_ref());
        let mut progress = Progress::default();
        while let Some(page) = cursor.next_page(store).await? {
            rewrite(store, &table, filter.as_ref(), page, &mut progress, |_| {
                Ok(None)
            })
            .await?;
        }
        Ok(Outcome::Status {
            tag: format!("DELETE {}", progress.rows),
            notes: batch_note(progress.batches),
        })
    }
}
