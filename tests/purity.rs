//! Purity checks for the deterministic cores (STYLE.md, practices 1, 2 and 12).
//!
//! The Raft core (`server/raft`) must be a pure state machine: no IO, no threads, no async
//! runtime, no clock, no unseeded randomness, so that a failing seed replays exactly. The
//! placement planners (`placement`) must not read the clock or draw unseeded randomness.
//!
//! This is a lint, not a parser: it reads manifests and scans source text line by line, with
//! comments removed. It catches the plain ways in; it does not try to defeat someone who
//! wants around it (`use std::{fs}` slips through). String contents count as code, so it
//! errs towards flagging.

use std::path::{Path, PathBuf};

/// Why a source pattern is forbidden, which decides where it is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impurity {
    /// Reads the clock or draws unseeded randomness: a step's output would depend on when or
    /// where it ran, and a failing seed would not replay. Forbidden in the Raft core and in
    /// the placement planners; time comes in as ticks and randomness from a seeded RNG.
    ClockOrRandomness,
    /// Does IO, spawns threads or needs an async runtime: that is the driver's job. Forbidden
    /// in the Raft core, which takes messages in and hands work back as data.
    IoOrRuntime,
}

/// Source patterns the pure cores must not contain, each with the reason it is forbidden.
/// One list, so the Raft and placement checks cannot drift apart.
const FORBIDDEN_IN_SOURCE: &[(&str, Impurity)] = &[
    ("Instant::now", Impurity::ClockOrRandomness),
    ("SystemTime::now", Impurity::ClockOrRandomness),
    ("thread_rng", Impurity::ClockOrRandomness),
    ("rand::random", Impurity::ClockOrRandomness),
    // rand 0.9 renamed `thread_rng()` to `rng()`; the seedable `rand::rngs::*` stays allowed.
    ("rand::rng()", Impurity::ClockOrRandomness),
    // Seeding from the operating system is unseeded randomness by another name.
    ("from_entropy", Impurity::ClockOrRandomness),
    ("from_os_rng", Impurity::ClockOrRandomness),
    ("OsRng", Impurity::ClockOrRandomness),
    ("std::time::Instant", Impurity::ClockOrRandomness),
    ("std::net", Impurity::IoOrRuntime),
    ("std::fs", Impurity::IoOrRuntime),
    ("std::thread", Impurity::IoOrRuntime),
    ("std::io::", Impurity::IoOrRuntime),
    ("tokio::", Impurity::IoOrRuntime),
];

/// Crates the Raft core must not depend on: async runtimes and IO (tokio, quinn, fjall, ...)
/// and global randomness (`rand` brings `thread_rng`; `getrandom` reads the OS). A seedable
/// generator such as `rand_core` or `rand_chacha` is allowed. A name also covers its
/// `name-*` family (`tokio` covers `tokio-util`).
const FORBIDDEN_DEPENDENCIES: &[&str] = &[
    "tokio",
    "quinn",
    "fjall",
    "rand",
    "getrandom",
    "async-std",
    "smol",
    "async-executor",
    "futures-executor",
    "glommio",
    "monoio",
    "actix-rt",
    "mio",
];

const ALL_IMPURITIES: &[Impurity] = &[Impurity::ClockOrRandomness, Impurity::IoOrRuntime];

#[test]
fn raft_core_manifest_has_no_impure_dependencies() {
    let manifest_path = workspace_root().join("server/raft/Cargo.toml");
    let manifest = read_to_string(&manifest_path);
    let found = forbidden_dependencies(&manifest);
    assert!(
        found.is_empty(),
        "{} must stay pure (no runtime, IO or global RNG), but depends on:\n  {}",
        manifest_path.display(),
        found.join("\n  ")
    );
}

#[test]
fn raft_core_source_is_pure() {
    assert_sources_pure("server/raft/src", ALL_IMPURITIES);
}

#[test]
fn placement_planners_read_no_clock_and_no_unseeded_randomness() {
    assert_sources_pure("placement/src", &[Impurity::ClockOrRandomness]);
}

/// One forbidden pattern found on one line of a source text.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    /// 1-based line number.
    line: usize,
    pattern: &'static str,
}

