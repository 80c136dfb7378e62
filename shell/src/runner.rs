//! The non-interactive shell: statements from `-e`, a file or stdin, run in order.
//!
//! Results go to stdout and errors to stderr. The run stops at the first failed statement
//! with [`EXIT_STATEMENT_FAILED`] unless told to continue (it then still exits with that
//! code if any statement failed); a cluster that cannot be reached exits with
//! [`EXIT_CONNECTION_FAILED`] at once. A last statement without `;` still runs. Ctrl-C
//! cancels the running statement and stops the run with [`EXIT_INTERRUPTED`]; one that
//! comes between statements stops it before the next (while the run waits for a line of
//! input, it is seen when the line comes).

use std::io::{BufRead, Write};

use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::session::{execute_cancellable, Meta, Session, CANCELLED};
use crate::sql::split_statements;

pub const EXIT_CONNECTION_FAILED: u8 = 2;
pub const EXIT_STATEMENT_FAILED: u8 = 3;
/// Ctrl-C cancelled a statement: the run stops (128 + SIGINT, as a shell reports it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Runs every statement `input` holds; the process exit code.
pub fn run(
    session: &mut Session,
    runtime: &Runtime,
    input: impl BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
    continue_on_error: bool,
) -> u8 {
    // Watched from the start, so that a Ctrl-C between statements is kept until looked at
    // (with no watcher it would end the process; with only each statement's, it would be
    // lost).
    let mut interrupts = runtime
        .block_on(async { signal(SignalKind::interrupt()) })
        .ok();
    let mut buffer = String::new();
    let mut failed = false;
    for line in input.lines() {
        if interrupted(runtime, &mut interrupts) {
            let _ = writeln!(err, "ERROR: interrupted");
            return EXIT_INTERRUPTED;
        }
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                let _ = writeln!(err, "ERROR: reading the input: {error}");
                return EXIT_STATEMENT_FAILED;
            }
        };
        if buffer.trim().is_empty() && line.trim_start().starts_with('\\') {
            buffer.clear();
            if session.echo {
                let _ = writeln!(out, "{}", line.trim());
            }
            match session.meta(line.trim()) {
                Meta::Quit => return if failed { EXIT_STATEMENT_FAILED } else { 0 },
                Meta::Print(text) => {
                    let _ = out.write_all(text.as_bytes());
                }
                Meta::Run(statement) => match run_one(
                    session,
                    runtime,
                    &statement,
                    out,
                    err,
                    continue_on_error,
                    &mut failed,
                ) {
                    Ok(_) => {}
                    Err(code) => return code,
                },
            }
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if buffer.len() > crate::sql::MAX_STATEMENT_BYTES * 2 {
            let _ = writeln!(
                err,
                "ERROR: a statement of more than {} bytes (is a ; missing?)",
                crate::sql::MAX_STATEMENT_BYTES
            );
            return EXIT_STATEMENT_FAILED;
        }
        // A statement can end only at a `;`: without one, the buffer is not split again
        // (which would make a long statement over many lines quadratic to read).
        if !line.contains(';') {
            // Comments between statements are not part of the next one.
            if crate::sql::is_blank(&buffer) {
                buffer.clear();
            }
            continue;
        }
        let (statements, rest) = split_statements(&buffer);
        for statement in statements {
            match run_one(
                session,
                runtime,
                &statement,
                out,
                err,
                continue_on_error,
                &mut failed,
            ) {
                Ok(_) => {}
                Err(code) => return code,
            }
        }
        buffer = rest;
        if !buffer.is_empty() {
            buffer.push('\n');
        }
    }
    let rest = buffer.trim().to_string();
    if interrupted(runtime, &mut interrupts) {
        let _ = writeln!(err, "ERROR: interrupted");
        return EXIT_INTERRUPTED;
    }
    if !rest.is_empty() {
        if let Err(code) = run_one(
            session,
            runtime,
            &rest,
            out,
            err,
            continue_on_error,
            &mut failed,
        ) {
            return code;
        }
    }
    let _ = out.flush();
    if failed {
        EXIT_STATEMENT_FAILED
    } else {
        0
    }
}

/// Whether a Ctrl-C came since the last look.
fn interrupted(runtime: &Runtime, interrupts: &mut Option<Signal>) -> bool {
    let Some(interrupts) = interrupts else {
        return false;
    };
    runtime.block_on(async {
        tokio::select! {
            biased;
            _ = interrupts.recv() => true,
            () = std::future::ready(()) => false,
        }
    })
}

/// Runs one statement: `Ok` to go on, `Err(code)` to stop with that exit code.
fn run_one(
    session: &mut Session,
    runtime: &Runtime,
    statement: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
    continue_on_error: bool,
    failed: &mut bool,
) -> Result<(), u8> {
    if session.echo {
        let _ = out.write_all(format!("{statement};\n").as_bytes());
    }
    let Some(result) = execute_cancellable(session, runtime, statement) else {
        let _ = writeln!(err, "{CANCELLED}");
        return Err(EXIT_INTERRUPTED);
    };
    match result {
        Ok(outcome) => {
            let text = crate::render::render(&outcome, session.format, session.expanded);
            let _ = out.write_all(text.as_bytes());
            Ok(())
        }
        Err(error) => {
            let _ = err.write_all(crate::session::error_text(statement, &error).as_bytes());
            *failed = true;
            if error.is_connection() {
                Err(EXIT_CONNECTION_FAILED)
            } else if continue_on_error {
                Ok(())
            } else {
                Err(EXIT_STATEMENT_FAILED)
            }
        }
    }
}
