//! The SQL layer on the in-memory store: a differential test against a reference model,
//! statement behaviours the model does not cover, and garbage input.

mod support;

use std::sync::Arc;

use rshard_shell::error::SqlError;
use rshard_shell::render::Format;
use rshard_shell::session::Session;
use rshard_shell::sql::Outcome;
use rshard_shell::store::{MemoryStore, Store};
use rshard_shell::value::Value;
use support::model::run_differential;

/// Shard boundaries inside table 1's and table 2's key ranges, so statements span
/// "shards" and batches get cut as on a cluster.
fn boundaries() -> Vec<Vec<u8>> {
    let mut keys = vec![b"/s/".to_vec()];
    for table in 1..=4u64 {
        for k in [5i64, 12, 20] {
            keys.push(rshard_shell::encoding::row_key(table, &[&Value::Int(k)]));
        }
    }
    keys
}

fn session() -> (Session, Arc<MemoryStore>) {
    let memory = Arc::new(MemoryStore::with_boundaries(boundaries()));
    (
        Session::new(Store::Memory(Arc::clone(&memory)), Format::Table),
        memory,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn the_shell_agrees_with_the_reference_model() {
    let seeds: u64 = std::env::var("RSHARD_SQL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let base: u64 = std::env::var("RSHARD_SQL_BASE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let runtime = runtime();
    for seed in base..base + seeds {
        let (session, _) = session();
        let replay = format!(
            "RSHARD_SQL_SEEDS=1 RSHARD_SQL_BASE_SEED={seed} cargo test -p rshard-shell --test sql the_shell_agrees"
        );
        runtime.block_on(run_differential(&session, seed, 400, &replay));
    }
    println!("{seeds} seeds from {base} agreed with the model");
}

async fn run(session: &Session, sql: &str) -> Result<Outcome, SqlError> {
    session.execute(sql).await
}

fn status(outcome: Result<Outcome, SqlError>) -> (String, Vec<String>) {
    match outcome {
        Ok(Outcome::Status { tag, notes }) => (tag, notes),
        other => panic!("not a status: {other:?}"),
    }
}

fn rows(outcome: Result<Outcome, SqlError>) -> Vec<Vec<Value>> {
    match outcome {
        Ok(Outcome::Rows { rows, .. }) => rows,
        other => panic!("not rows: {other:?}"),
    }
}

#[test]
fn a_duplicate_key_in_one_shard_writes_nothing_and_across_shards_says_what_it_wrote() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, memory) = session();
        status(
            run(
                &session,
                "CREATE TABLE t (id INT PRIMARY KEY, name TEXT NOT NULL)",
            )
            .await,
        );
        status(run(&session, "INSERT INTO t VALUES (3, 'c'), (6, 'f')").await);
        let before = memory.dump();
        // 1, 2, 3 are all in the first shard (it ends at 5): one atomic batch.
        let error = run(
            &session,
            "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'x')",
        )
        .await;
        let error = error.expect_err("a duplicate");
        assert!(matches!(error, SqlError::Constraint(_)), "{error}");
        assert!(error.to_string().contains("(id)=(3)"), "{error}");
        assert_eq!(memory.dump(), before, "nothing written");
        // 1 is in the first shard, 6 (taken) in the second: the first batch is written.
        let error = run(&session, "INSERT INTO t VALUES (6, 'x'), (1, 'a')").await;
        let error = error.expect_err("a duplicate");
        assert!(
            matches!(&error, SqlError::PartlyWritten { written: 1, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("not atomic") || error.to_string().contains("atomic only"),
            "{error}"
        );
        // Rows spanning shards, written whole: the result says it took several batches.
        let (tag, notes) = status(run(&session, "INSERT INTO t VALUES (13, 'm'), (21, 'u')").await);
        assert_eq!(tag, "INSERT 0 2");
        assert!(notes.iter().any(|n| n.contains("not")), "{notes:?}");
        let (tag, notes) = status(run(&session, "INSERT INTO t VALUES (14, 'n')").await);
        assert_eq!((tag.as_str(), notes.len()), ("INSERT 0 1", 0));
    });
}

#[test]
fn types_nulls_defaults_and_constraints() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, memory) = session();
        status(
            run(
                &session,
                "CREATE TABLE t (id INT PRIMARY KEY, score FLOAT DEFAULT 1.5, ok BOOL NOT NULL DEFAULT true, data BYTES, note VARCHAR(10))",
            )
            .await,
        );
        status(run(&session, "INSERT INTO t (id) VALUES (1)").await);
        status(run(&session, "INSERT INTO t VALUES (2, 3, false, X'00ff', 'hi')").await);
        assert_eq!(
            rows(run(&session, "SELECT * FROM t ORDER BY id").await),
            vec![
                vec![Value::Int(1), Value::Float(1.5), Value::Bool(true), Value::Null, Value::Null],
                vec![
                    Value::Int(2),
                    Value::Float(3.0),
                    Value::Bool(false),
                    Value::Bytes(vec![0, 255]),
                    Value::Text("hi".into())
                ],
            ]
        );
        let before = memory.dump();
        for bad in [
            "INSERT INTO t (id, ok) VALUES (3, NULL)",
            "INSERT INTO t (id, score) VALUES (3, 'text')",
            "INSERT INTO t (id, score) VALUES (3.5, 1)",
            "INSERT INTO t (id, nope) VALUES (3, 1)",
            "INSERT INTO t VALUES (3, 1, true, NULL, 'x', 'extra')",
            "UPDATE t SET score = 1 / 0",
            "UPDATE t SET id = NULL",
            "UPDATE t SET id = 9223372036854775807 + id",
            "SELECT * FROM t WHERE score = 'a'",
            "INSERT INTO t (id) VALUES (4), (4)",
        ] {
            let result = run(&session, bad).await;
            assert!(result.is_err(), "{bad}: {result:?}");
        }
        assert_eq!(memory.dump(), before, "the refused statements changed nothing");
        // NULL compares as unknown: neither = nor <> holds.
        assert_eq!(rows(run(&session, "SELECT id FROM t WHERE data = X'00' OR data <> X'00'").await).len(), 1);
        assert_eq!(rows(run(&session, "SELECT id FROM t WHERE data IS NULL").await), vec![vec![Value::Int(1)]]);
        // DO NOTHING skips a row whose key an earlier row of the statement proposed.
        assert_eq!(
            status(run(&session, "INSERT INTO t (id, ok) VALUES (4, true), (4, false), (1, true) ON CONFLICT DO NOTHING").await).0,
            "INSERT 0 1"
        );
        assert_eq!(
            rows(run(&session, "SELECT ok FROM t WHERE id = 4").await),
            vec![vec![Value::Bool(true)]]
        );
        assert!(run(&session, "INSERT INTO t (id, ok) VALUES (5, true), (5, false) ON CONFLICT (id) DO UPDATE SET ok = EXCLUDED.ok").await.is_err());
    });
}

