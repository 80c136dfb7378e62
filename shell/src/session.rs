//! A shell session: its store, its display settings, and the running of statement text and
//! meta commands. The REPL and the non-interactive runner share it.

use std::time::{Duration, Instant};

use crate::error::SqlError;
use crate::render::{render, Format};
use crate::sql::{self, Outcome};
use crate::store::Store;

pub const HELP: &str = "\
Statements end with ; and may span lines.
  CREATE TABLE t (id INT PRIMARY KEY, name TEXT NOT NULL, score FLOAT DEFAULT 0, ok BOOL, data BYTES)
  DROP TABLE [IF EXISTS] t
  INSERT INTO t [(cols)] VALUES (...), ... [ON CONFLICT [(key)] DO NOTHING | DO UPDATE SET c = EXCLUDED.c]
  UPSERT INTO t [(cols)] VALUES (...)
  SELECT cols | * | COUNT(*), MIN(c), MAX(c), SUM(c), AVG(c) FROM t [WHERE ...] [ORDER BY ...] [LIMIT n [OFFSET m]]
  UPDATE t SET c = expr [WHERE ...]        DELETE FROM t [WHERE ...]
  SHOW TABLES | SHOW COLUMNS FROM t | SHOW SHARDS [FROM TABLE t] | SHOW NODES
  ALTER TABLE t SPLIT AT VALUES (v), ...   ALTER SHARD n RELOCATE FROM a TO b
  ALTER SHARD n TRANSFER LEADER TO b       ALTER SHARD n MERGE
  GET 'key' | PUT 'key' 'value' | DEL 'key' | SCAN 'start' ['end'] [LIMIT n]   (raw keys, \\xNN escapes)
Meta commands:
  \\?  this help        \\q  quit             \\dt  tables        \\d t  columns of t
  \\shards  shards      \\nodes  nodes        \\timing  toggle timing    \\x  toggle expanded rows
Ctrl-C cancels the running statement or the current input; Ctrl-D quits.
";

#[derive(Debug)]
pub struct Session {
    pub store: Store,
    pub format: Format,
    pub expanded: bool,
    pub timing: bool,
    /// Print each statement before its result (for transcripts).
    pub echo: bool,
}

/// What a meta command asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Meta {
    Quit,
    /// Text to print.
    Print(String),
    /// A statement to run in its place.
    Run(String),
}

impl Session {
    pub fn new(store: Store, format: Format) -> Self {
        Session {
            store,
            format,
            expanded: false,
            timing: false,
            echo: false,
        }
    }

    /// Parses and runs one statement (no `;`).
    pub async fn execute(&self, text: &str) -> Result<Outcome, SqlError> {
        let statement = sql::parse(text)?;
        sql::execute(statement, &self.store).await
    }

    /// Runs one statement and renders what it printed, or its error.
    pub async fn run(&self, text: &str) -> Result<String, String> {
        let started = Instant::now();
        let result = self.execute(text).await;
        let elapsed = started.elapsed();
        match result {
            Ok(outcome) => {
                let mut out = render(&outcome, self.format, self.expanded);
                if self.timing {
                    out.push_str(&timing_line(elapsed));
                }
                Ok(out)
            }
            Err(error) => Err(error_text(text, &error)),
        }
    }

    /// A meta command (a line starting with a backslash).
    pub fn meta(&mut self, line: &str) -> Meta {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let argument = words.next();
        match (command, argument) {
            ("\\q", _) => Meta::Quit,
            ("\\?" | "\\h" | "\\help", _) => Meta::Print(HELP.to_string()),
            ("\\dt", _) => Meta::Run("SHOW TABLES".to_string()),
            ("\\d", Some(table)) => Meta::Run(format!("SHOW COLUMNS FROM {table}")),
            ("\\d", None) => Meta::Run("SHOW TABLES".to_string()),
            ("\\shards", _) => Meta::Run("SHOW SHARDS".to_string()),
            ("\\nodes", _) => Meta::Run("SHOW NODES".to_string()),
            ("\\timing", _) => {
                self.timing = !self.timing;
                Meta::Print(format!("Timing is {}.\n", on_off(self.timing)))
            }
            ("\\x", _) => {
                self.expanded = !self.expanded;
                Meta::Print(format!("Expanded display is {}.\n", on_off(self.expanded)))
            }
            (other, _) => Meta::Print(format!(
                "ERROR: unknown meta command {other} (\\? lists them)\n"
            )),
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// What a statement cancelled by Ctrl-C prints.
pub const CANCELLED: &str = "ERROR: cancelled (writes already acknowledged stay; an admin operation already started keeps running)";

/// Runs `statement` until it ends or Ctrl-C (SIGINT) cancels it (`None`), which drops the
/// statement's future: it stops between two requests to the cluster.
pub fn execute_cancellable(
    session: &Session,
    runtime: &tokio::runtime::Runtime,
    statement: &str,
) -> Option<Result<Outcome, SqlError>> {
    runtime.block_on(async {
        tokio::select! {
            result = session.execute(statement) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    })
}

pub fn timing_line(elapsed: Duration) -> String {
    format!("Time: {:.3} ms\n", elapsed.as_secs_f64() * 1000.0)
}

/// `ERROR: ...`, and for a syntax error with a position, the statement's line with a
/// caret under the position.
pub fn error_text(statement: &str, error: &SqlError) -> String {
    let mut text = format!("ERROR: {error}\n");
    if let SqlError::Syntax {
        position: Some((line, column)),
        ..
    } = error
    {
        if let Some(line_text) = statement.lines().nth(line.saturating_sub(1) as usize) {
            let column = column.saturating_sub(1) as usize;
            let shown: String = line_text.chars().take(200).collect();
            if column <= shown.chars().count() {
                text.push_str(&format!("LINE {line}: {shown}\n"));
                let indent = format!("LINE {line}: ").len() + column;
                text.push_str(&format!("{}^\n", " ".repeat(indent)));
            }
        }
    }
    text
}
