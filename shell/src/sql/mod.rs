//! SQL statements: text -> [`Statement`] (parse) -> plan -> execute -> [`Outcome`] (what
//! the shell renders). One module per statement kind; each owns its parse from the
//! sqlparser AST (or from tokens, for the statements sqlparser does not know), its plan
//! against the catalog, and its execution against the [`Store`].
//!
//! Text is split into statements at `;` outside quotes and comments ([`split_statements`]);
//! each statement is parsed alone, so an error names its own line and column.

pub mod admin;
pub mod create;
pub mod delete;
pub mod drop;
pub mod expr;
pub mod insert;
pub mod raw;
pub mod scan;
pub mod select;
pub mod tokens;
pub mod update;

use sqlparser::ast::{self, ObjectType};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};

use crate::error::SqlError;
use crate::store::Store;
use crate::value::Value;

/// Statements longer than this are refused before parsing.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;
/// Parser recursion (nested parentheses) allowed before a statement is refused.
const MAX_PARSE_DEPTH: usize = 64;

/// What a statement produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A result set.
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
    },
    /// A command's status line (`INSERT 3`, `CREATE TABLE`) and notes to print under it.
    Status { tag: String, notes: Vec<String> },
}

impl Outcome {
    pub fn status(tag: impl Into<String>) -> Self {
        Outcome::Status {
            tag: tag.into(),
            notes: Vec::new(),
        }
    }
}

/// One parsed statement.
#[derive(Clone, Debug)]
pub enum Statement {
    CreateTable(create::CreateTable),
    DropTable(drop::DropTable),
    Insert(insert::Insert),
    Select(Box<select::Select>),
    Update(update::Update),
    Delete(delete::Delete),
    Admin(admin::AdminStatement),
    Raw(raw::RawStatement),
}

/// Splits `text` into complete statements (without their `;`) and the unfinished rest.
/// Empty statements are dropped.
///
/// The split is sqlparser's own: a `;` ends a statement where its tokenizer (the one that
/// then parses each piece) reads a `;` token, never inside a string of any kind
/// (`'...'`, `E'...'`, `$$...$$`), a quoted name or a comment. A splitter of its own
/// would disagree somewhere, and there text inside a string would run as a statement.
/// Where the tokenizer fails (an unclosed string, say), the statements before the
/// failing token are complete and the rest is unfinished.
pub fn split_statements(text: &str) -> (Vec<String>, String) {
    let (statements, rest, _) = tokenized_split(text);
    (statements, rest)
}

/// Whether the REPL's input is complete: every statement ended by `;`, or a tokenizer
/// error that more input cannot mend (the parser then reports it). An unclosed string,
/// quoted name or comment asks for more lines.
pub fn input_is_complete(text: &str) -> bool {
    match tokenized_split(text) {
        (_, rest, None) => rest.is_empty(),
        (_, _, Some(error)) if error.contains("Unterminated") || error.contains("EOF") => false,
        (_, _, Some(_)) => text.trim_end().ends_with(';'),
    }
}

/// (complete statements, the unfinished rest, the tokenizer's error if it failed).
fn tokenized_split(text: &str) -> (Vec<String>, String, Option<String>) {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let mut tokens = Vec::new();
    let error = Tokenizer::new(&dialect(), text)
        .tokenize_with_location_into_buf(&mut tokens)
        .err()
        .map(|error| error.message);
    let mut statements = Vec::new();
    let mut start = 0;
    let mut position = TextPosition::default();
    // Whether the piece since the last `;` holds more than whitespace and comments.
    let mut meaningful = false;
    for token in &tokens {
        match token.token {
            Token::SemiColon => {
                let at = position.advance_to(text, token.span.start.line, token.span.start.column);
                if meaningful {
                    statements.push(text[start..at].trim().to_string());
                }
                start = (at + 1).min(text.len());
                meaningful = false;
            }
            Token::Whitespace(_) => {}
            _ => meaningful = true,
        }
    }
    // A failed tokenizer stopped at something after the last token: that is unfinished.
    let rest = if meaningful || error.is_some() {
        text[start..].trim().to_string()
    } else {
        String::new()
    };
    (statements, rest, error)
}

/// A byte offset into a text with the tokenizer's line and column (1-based; lines end at
/// `\n`, columns count characters), moved forward only, so that finding every `;` of a
/// text is one pass over it.
#[derive(Clone, Copy)]
struct TextPosition {
    line: u64,
    column: u64,
    byte: usize,
}