#[test]
fn primary_key_updates_move_rows_and_refuse_taken_keys() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, memory) = session();
        status(run(&session, "CREATE TABLE t (id INT PRIMARY KEY, v INT)").await);
        status(run(&session, "INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)").await);
        // Every row moves up by one: each key is left and taken in one swap.
        assert_eq!(
            status(run(&session, "UPDATE t SET id = id + 1").await).0,
            "UPDATE 3"
        );
        assert_eq!(
            rows(run(&session, "SELECT id, v FROM t").await),
            vec![
                vec![Value::Int(2), Value::Int(10)],
                vec![Value::Int(3), Value::Int(20)],
                vec![Value::Int(4), Value::Int(30)]
            ]
        );
        let before = memory.dump();
        assert!(run(&session, "UPDATE t SET id = 4 WHERE id = 2")
            .await
            .is_err());
        assert!(
            run(&session, "UPDATE t SET id = 7").await.is_err(),
            "three rows to one key"
        );
        assert_eq!(memory.dump(), before);
    });
}

/// Key moves over several shards never lose a row: they copy, then delete, take the
/// copies back when a new key is taken, and refuse (writing nothing) a chain of keys left
/// and taken that would span shards. Table 1's shards end at keys 5, 12 and 20.
#[test]
fn primary_key_moves_across_shards_lose_no_row() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, memory) = session();
        status(run(&session, "CREATE TABLE u (id INT PRIMARY KEY, v INT)").await);
        status(
            run(
                &session,
                "INSERT INTO u VALUES (1, 1), (2, 2), (3, 3), (6, 6), (7, 7), (8, 8), (17, 0)",
            )
            .await,
        );
        let before = memory.dump();
        // New keys 11 | 12, 13, 16, 17, 18: the second batch finds 17 taken after the
        // first wrote 11, which is then deleted again.
        let error = run(&session, "UPDATE u SET id = id + 10 WHERE id < 10")
            .await
            .expect_err("17 is taken");
        assert!(error.to_string().contains("nothing changed"), "{error}");
        assert_eq!(memory.dump(), before, "the copy at 11 was taken back");
        // Keys left and taken (3 and 7) on both sides of the boundary at 5: refused whole.
        let error = run(
            &session,
            "UPDATE u SET id = id + 1 WHERE id BETWEEN 2 AND 7",
        )
        .await
        .expect_err("a chain across shards");
        assert!(error.to_string().contains("two steps"), "{error}");
        assert_eq!(memory.dump(), before);
        // Rows that keep their key are no swap: rewriting them across shards is no refusal.
        assert_eq!(
            status(run(&session, "UPDATE u SET id = id, v = v * 10 WHERE id < 17").await).0,
            "UPDATE 6"
        );
        status(run(&session, "UPDATE u SET id = id, v = v / 10").await);
        // Moves to keys nobody holds go through, over several batches.
        status(run(&session, "DELETE FROM u WHERE id = 17").await);
        let moved = status(run(&session, "UPDATE u SET id = id + 100 WHERE id < 10").await);
        assert_eq!(moved.0, "UPDATE 6");
        assert_eq!(
            rows(run(&session, "SELECT id, v FROM u").await),
            [1, 2, 3, 6, 7, 8]
                .map(|k| vec![Value::Int(k + 100), Value::Int(k)])
                .to_vec()
        );
    });
}