/// Scans every `.rs` file under `relative_dir` and panics, naming each `file:line`, if any
/// non-comment line holds a pattern of the given kinds.
fn assert_sources_pure(relative_dir: &str, kinds: &[Impurity]) {
    let root = workspace_root();
    let files = rust_files_under(&root.join(relative_dir));
    assert!(
        !files.is_empty(),
        "no .rs file under {relative_dir}: the purity check would pass vacuously"
    );
    let mut report = Vec::new();
    for file in &files {
        let source = read_to_string(file);
        let shown = file.strip_prefix(&root).unwrap_or(file).display();
        for violation in find_violations(&source, kinds) {
            report.push(format!(
                "{shown}:{}: `{}`",
                violation.line, violation.pattern
            ));
        }
    }
    assert!(
        report.is_empty(),
        "{relative_dir} must stay pure (see tests/purity.rs for why), but:\n  {}",
        report.join("\n  ")
    );
}

/// The violations in `source` of the patterns of the given kinds, comments excluded.
fn find_violations(source: &str, kinds: &[Impurity]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (index, code) in code_lines(source).iter().enumerate() {
        for &(pattern, kind) in FORBIDDEN_IN_SOURCE {
            if kinds.contains(&kind) && code.contains(pattern) {
                violations.push(Violation {
                    line: index + 1,
                    pattern,
                });
            }
        }
    }
    violations
}

/// `source` split into lines with `//` and (nested) `/* */` comments removed; doc comments
/// are comments too. String and char literals are kept, and a `//` inside one is not taken
/// for a comment. Raw strings holding a `"` can confuse it; that is accepted.
fn code_lines(source: &str) -> Vec<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Code,
        LineComment,
        BlockComment { depth: usize },
        Str,
    }
    let chars: Vec<char> = source.chars().collect();
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut state = State::Code;
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let next = chars.get(index + 1).copied();
        if c == '\n' {
            lines.push(std::mem::take(&mut current));
            if state == State::LineComment {
                state = State::Code;
            }
            index += 1;
            continue;
        }
        let mut step = 1;
        match state {
            State::LineComment => {}
            State::BlockComment { depth } => match (c, next) {
                ('/', Some('*')) => {
                    state = State::BlockComment { depth: depth + 1 };
                    step = 2;
                }
                ('*', Some('/')) => {
                    state = match depth {
                        1 => State::Code,
                        _ => State::BlockComment { depth: depth - 1 },
                    };
                    step = 2;
                }
                _ => {}
            },
            State::Str => {
                current.push(c);
                match (c, next) {
                    ('\\', Some(escaped)) if escaped != '\n' => {
                        current.push(escaped);
                        step = 2;
                    }
                    ('"', _) => state = State::Code,
                    _ => {}
                }
            }
            State::Code => match (c, next) {
                ('/', Some('/')) => state = State::LineComment,
                ('/', Some('*')) => {
                    state = State::BlockComment { depth: 1 };
                    step = 2;
                }
                ('"', _) => {
                    current.push(c);
                    state = State::Str;
                }
                ('\'', _) => {
                    step = char_literal_length(&chars[index..]);
                    current.extend(&chars[index..index + step]);
                }
                _ => current.push(c),
            },
        }
        index += step;
    }
    lines.push(current);
    lines
}

/// Length of the char literal at the start of `chars` (which starts with `'`), or 1 when it
/// is a lifetime or label rather than a char literal.
fn char_literal_length(chars: &[char]) -> usize {
    match chars {
        ['\'', '\\', rest @ ..] => rest
            .iter()
            .skip(1)
            .position(|&c| c == '\'')
            .map_or(1, |offset| offset + 4),
        ['\'', _, '\'', ..] => 3,
        _ => 1,
    }
}

/// The forbidden dependencies of a Cargo manifest, described for a failure message. Checks
/// `[dependencies]` and every `[target.*.dependencies]`, by key and by `package = ".."`.
fn forbidden_dependencies(manifest: &str) -> Vec<String> {
    let manifest: toml::Table = manifest.parse().expect("Cargo.toml parses as TOML");
    let mut tables = Vec::new();
    if let Some(dependencies) = manifest.get("dependencies").and_then(toml::Value::as_table) {
        tables.push(("[dependencies]".to_string(), dependencies));
    }
    let targets = manifest.get("target").and_then(toml::Value::as_table);
    for (target, table) in targets.into_iter().flatten() {
        if let Some(dependencies) = table.get("dependencies").and_then(toml::Value::as_table) {
            tables.push((format!("[target.{target}.dependencies]"), dependencies));
        }
    }
    let mut found = Vec::new();
    for (section, dependencies) in tables {
        for (key, value) in dependencies {
            let package = value.get("package").and_then(toml::Value::as_str);
            for name in std::iter::once(key.as_str()).chain(package) {
                if is_forbidden_dependency(name) {
                    found.push(format!("{name} (as `{key}` in {section})"));
                }
            }
        }
    }
    found
}

