//! The interactive loop (rustyline): multi-line statements ending with `;`, one history
//! entry per statement (kept in a file), tab completion of keywords, tables and columns,
//! meta commands, and Ctrl-C to cancel the running statement or the current input.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};
use tokio::runtime::Runtime;

use crate::catalog;
use crate::session::{error_text, execute_cancellable, timing_line, Meta, Session, CANCELLED};
use crate::sql::{input_is_complete, split_statements};

const PROMPT: &str = "rshard> ";
/// History entries kept.
const MAX_HISTORY_ENTRIES: usize = 10_000;

const KEYWORDS: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "NULL", "IS", "IN", "BETWEEN", "LIKE", "ORDER",
    "BY", "ASC", "DESC", "LIMIT", "OFFSET", "INSERT", "INTO", "VALUES", "UPSERT", "UPDATE", "SET",
    "DELETE", "CREATE", "TABLE", "DROP", "IF", "EXISTS", "PRIMARY", "KEY", "DEFAULT", "INT",
    "BIGINT", "FLOAT", "DOUBLE", "TEXT", "VARCHAR", "BOOL", "BYTES", "ON", "CONFLICT", "DO",
    "NOTHING", "EXCLUDED", "COUNT", "MIN", "MAX", "SUM", "AVG", "SHOW", "TABLES", "COLUMNS",
    "SHARDS", "NODES", "ALTER", "SPLIT", "AT", "SHARD", "RELOCATE", "TO", "TRANSFER", "LEADER",
    "MERGE", "TRUE", "FALSE", "GET", "PUT", "DEL", "SCAN",
];

/// Completion, and the rule that input is complete at a `;` (or a meta command).
#[derive(Debug)]
struct ShellHelper {
    /// Table and column names, refreshed after schema changes.
    names: Arc<Mutex<Vec<String>>>,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let prefix = &before[start..];
        if prefix.is_empty() {
            return Ok((start, Vec::new()));
        }
        let lower = prefix.chars().all(|c| !c.is_uppercase());
        let upper_prefix = prefix.to_uppercase();
        let mut candidates: Vec<Pair> = KEYWORDS
            .iter()
            .filter(|k| k.starts_with(&upper_prefix))
            .map(|k| {
                let word = if lower {
                    k.to_lowercase()
                } else {
                    k.to_string()
                };
                Pair {
                    display: word.clone(),
                    replacement: word,
                }
            })
            .collect();
        let names = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        candidates.extend(
            names
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .map(|n| Pair {
                    display: n.clone(),
                    replacement: n,
                }),
        );
        candidates.sort_by(|a, b| a.display.cmp(&b.display));
        candidates.dedup_by(|a, b| a.display == b.display);
        Ok((start, candidates))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}

impl Highlighter for ShellHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _: bool) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Validator for ShellHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        let input = ctx.input();
        if input.trim_start().starts_with('\\') || input_is_complete(input) {
            Ok(ValidationResult::Valid(None))
        } else {
            Ok(ValidationResult::Incomplete)
        }
    }
}

impl Helper for ShellHelper {}

/// The history file: `$RSHARD_HISTORY`, or `~/.rshard_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RSHARD_HISTORY") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".rshard_history"))
}

async fn refresh_names(session: &Session, names: &Mutex<Vec<String>>) {
    if let Ok(tables) = catalog::tables(&session.store).await {
        let mut all: Vec<String> = Vec::new();
        for table in tables {
            all.push(table.name.clone());
            all.extend(table.columns.into_iter().map(|c| c.name));
        }
        all.sort();
        all.dedup();
        if let Ok(mut names) = names.lock() {
            *names = all;
        }
    }
}

/// Runs the interactive loop until `\q` or Ctrl-D; the exit code.
pub fn run(mut session: Session, runtime: &Runtime, banner: &str) -> u8 {
    let config = rustyline::Config::builder()
        .max_history_size(MAX_HISTORY_ENTRIES)
        .map(|b| b.auto_add_history(false))
        .map(|b| b.build());
    let editor = match config {
        Ok(config) => Editor::<ShellHelper, FileHistory>::with_config(config),
        Err(error) => Err(error),
    };
    let mut editor = match editor {
        Ok(editor) => editor,
        Err(error) => {
            eprintln!("ERROR: cannot start the line editor: {error}");
            return 1;
        }
    };
    let names = Arc::new(Mutex::new(Vec::new()));
    runtime.block_on(refresh_names(&session, &names));
    editor.set_helper(Some(ShellHelper {
        names: Arc::clone(&names),
    }));
    let history = history_path();
    if let Some(path) = &history {
        // A missing history file is the normal first run.
        let _ = editor.load_history(path);
    }
    // Install the SIGINT handler now, not at the first statement: from here on a Ctrl-C
    // that lands between statements (while one is read back or its rows print) is
    // swallowed instead of ending the shell. It stays installed for the process's life.
    let installed = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    });
    if let Err(error) = installed {
        eprintln!("ERROR: cannot catch Ctrl-C: {error}");
        return 1;
    }
    print!("{banner}");
    loop {
        let input = match editor.readline(PROMPT) {
            Ok(input) => input,
            // Ctrl-C at the prompt drops what was typed.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(error) => {
                eprintln!("ERROR: reading input: {error}");
                break;
            }
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(trimmed);
        if let Some(path) = &history {
            let _ = editor.append_history(path);
        }
        let statements = if trimmed.starts_with('\\') {
            match session.meta(trimmed) {
                Meta::Quit => break,
                Meta::Print(text) => {
                    print!("{text}");
                    continue;
                }
                Meta::Run(statement) => vec![statement],
            }
        } else {
            // A rest the tokenizer could not read is run too, so that its error shows.
            let (mut statements, rest) = split_statements(trimmed);
            if !rest.is_empty() {
                statements.push(rest);
            }
            statements
        };
        for statement in statements {
            let started = Instant::now();
            // Ctrl-C while a statement runs arrives as SIGINT (the terminal is not in raw
            // mode then).
            let result = execute_cancellable(&session, runtime, &statement);
            match result {
                Some(Ok(outcome)) => {
                    print!(
                        "{}",
                        crate::render::render(&outcome, session.format, session.expanded)
                    );
                }
                Some(Err(error)) => eprint!("{}", error_text(&statement, &error)),
                None => {
                    eprintln!("{CANCELLED}");
                    break;
                }
            }
            if session.timing {
                print!("{}", timing_line(started.elapsed()));
            }
            let lower = statement.trim_start().to_lowercase();
            if lower.starts_with("create") || lower.starts_with("drop") {
                runtime.block_on(refresh_names(&session, &names));
            }
        }
    }
    0
}