/// A lost reply (the outcome of a write unknown) in the middle of a key move loses no row:
/// after the swap batch, the move reads whether it landed and finishes; after a batch of
/// new keys, it stops and says copies may exist. Table 1's shards end at 5, 12 and 20.
#[test]
fn key_moves_with_a_lost_reply_lose_no_row() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, memory) = session();
        status(run(&session, "CREATE TABLE m (id INT PRIMARY KEY, v INT)").await);
        let reset = "DELETE FROM m; INSERT INTO m VALUES (1, 1), (2, 2), (3, 3), (8, 8)";
        let update = "UPDATE m SET id = id + 1 WHERE id <= 3 OR id = 8";
        for statement in reset.split("; ") {
            status(run(&session, statement).await);
        }
        // Requests: new keys 4 and 9 (two shards), then the swap of keys 2 and 3.
        memory.lose_reply(2);
        assert_eq!(status(run(&session, update).await).0, "UPDATE 4");
        let moved = [2, 3, 4, 9]
            .map(|id| vec![Value::Int(id), Value::Int(id - 1)])
            .to_vec();
        assert_eq!(rows(run(&session, "SELECT id, v FROM m").await), moved);

        for statement in reset.split("; ") {
            status(run(&session, statement).await);
        }
        memory.lose_reply(0);
        let error = run(&session, update).await.expect_err("an unknown outcome");
        assert!(error.to_string().contains("no row was lost"), "{error}");
        let left = rows(run(&session, "SELECT id, v FROM m").await);
        for id in [1, 2, 3, 8] {
            assert!(
                left.contains(&vec![Value::Int(id), Value::Int(id)]),
                "{id} in {left:?}"
            );
        }
    });
}

