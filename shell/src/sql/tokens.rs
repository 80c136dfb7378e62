//! A cursor over a statement's tokens, for the statements the shell parses itself (raw KV
//! verbs and admin statements) and for choosing how to parse the rest.

use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::SqlError;

#[derive(Debug)]
pub struct Tokens<'a> {
    text: &'a str,
    tokens: Vec<TokenWithSpan>,
    next: usize,
}

impl<'a> Tokens<'a> {
    /// The significant tokens of `text` (no whitespace or comments).
    pub fn new(text: &'a str) -> Result<Self, SqlError> {
        let dialect = super::dialect();
        let tokens: Vec<TokenWithSpan> = Tokenizer::new(&dialect, text)
            .tokenize_with_location()
            .map_err(|error| SqlError::Syntax {
                message: error.message,
                position: Some((error.location.line, error.location.column)),
            })?
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .collect();
        check_run_lengths(&tokens)?;
        Ok(Tokens {
            text,
            tokens,
            next: 0,
        })
    }

    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The `index`th token as an upper-cased unquoted word, if it is one.
    pub fn word_at(&self, index: usize) -> Option<String> {
        match &self.tokens.get(index)?.token {
            Token::Word(word) if word.quote_style.is_none() => Some(word.value.to_uppercase()),
            _ => None,
        }
    }

    pub fn has_word(&self, word: &str) -> bool {
        (0..self.tokens.len()).any(|i| self.word_at(i).as_deref() == Some(word))
    }

    /// The byte offset of the `index`th token in the text.
    pub fn offset_of(&self, index: usize) -> usize {
        self.tokens.get(index).map_or(self.text.len(), |t| {
            byte_offset(self.text, t.span.start.line, t.span.start.column)
        })
    }

    /// The text from the next token to the end.
    pub fn rest(&self) -> &'a str {
        &self.text[self.offset_of(self.next)..]
    }

    fn position(&self) -> Option<(u64, u64)> {
        match self.tokens.get(self.next) {
            Some(t) => Some((t.span.start.line, t.span.start.column)),
            None => self
                .tokens
                .last()
                .map(|t| (t.span.end.line, t.span.end.column)),
        }
    }

    /// A syntax error at the next token.
    pub fn error(&self, expected: &str) -> SqlError {
        let found = match self.tokens.get(self.next) {
            Some(t) => format!("found {}", t.token),
            None => "found the end of the statement".to_string(),
        };
        SqlError::Syntax {
            message: format!("expected {expected}, {found}"),
            position: self.position(),
        }
    }

    pub fn peek_word(&self) -> Option<String> {
        self.word_at(self.next)
    }

    /// Takes the next token if it is the word `word` (case-insensitive).
    pub fn accept(&mut self, word: &str) -> bool {
        if self.peek_word().as_deref() == Some(word) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    pub fn expect(&mut self, word: &str) -> Result<(), SqlError> {
        if self.accept(word) {
            Ok(())
        } else {
            Err(self.error(word))
        }
    }

    /// A name: a word (folded to lower case unless quoted).
    pub fn name(&mut self, what: &str) -> Result<String, SqlError> {
        match self.tokens.get(self.next).map(|t| &t.token) {
            Some(Token::Word(word)) => {
                self.next += 1;
                Ok(match word.quote_style {
                    Some(_) => word.value.clone(),
                    None => word.value.to_lowercase(),
                })
            }
            _ => Err(self.error(what)),
        }
    }

    pub fn number(&mut self, what: &str) -> Result<u64, SqlError> {
        match self.tokens.get(self.next).map(|t| &t.token) {
            Some(Token::Number(text, _)) => {
                let number = text.parse().map_err(|_| self.error(what))?;
                self.next += 1;
                Ok(number)
            }
            _ => Err(self.error(what)),
        }
    }

    /// A single-quoted string.
    pub fn string(&mut self, what: &str) -> Result<String, SqlError> {
        match self.tokens.get(self.next).map(|t| &t.token) {
            Some(Token::SingleQuotedString(text)) => {
                let text = text.clone();
                self.next += 1;
                Ok(text)
            }
            _ => Err(self.error(what)),
        }
    }

    pub fn end(&self) -> Result<(), SqlError> {
        if self.next >= self.tokens.len() {
            Ok(())
        } else {
            Err(self.error("the end of the statement"))
        }
    }
}

/// The byte offset of (line, column), both from 1 and counted in characters.
pub fn byte_offset(text: &str, line: u64, column: u64) -> usize {
    let mut offset = 0;
    for (index, line_text) in text.split_inclusive('\n').enumerate() {
        if index as u64 + 1 == line {
            return offset
                + line_text
                    .char_indices()
                    .nth(column.saturating_sub(1) as usize)
                    .map_or(line_text.len(), |(i, _)| i);
        }
        offset += line_text.len();
    }
    text.len()
}

/// Tokens allowed between two commas or parentheses: a longer run is one enormous
/// expression (`1 + 1 + ...`), which sqlparser would nest as deep as it is long, beyond
/// what a stack holds.
pub const MAX_TOKEN_RUN: usize = 1000;

fn check_run_lengths(tokens: &[TokenWithSpan]) -> Result<(), SqlError> {
    let mut runs = vec![0usize];
    for token in tokens {
        match token.token {
            Token::LParen => runs.push(0),
            Token::RParen => {
                if runs.len() > 1 {
                    runs.pop();
                }
            }
            Token::Comma => {
                if let Some(run) = runs.last_mut() {
                    *run = 0;
                }
            }
            _ => {
                if let Some(run) = runs.last_mut() {
                    *run += 1;
                    if *run > MAX_TOKEN_RUN {
                        return Err(SqlError::Limit(format!(
                            "an expression of more than {MAX_TOKEN_RUN} tokens; split it up"
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}