impl Default for TextPosition {
    fn default() -> Self {
        TextPosition {
            line: 1,
            column: 1,
            byte: 0,
        }
    }
}

impl TextPosition {
    /// The byte offset of (`line`, `column`), at or after the current position (the end
    /// of `text` if it lies beyond).
    fn advance_to(&mut self, text: &str, line: u64, column: u64) -> usize {
        while self.line < line {
            match text[self.byte..].find('\n') {
                Some(newline) => {
                    self.byte += newline + 1;
                    self.line += 1;
                    self.column = 1;
                }
                None => return text.len(),
            }
        }
        while self.column < column {
            match text[self.byte..].chars().next() {
                Some(c) => {
                    self.byte += c.len_utf8();
                    self.column += 1;
                }
                None => return text.len(),
            }
        }
        self.byte
    }
}

/// The length of a (nested) block comment's text after its opening `/*`, up to and
/// including its closing `*/`; `None` if it does not close.
fn block_comment_length(after_opening: &str) -> Option<usize> {
    let mut depth = 1;
    let mut index = 0;
    while index < after_opening.len() {
        let rest = &after_opening[index..];
        if rest.starts_with("/*") {
            depth += 1;
            index += 2;
        } else if rest.starts_with("*/") {
            depth -= 1;
            index += 2;
            if depth == 0 {
                return Some(index);
            }
        } else {
            index += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    None
}

/// True if `text` holds nothing but whitespace and comments (an unclosed block comment is
/// unfinished input, not blank).
pub fn is_blank(text: &str) -> bool {
    let mut rest = text.trim_start();
    loop {
        if rest.is_empty() {
            return true;
        }
        if let Some(after) = rest.strip_prefix("--") {
            match after.find(['\n', '\r']) {
                Some(end) => rest = after[end..].trim_start(),
                None => return true,
            }
        } else if let Some(after) = rest.strip_prefix("/*") {
            match block_comment_length(after) {
                Some(length) => rest = after[length..].trim_start(),
                None => return false,
            }
        } else {
            return false;
        }
    }
}

/// The dialect the shell speaks (its quoting and `ON CONFLICT` are PostgreSQL's).
pub fn dialect() -> PostgreSqlDialect {
    PostgreSqlDialect {}
}

/// A syntax error from sqlparser, with its position when the message gives one.
pub fn syntax_error(error: ParserError) -> SqlError {
    let message = match error {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => {
            return SqlError::Syntax {
                message: "the statement nests too deeply".to_string(),
                position: None,
            }
        }
    };
    // sqlparser ends its messages with " at Line: L, Column: C".
    let (message, position) = match message.rsplit_once(" at Line: ") {
        Some((head, tail)) => {
            let mut numbers = tail.split(", Column: ").map(|n| n.trim().parse::<u64>());
            match (numbers.next(), numbers.next()) {
                (Some(Ok(line)), Some(Ok(column))) => (head.to_string(), Some((line, column))),
                _ => (message, None),
            }
        }
        None => (message, None),
    };
    SqlError::Syntax { message, position }
}

/// Parses one statement (no `;`).
pub fn parse(text: &str) -> Result<Statement, SqlError> {
    if text.len() > MAX_STATEMENT_BYTES {
        return Err(SqlError::Limit(format!(
            "a statement of {} bytes is over the limit of {MAX_STATEMENT_BYTES}",
            text.len()
        )));
    }
    let words = tokens::Tokens::new(text)?;
    let first = words.word_at(0).unwrap_or_default();
    let second = words.word_at(1).unwrap_or_default();
    match (first.as_str(), second.as_str()) {
        ("GET" | "PUT" | "DEL" | "SCAN", _) => return raw::parse(words).map(Statement::Raw),
        ("SHOW", _) | ("ALTER", "SHARD") => {
            return admin::parse(words).map(Statement::Admin);
        }
        ("ALTER", "TABLE") if words.has_word("SPLIT") => {
            return admin::parse(words).map(Statement::Admin);
        }
        ("UPSERT", _) => {
            // UPSERT INTO ... is INSERT INTO ... that replaces rows with the same key.
            let offset = words.offset_of(0);
            let rewritten = format!("{}INSERT{}", &text[..offset], &text[offset + 6..]);
            let statement = parse_one(&rewritten)?;
            return match statement {
                ast::Statement::Insert(insert) => {
                    insert::Insert::from_ast(insert, true).map(Statement::Insert)
                }
                _ => Err(SqlError::Unsupported("this form of UPSERT".to_string())),
            };
        }
        _ => {}
    }
    let statement = parse_one(text)?;
    Ok(match statement {
        ast::Statement::CreateTable(create) => {
            Statement::CreateTable(create::CreateTable::from_ast(create)?)
        }
        ast::Statement::Drop {
            object_type: ObjectType::Table,
            if_exists,
            names,
            ..
        } => Statement::DropTable(drop::DropTable::from_ast(if_exists, names)?),
        ast::Statement::Insert(insert) => {
            Statement::Insert(insert::Insert::from_ast(insert, false)?)
        }
        ast::Statement::Query(query) => {
            Statement::Select(Box::new(select::Select::from_ast(*query)?))
        }
        ast::Statement::Update(update) => Statement::Update(update::Update::from_ast(update)?),
        ast::Statement::Delete(delete) => Statement::Delete(delete::Delete::from_ast(delete)?),
        other => {
            let kind = other.to_string();
            let kind: String = kind
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            return Err(SqlError::Unsupported(format!(
                "{kind} ... (see \\? for what the shell runs)"
            )));
        }
    })
}

fn parse_one(text: &str) -> Result<ast::Statement, SqlError> {
    let dialect = dialect();
    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(MAX_PARSE_DEPTH)
        .try_with_sql(text)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|error| match syntax_error(error) {
            // sqlparser gives no position when the statement ended too soon: the caret
            // goes just past its end.
            SqlError::Syntax {
                message,
                position: None,
            } if message.ends_with("found: EOF") => SqlError::Syntax {
                message: message.replace("found: EOF", "found the end of the statement"),
                position: Some(end_position(text)),
            },
            other => other,
        })?;
    match (statements.pop(), statements.is_empty()) {
        (Some(statement), true) => Ok(statement),
        (None, _) => Err(SqlError::Syntax {
            message: "empty statement".to_string(),
            position: None,
        }),
        (Some(_), false) => Err(SqlError::Syntax {
            message: "one statement at a time".to_string(),
            position: None,
        }),
    }
}

/// The (line, column) just past the end of `text`.
fn end_position(text: &str) -> (u64, u64) {
    let trimmed = text.trim_end();
    let line = trimmed.lines().count().max(1) as u64;
    let column = trimmed.lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
    (line, column)
}

/// Runs a parsed statement.
pub async fn execute(statement: Statement, store: &Store) -> Result<Outcome, SqlError> {
    match statement {
        Statement::CreateTable(s) => s.execute(store).await,
        Statement::DropTable(s) => s.execute(store).await,
        Statement::Insert(s) => s.execute(store).await,
        Statement::Select(s) => s.execute(store).await,
        Statement::Update(s) => s.execute(store).await,
        Statement::Delete(s) => s.execute(store).await,
        Statement::Admin(s) => s.execute(store).await,
        Statement::Raw(s) => s.execute(store).await,
    }
}

/// The single table a statement names, with the name it goes by in it.
pub fn table_name(name: &ast::ObjectName) -> Result<String, SqlError> {
    match name.0.as_slice() {
        [ast::ObjectNamePart::Identifier(ident)] => Ok(expr::ident_name(ident)),
        _ => Err(SqlError::Unsupported(format!(
            "the qualified name {name} (tables have one-part names)"
        ))),
    }
}

/// The table of a FROM clause or an UPDATE: exactly one, no joins; (name, alias).
pub fn single_table(from: &[ast::TableWithJoins]) -> Result<(String, Option<String>), SqlError> {
    match from {
        [ast::TableWithJoins { relation, joins }] if joins.is_empty() => match relation {
            ast::TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => Ok((
                table_name(name)?,
                alias.as_ref().map(|a| expr::ident_name(&a.name)),
            )),
            _ => Err(SqlError::Unsupported(
                "subqueries and table functions in FROM".to_string(),
            )),
        },
        [] => Err(SqlError::Unsupported(
            "a statement without a table".to_string(),
        )),
        _ => Err(SqlError::Unsupported(
            "joins (one table per statement)".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let (done, rest) =
            split_statements("select ';'; -- a ; comment\n select \"a;b\" /* ; */; select");
        assert_eq!(
            done,
            vec!["select ';'", "-- a ; comment\n select \"a;b\" /* ; */"]
        );
        assert_eq!(rest, "select");
        let (done, rest) = split_statements("  ;; -- only a comment");
        assert!(done.is_empty());
        assert_eq!(rest, "");
        let (done, rest) = split_statements("insert into t values ('it''s;');");
        assert_eq!(done.len(), 1);
        assert_eq!(rest, "");
    }

    #[test]
    fn strings_that_hide_a_semicolon_stay_whole() {
        for (text, pieces) in [
            (
                "insert into log values (1, E'don\\'t; drop table log; --');",
                1,
            ),
            ("select e'\\\\'; select 2;", 2),
            ("select $$a;b$$; select $tag$ x;$ $$ $tag$;", 2),
            ("select $1; select 2;", 2),
            ("select x$y'; select 2;'; select 3;", 2),
            ("select 1 /* a /* nested ; */ still ; */; select 2;", 2),
            ("select 'a\\'; select 2;", 2),
            ("select type'x;'; select 2;", 2),
            ("select 1e5$q$; drop table t; $q$;", 1),
            ("select 'é;€'; select '\u{1F600}';\r\nselect 3;", 3),
        ] {
            let (done, rest) = split_statements(text);
            assert_eq!(
                (done.len(), rest.as_str()),
                (pieces, ""),
                "{text}: {done:?}"
            );
        }
    }

    /// The statements split out are exactly the tokenizer's, over random texts built from
    /// the characters that matter (multi-byte ones and `\r` included): each piece holds
    /// the tokens between two `;` tokens of the whole text, which checks the mapping from
    /// the tokenizer's lines and columns back to byte offsets.
    #[test]
    fn splitting_agrees_with_the_tokenizer() {
        use sqlparser::tokenizer::{Token, Tokenizer};
        const PARTS: [&str; 22] = [
            "'", "\"", "E", "e", " E", "$", "$$", "$a$", "\\", ";", "/*", "*/", "--", "\n", " ",
            "x", "1", "''", "U", "é", "\r", "e5",
        ];
        // The meaningful tokens of `text` in groups between `;` tokens; empty groups
        // dropped. `None` if it does not tokenize.
        let groups = |text: &str| -> Option<Vec<Vec<Token>>> {
            let tokens = Tokenizer::new(&dialect(), text).tokenize().ok()?;
            let mut groups = vec![Vec::new()];
            for token in tokens {
                match token {
                    Token::SemiColon => groups.push(Vec::new()),
                    Token::Whitespace(_) => {}
                    token => groups.last_mut()?.push(token),
                }
            }
            groups.retain(|group| !group.is_empty());
            Some(groups)
        };
        let seed: u64 = std::env::var("RSHARD_SPLIT_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or(5);
        println!(
            "seed {seed}; replay: RSHARD_SPLIT_SEED={seed} cargo test -p rshard-shell --lib splitting_agrees"
        );
        let mut rng = rshard_common::rng::SeededRng::new(seed);
        let mut compared = 0;
        for _ in 0..50_000 {
            let text: String = (0..rng.below(14))
                .map(|_| PARTS[rng.below(PARTS.len() as u64) as usize])
                .collect();
            let (done, rest) = split_statements(&text);
            let Some(whole) = groups(&text) else {
                continue;
            };
            compared += 1;
            let pieces: Vec<Vec<Token>> = done
                .iter()
                .chain(std::iter::once(&rest).filter(|rest| !rest.is_empty()))
                .map(|piece| groups(piece).map(|g| g.concat()).unwrap_or_default())
                .collect();
            assert_eq!(pieces, whole, "{text:?}: split into {done:?} and {rest:?}");
        }
        assert!(compared > 10_000, "only {compared} texts tokenized");
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        let error = parse("SELEC * FROM t").err();
        assert!(matches!(error, Some(SqlError::Syntax { .. })), "{error:?}");
        let error = parse("SELECT * FROM t WHERE").err();
        match error {
            Some(SqlError::Syntax {
                position: Some((1, column)),
                ..
            }) => assert!(column >= 17, "{column}"),
            other => panic!("{other:?}"),
        }
    }
}