/// A statement busy filtering rows gives the runtime back between rows, so that Ctrl-C,
/// waiting beside it, is heard: on the in-memory store (which never waits) the first poll
/// of a scan of many rows returns before the statement is done.
#[test]
fn a_long_filter_yields_between_rows() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, _) = session();
        status(run(&session, "CREATE TABLE y (id INT PRIMARY KEY, v TEXT)").await);
        let values: Vec<String> = (0..64).map(|i| format!("({i}, 'text {i}')")).collect();
        status(
            run(
                &session,
                &format!("INSERT INTO y VALUES {}", values.join(", ")),
            )
            .await,
        );
        let statement = session.execute("SELECT COUNT(*) FROM y WHERE v LIKE '%x%'");
        let mut statement = std::pin::pin!(statement);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            std::future::Future::poll(statement.as_mut(), &mut context).is_pending(),
            "the statement ran to its end without yielding"
        );
        assert_eq!(rows(statement.await), vec![vec![Value::Int(64)]]);
    });
}

/// SUM's running total may pass the 64-bit range as long as the result is inside it, and
/// AVG of large INTs is a float, not an overflow.
#[test]
fn sums_and_averages_of_large_integers() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, _) = session();
        status(run(&session, "CREATE TABLE n (id INT PRIMARY KEY, v INT)").await);
        status(
            run(
                &session,
                "INSERT INTO n VALUES (1, 9223372036854775807), (2, 1), (3, -1)",
            )
            .await,
        );
        assert_eq!(
            rows(run(&session, "SELECT SUM(v) FROM n").await),
            vec![vec![Value::Int(i64::MAX)]]
        );
        status(
            run(
                &session,
                "UPDATE n SET v = 9000000000000000000 WHERE id < 3",
            )
            .await,
        );
        assert_eq!(
            rows(run(&session, "SELECT AVG(v) FROM n WHERE id < 3").await),
            vec![vec![Value::Float(9e18)]]
        );
        // An output name comes before the table's column of that name, as in PostgreSQL.
        assert_eq!(
            rows(run(&session, "SELECT id, -id AS v FROM n ORDER BY v").await),
            [3, 2, 1]
                .map(|id| vec![Value::Int(id), Value::Int(-id)])
                .to_vec()
        );
        let error = run(&session, "SELECT SUM(v) FROM n")
            .await
            .expect_err("over i64");
        assert!(
            error
                .to_string()
                .contains("out of the 64-bit integer range"),
            "{error}"
        );
    });
}

/// A key bound longer than any key may be is no error: an equality finds nothing, and a
/// range reads from where such a key would sort.
#[test]
fn key_bounds_longer_than_a_key_may_be() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, _) = session();
        status(run(&session, "CREATE TABLE names (name TEXT PRIMARY KEY)").await);
        status(run(&session, "INSERT INTO names VALUES ('a'), ('x'), ('y')").await);
        let long = "x".repeat(5000);
        assert_eq!(
            rows(
                run(
                    &session,
                    &format!("SELECT * FROM names WHERE name = '{long}'")
                )
                .await
            ),
            Vec::<Vec<Value>>::new()
        );
        assert_eq!(
            rows(
                run(
                    &session,
                    &format!("SELECT * FROM names WHERE name >= '{long}'")
                )
                .await
            ),
            vec![vec![Value::Text("y".into())]]
        );
    });
}