fn is_forbidden_dependency(name: &str) -> bool {
    FORBIDDEN_DEPENDENCIES.iter().any(|forbidden| {
        name == *forbidden
            || name
                .strip_prefix(forbidden)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_to_string(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files_under(dir: &Path) -> Vec<PathBuf> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|error| panic!("list {}: {error}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|error| panic!("list {}: {error}", dir.display()));
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(rust_files_under(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

/// The checks above must be able to fail: these run the helpers on in-memory inputs.
mod helper_tests {
    use super::*;

    fn flagged_patterns(source: &str, kinds: &[Impurity]) -> Vec<(usize, &'static str)> {
        find_violations(source, kinds)
            .into_iter()
            .map(|violation| (violation.line, violation.pattern))
            .collect()
    }

    #[test]
    fn a_forbidden_call_is_flagged_with_its_line() {
        let source = "fn tick(&mut self) {\n    let started = Instant::now();\n}\n";
        assert_eq!(
            flagged_patterns(source, ALL_IMPURITIES),
            vec![(2, "Instant::now")]
        );
    }

    #[test]
    fn a_forbidden_call_in_a_line_comment_is_not_flagged() {
        let source = "// Never call Instant::now() here: time is ticks.\n\
                      /// Doc: unlike Instant::now, ticks replay.\n\
                      //! std::fs is the driver's.\n\
                      fn tick(&mut self) {} // not thread_rng()\n";
        assert_eq!(flagged_patterns(source, ALL_IMPURITIES), vec![]);
    }

    #[test]
    fn a_forbidden_call_in_a_block_comment_is_not_flagged() {
        let source = "/* outer /* nested */ still Instant::now\n std::fs */\nfn tick() {}\n";
        assert_eq!(flagged_patterns(source, ALL_IMPURITIES), vec![]);
    }

    #[test]
    fn code_after_a_string_holding_slashes_is_still_flagged() {
        let source = "let url = \"http://node/*\"; let seed = rand::random::<u64>();\n";
        assert_eq!(
            flagged_patterns(source, ALL_IMPURITIES),
            vec![(1, "rand::random")]
        );
    }

    #[test]
    fn char_literals_and_lifetimes_do_not_open_strings() {
        let source = "fn f<'a>(q: &'a str) -> char { '\"' }\nlet t = SystemTime::now();\n";
        assert_eq!(
            flagged_patterns(source, ALL_IMPURITIES),
            vec![(2, "SystemTime::now")]
        );
    }

    #[test]
    fn every_forbidden_pattern_is_flagged() {
        for &(pattern, kind) in FORBIDDEN_IN_SOURCE {
            let source = format!("let x = {pattern};\n");
            let flagged = flagged_patterns(&source, &[kind]);
            assert!(
                flagged.contains(&(1, pattern)),
                "{pattern} not flagged: {flagged:?}"
            );
        }
    }

    #[test]
    fn the_placement_check_allows_io_but_not_the_clock() {
        let kinds = &[Impurity::ClockOrRandomness];
        assert_eq!(flagged_patterns("use std::fs::File;\n", kinds), vec![]);
        assert_eq!(
            flagged_patterns("let mut rng = rand::thread_rng();\n", kinds),
            vec![(1, "thread_rng")]
        );
    }

    #[test]
    fn forbidden_dependencies_are_found_by_name_rename_and_target() {
        let manifest = r#"
            [dependencies]
            serde = "1"
            rand_chacha = "0.3"
            tokio-util = "0.7"
            runtime = { package = "tokio", version = "1" }

            [target.'cfg(unix)'.dependencies]
            mio = "1"

            [dev-dependencies]
            rand = "0.9"
        "#;
        // Keys come back in sorted order: `runtime` before `tokio-util`.
        assert_eq!(
            forbidden_dependencies(manifest),
            vec![
                "tokio (as `runtime` in [dependencies])",
                "tokio-util (as `tokio-util` in [dependencies])",
                "mio (as `mio` in [target.cfg(unix).dependencies])",
            ]
        );
    }

    #[test]
    fn a_pure_manifest_has_no_forbidden_dependencies() {
        let manifest = "[dependencies]\nserde.workspace = true\nrand_core = \"0.9\"\n";
        assert_eq!(forbidden_dependencies(manifest), Vec::<String>::new());
    }
}