/// Re-inserting rows that all exist settles their conflicts a batch at a time (one scan
/// per batch), not with a write request per conflicting row.
#[test]
fn many_conflicts_take_few_write_requests() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, memory) = session();
        status(run(&session, "CREATE TABLE c (id INT PRIMARY KEY, v INT)").await);
        let values: Vec<String> = (0..3000).map(|i| format!("({i}, {i})")).collect();
        let values = values.join(", ");
        status(run(&session, &format!("INSERT INTO c VALUES {values}")).await);
        let before = memory.write_requests();
        let (tag, _) = status(
            run(
                &session,
                &format!("INSERT INTO c VALUES {values} ON CONFLICT DO NOTHING"),
            )
            .await,
        );
        assert_eq!(tag, "INSERT 0 0");
        let nothing = memory.write_requests() - before;
        let before = memory.write_requests();
        let (tag, _) = status(
            run(
                &session,
                &format!(
                    "INSERT INTO c VALUES {values} ON CONFLICT (id) DO UPDATE SET v = c.v + 1"
                ),
            )
            .await,
        );
        assert_eq!(tag, "INSERT 0 3000");
        let updated = memory.write_requests() - before;
        assert_eq!(
            rows(run(&session, "SELECT SUM(v) FROM c").await),
            vec![vec![Value::Int((0..3000).sum::<i64>() + 3000)]]
        );
        // 3,000 rows in 3 batches over 4 shards: a handful of rounds each, not 3,000.
        assert!(
            nothing <= 30 && updated <= 30,
            "{nothing} and {updated} write requests"
        );
    });
}

/// A small page far into a large table is no "too many rows" error: in key order the
/// OFFSET rows are passed over, and sorted, only OFFSET + LIMIT rows are held.
#[test]
fn a_far_offset_returns_its_few_rows() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, _) = session();
        status(run(&session, "CREATE TABLE wide (id INT PRIMARY KEY)").await);
        for part in 0..2 {
            let values: Vec<String> = (part * 60_000..(part + 1) * 60_000)
                .map(|i| format!("({i})"))
                .collect();
            status(
                run(
                    &session,
                    &format!("INSERT INTO wide VALUES {}", values.join(", ")),
                )
                .await,
            );
        }
        let ids = |values: &[i64]| {
            values
                .iter()
                .map(|&id| vec![Value::Int(id)])
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rows(run(&session, "SELECT id FROM wide LIMIT 2 OFFSET 110000").await),
            ids(&[110_000, 110_001])
        );
        // Ordered by the key it also selects: still scan order.
        assert_eq!(
            rows(
                run(
                    &session,
                    "SELECT id FROM wide ORDER BY id LIMIT 2 OFFSET 110000"
                )
                .await
            ),
            ids(&[110_000, 110_001])
        );
        assert_eq!(
            rows(
                run(
                    &session,
                    "SELECT id FROM wide ORDER BY id DESC LIMIT 2 OFFSET 60000"
                )
                .await
            ),
            ids(&[59_999, 59_998])
        );
        assert!(
            run(&session, "SELECT id FROM wide").await.is_err(),
            "120,000 rows are over the result limit"
        );
    });
}

#[test]
fn drop_table_deletes_every_row_and_an_interrupted_drop_finishes() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, memory) = session();
        status(run(&session, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)").await);
        let values: Vec<String> = (0..2500).map(|i| format!("({i}, 'v{i}')")).collect();
        let insert = format!("INSERT INTO t VALUES {}", values.join(", "));
        assert_eq!(status(run(&session, &insert).await).0, "INSERT 0 2500");
        assert_eq!(
            rows(run(&session, "SELECT COUNT(*) FROM t").await),
            vec![vec![Value::Int(2500)]]
        );
        let (tag, notes) = status(run(&session, "DROP TABLE t").await);
        assert_eq!(tag, "DROP TABLE");
        assert_eq!(notes, vec!["2500 row(s) deleted".to_string()]);
        let (start, end) = rshard_shell::encoding::table_span(1);
        assert!(memory.dump().iter().all(
            |(key, _)| !(key.as_slice() >= start.as_slice() && key.as_slice() < end.as_slice())
        ));
        assert!(matches!(
            run(&session, "SELECT * FROM t").await,
            Err(SqlError::UnknownTable(_))
        ));
        // A new table of the same name gets a new id: nothing of the old one shows.
        status(run(&session, "CREATE TABLE t (id INT PRIMARY KEY)").await);
        assert_eq!(
            rows(run(&session, "SELECT COUNT(*) FROM t").await),
            vec![vec![Value::Int(0)]]
        );
    });
}

#[test]
fn range_plans_read_only_the_rows_they_need() {
    use rshard_shell::catalog;
    use rshard_shell::sql::expr::{bind, Scope};
    use rshard_shell::sql::scan::{plan_range, KeyRange};
    let runtime = runtime();
    runtime.block_on(async {
        let (session, _) = session();
        status(
            run(
                &session,
                "CREATE TABLE t (a INT, b TEXT, v INT, PRIMARY KEY (a, b))",
            )
            .await,
        );
        let table = catalog::table(&session.store, "t").await.expect("exists");
        let plan = |condition: &str| {
            let sql = format!("SELECT * FROM t WHERE {condition}");
            let dialect = rshard_shell::sql::dialect();
            let statement = sqlparser::parser::Parser::parse_sql(&dialect, &sql).expect("parses");
            let sqlparser::ast::Statement::Query(query) = &statement[0] else {
                panic!()
            };
            let sqlparser::ast::SetExpr::Select(select) = &*query.body else {
                panic!()
            };
            let filter = bind(
                select.selection.as_ref().expect("a WHERE"),
                Scope::of(&table),
            )
            .expect("binds");
            plan_range(&table, Some(&filter))
        };
        let key = |values: &[Value]| {
            let refs: Vec<&Value> = values.iter().collect();
            rshard_shell::encoding::row_key(table.id, &refs)
        };
        assert_eq!(
            plan("a = 1 AND b = 'x'"),
            KeyRange::Point(key(&[Value::Int(1), Value::Text("x".into())]))
        );
        assert_eq!(
            plan("'x' = b AND 1 = a AND v > 3"),
            KeyRange::Point(key(&[Value::Int(1), Value::Text("x".into())]))
        );
        match plan("a = 1 AND b >= 'k'") {
            KeyRange::Span { start, end } => {
                assert_eq!(start, key(&[Value::Int(1), Value::Text("k".into())]));
                assert_eq!(
                    end,
                    rshard_shell::encoding::prefix_end(&key(&[Value::Int(1)]))
                );
            }
            other => panic!("{other:?}"),
        }
        match plan("a > 1 AND a <= 5") {
            KeyRange::Span { start, end } => {
                assert_eq!(
                    start,
                    rshard_shell::encoding::prefix_end(&key(&[Value::Int(1)]))
                );
                assert_eq!(
                    end,
                    rshard_shell::encoding::prefix_end(&key(&[Value::Int(5)]))
                );
            }
            other => panic!("{other:?}"),
        }
        // OR, and a key compared with a non-literal, scan the table.
        let whole = KeyRange::Span {
            start: rshard_shell::encoding::table_prefix(table.id),
            end: rshard_shell::encoding::table_span(table.id).1,
        };
        assert_eq!(plan("a = 1 OR a = 2"), whole);
        assert_eq!(plan("a = v"), whole);
        assert_eq!(plan("b = 'x'"), whole);
        // A negative number bounds the range like any literal.
        match plan("a >= -3 AND a < -1") {
            KeyRange::Span { start, end } => {
                assert_eq!(start, key(&[Value::Int(-3)]));
                assert_eq!(end, key(&[Value::Int(-1)]));
            }
            other => panic!("{other:?}"),
        }
        // Past 2^53 an INT compares with a float as a float; the float bounds nothing.
        assert_eq!(plan("a <= 9007199254740992.0"), whole);

        // ... and the rows agree: 2^53 + 1 equals the float 2^53.
        status(run(&session, "CREATE TABLE big (id INT PRIMARY KEY)").await);
        status(
            run(
                &session,
                "INSERT INTO big VALUES (9007199254740993), (-9223372036854775808)",
            )
            .await,
        );
        for condition in ["id <= 9007199254740992.0", "id + 0 <= 9007199254740992.0"] {
            assert_eq!(
                rows(
                    run(
                        &session,
                        &format!("SELECT COUNT(*) FROM big WHERE {condition}")
                    )
                    .await
                ),
                vec![vec![Value::Int(2)]],
                "{condition}"
            );
        }
        assert_eq!(
            rows(
                run(
                    &session,
                    "SELECT id FROM big WHERE id = -9223372036854775808"
                )
                .await
            ),
            vec![vec![Value::Int(i64::MIN)]]
        );
        assert!(
            run(&session, "INSERT INTO big VALUES (-9223372036854775809)")
                .await
                .is_err(),
            "a number below the INT range is not stored as its minimum"
        );
        assert!(
            run(&session, "SELECT - -9223372036854775808")
                .await
                .is_err(),
            "overflow"
        );
    });
}

#[test]
fn garbage_gets_an_error_and_changes_nothing() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, memory) = session();
        status(run(&session, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)").await);
        status(run(&session, "INSERT INTO t VALUES (1, 'a')").await);
        let before = memory.dump();
        let mut rng = rshard_common::rng::SeededRng::new(7);
        let mut inputs: Vec<String> = vec![
            "DROP DATABASE x".into(),
            "SELECT * FROM t JOIN t ON true".into(),
            "SELECT v, COUNT(*) FROM t GROUP BY v".into(),
            "CREATE INDEX i ON t (v)".into(),
            "SELECT (((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1)))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))".into(),
            format!("INSERT INTO t VALUES (2, '{}')", "x".repeat(2 << 20)),
            format!("SELECT {}", "1 + ".repeat(100_000)),
            "PUT '/t/1/x' 'y'".into(),
            "PUT '/s/table/t' 'y'".into(),
            "DEL '/s/table/t'".into(),
            "GET '\\q'".into(),
            "ALTER SHARD 1 MERGE".into(),
            "INSERT INTO t VALUES (3, 'x') ON CONFLICT (v) DO NOTHING".into(),
            "UPDATE t SET v = 'x' WHERE".into(),
            "'".into(),
            "\u{0}".into(),
        ];
        for _ in 0..300 {
            let length = rng.below(64) as usize;
            let bytes: Vec<u8> = (0..length).map(|_| rng.below(256) as u8).collect();
            inputs.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        for input in &inputs {
            let result = run(&session, input).await;
            let shown: String = input.chars().take(80).collect();
            if let Ok(outcome) = &result {
                // Random bytes may spell something harmless; it must not be a write.
                assert!(
                    !matches!(outcome, Outcome::Status { .. }),
                    "{shown:?} ran as a command: {outcome:?}"
                );
            }
            let text = rshard_shell::session::error_text(input, &match result {
                Err(error) => error,
                Ok(_) => continue,
            });
            assert!(text.starts_with("ERROR: "), "{text}");
            assert!(!text.contains("Error {") && !text.contains("panicked"), "{text}");
        }
        assert_eq!(memory.dump(), before);
    });
}

#[test]
fn syntax_errors_show_a_caret_under_the_position() {
    let runtime = runtime();
    runtime.block_on(async {
        let (session, _) = session();
        let text = session
            .run("SELECT * FROM t WHERE id = = 1")
            .await
            .expect_err("an error");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ERROR: syntax error"), "{text}");
        assert_eq!(lines[1], "LINE 1: SELECT * FROM t WHERE id = = 1");
        let caret = lines[2].find('^').expect("a caret");
        assert_eq!(&lines[1][caret..], "= 1", "{text}");
    });
}
