//! A tiny in-memory reference model of the shell's SQL, and a seeded workload that runs the
//! same statements on the shell and on the model. Shared by the shell crate's tests (on the
//! in-memory store) and the end-to-end test (on a live cluster).
//!
//! The model is written from SQL's rules, not from the shell's code: rows keyed by a tuple
//! in a BTreeMap, predicates in SQL's three-valued logic, ORDER BY with NULLs last
//! ascending and first descending, ties in primary key order.

#![allow(dead_code)]

use std::cmp::Ordering;
use std::collections::BTreeMap;

use rshard_common::rng::SeededRng;
use rshard_shell::session::Session;
use rshard_shell::sql::Outcome;
use rshard_shell::value::Value;

#[derive(Clone, Debug, PartialEq)]
struct Row {
    v: Option<i64>,
    s: Option<String>,
    b: Option<bool>,
}

type Key = (i64, String);

#[derive(Clone, Debug)]
struct Table {
    composite: bool,
    rows: BTreeMap<Key, Row>,
}

#[derive(Debug, Default)]
pub struct Model {
    tables: BTreeMap<String, Table>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    Rows(Vec<String>, Vec<Vec<Value>>),
    Status(String),
    Error,
}

#[derive(Clone, Debug)]
enum Pred {
    KeyEq(i64),
    KeyBetween(i64, i64),
    KeyGt(i64),
    KeyLt(i64),
    VGt(i64),
    VIsNull,
    SEq(&'static str),
    BTrue,
    Not(Box<Pred>),
    And(Box<Pred>, Box<Pred>),
    Or(Box<Pred>, Box<Pred>),
}

const TEXTS: [&str; 4] = ["x", "y", "z", ""];
const KEY_TEXTS: [&str; 3] = ["a", "b", "c"];
const KEYS: u64 = 30;

impl Pred {
    fn sql(&self) -> String {
        match self {
            Pred::KeyEq(i) => format!("k = {i}"),
            Pred::KeyBetween(a, b) => format!("k BETWEEN {a} AND {b}"),
            Pred::KeyGt(i) => format!("k > {i}"),
            Pred::KeyLt(i) => format!("{i} > k"),
            Pred::VGt(i) => format!("v > {i}"),
            Pred::VIsNull => "v IS NULL".to_string(),
            Pred::SEq(s) => format!("s = '{s}'"),
            Pred::BTrue => "b = true".to_string(),
            Pred::Not(p) => format!("NOT ({})", p.sql()),
            Pred::And(a, b) => format!("({}) AND ({})", a.sql(), b.sql()),
            Pred::Or(a, b) => format!("({}) OR ({})", a.sql(), b.sql()),
        }
    }

    fn eval(&self, key: &Key, row: &Row) -> Option<bool> {
        match self {
            Pred::KeyEq(i) => Some(key.0 == *i),
            Pred::KeyBetween(a, b) => Some(*a <= key.0 && key.0 <= *b),
            Pred::KeyGt(i) => Some(key.0 > *i),
            Pred::KeyLt(i) => Some(key.0 < *i),
            Pred::VGt(i) => row.v.map(|v| v > *i),
            Pred::VIsNull => Some(row.v.is_none()),
            Pred::SEq(s) => row.s.as_ref().map(|x| x == s),
            Pred::BTrue => row.b,
            Pred::Not(p) => p.eval(key, row).map(|b| !b),
            Pred::And(a, b) => match (a.eval(key, row), b.eval(key, row)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Pred::Or(a, b) => match (a.eval(key, row), b.eval(key, row)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }
}

fn int(v: Option<i64>) -> Value {
    v.map_or(Value::Null, Value::Int)
}

fn text(s: &Option<String>) -> Value {
    s.clone().map_or(Value::Null, Value::Text)
}

fn sql_int(v: Option<i64>) -> String {
    v.map_or("NULL".to_string(), |v| v.to_string())
}

fn sql_text(s: &Option<String>) -> String {
    s.as_ref().map_or("NULL".to_string(), |s| format!("'{s}'"))
}

fn sql_bool(b: Option<bool>) -> String {
    b.map_or("NULL".to_string(), |b| b.to_string())
}

/// The seeded statement generator.
#[derive(Debug)]
pub struct Workload {
    rng: SeededRng,
    model: Model,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            rng: SeededRng::new(seed),
            model: Model::default(),
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    fn pick_text(&mut self) -> Option<String> {
        if self.rng.chance(0.2) {
            None
        } else {
            Some(TEXTS[self.below(TEXTS.len() as u64) as usize].to_string())
        }
    }

    fn pick_row(&mut self) -> Row {
        Row {
            v: if self.rng.chance(0.2) {
                None
            } else {
                Some(self.below(25) as i64 - 5)
            },
            s: self.pick_text(),
            b: match self.below(3) {
                0 => None,
                1 => Some(true),
                _ => Some(false),
            },
        }
    }

    fn pick_key(&mut self, composite: bool) -> Key {
        let k = self.below(KEYS) as i64;
        let k2 = if composite {
            KEY_TEXTS[self.below(3) as usize].to_string()
        } else {
            String::new()
        };
        (k, k2)
    }

    fn pick_pred(&mut self, depth: u32) -> Pred {
        let k = self.below(KEYS) as i64;
        match self.below(if depth > 1 { 8 } else { 11 }) {
            0 => Pred::KeyEq(k),
            1 => Pred::KeyBetween(k, k + self.below(10) as i64),
            2 => Pred::KeyGt(k),
            3 => Pred::KeyLt(k),
            4 => Pred::VGt(self.below(20) as i64 - 5),
            5 => Pred::VIsNull,
            6 => Pred::SEq(TEXTS[self.below(4) as usize]),
            7 => Pred::BTrue,
            8 => Pred::Not(Box::new(self.pick_pred(depth + 1))),
            9 => Pred::And(
                Box::new(self.pick_pred(depth + 1)),
                Box::new(self.pick_pred(depth + 1)),
            ),
            _ => Pred::Or(
                Box::new(self.pick_pred(depth + 1)),
                Box::new(self.pick_pred(depth + 1)),
            ),
        }
    }

    fn values_sql(composite: bool, key: &Key, row: &Row) -> String {
        let k2 = if composite {
            format!(", '{}'", key.1)
        } else {
            String::new()
        };
        format!(
            "({}{k2}, {}, {}, {})",
            key.0,
            sql_int(row.v),
            sql_text(&row.s),
            sql_bool(row.b)
        )
    }

    fn columns(composite: bool) -> &'static str {
        if composite {
            "k, k2, v, s, b"
        } else {
            "k, v, s, b"
        }
    }

    fn full_row(composite: bool, key: &Key, row: &Row) -> Vec<Value> {
        let mut values = vec![Value::Int(key.0)];
        if composite {
            values.push(Value::Text(key.1.clone()));
        }
        values.extend([
            int(row.v),
            text(&row.s),
            row.b.map_or(Value::Null, Value::Bool),
        ]);
        values
    }

    /// The next statement and what the model says it gives (the model is updated).
    pub fn next(&mut self) -> (String, Expected) {
        let names: Vec<String> = self.model.tables.keys().cloned().collect();
        if names.is_empty() || (names.len() < 3 && self.rng.chance(0.05)) {
            let name = format!("t{}", self.below(3));
            if self.model.tables.contains_key(&name) {
                return (
                    format!("CREATE TABLE {name} (k INT PRIMARY KEY, v INT)"),
                    Expected::Error,
                );
            }
            let composite = self.rng.chance(0.5);
            let sql = if composite {
                format!("CREATE TABLE {name} (k INT, k2 TEXT, v INT, s TEXT, b BOOL, PRIMARY KEY (k, k2))")
            } else {
                format!("CREATE TABLE {name} (k BIGINT PRIMARY KEY, v INT, s VARCHAR, b BOOLEAN)")
            };
            self.model.tables.insert(
                name,
                Table {
                    composite,
                    rows: BTreeMap::new(),
                },
            );
            return (sql, Expected::Status("CREATE TABLE".to_string()));
        }
        let name = names[self.below(names.len() as u64) as usize].clone();
        let composite = self.model.tables[&name].composite;
        let choice = self.below(100);
        match choice {
            0 => {
                self.model.tables.remove(&name);
                (
                    format!("DROP TABLE {name}"),
                    Expected::Status("DROP TABLE".to_string()),
                )
            }
            1 => ("SELECT * FROM missing".to_string(), Expected::Error),
            2..=16 => {
                // Fresh rows only: a plain multi-row INSERT that fails part-way is not atomic
                // across shards, so collisions are tested one row at a time (below).
                let count = 1 + self.below(20);
                let mut rows = Vec::new();
                let mut seen = std::collections::BTreeSet::new();
                for _ in 0..count {
                    let key = self.pick_key(composite);
                    if self.model.tables[&name].rows.contains_key(&key) || !seen.insert(key.clone())
                    {
                        continue;
                    }
                    rows.push((key, self.pick_row()));
                }
                if rows.is_empty() {
                    return (
                        "SELECT 1".to_string(),
                        Expected::Rows(vec!["?column?".into()], vec![vec![Value::Int(1)]]),
                    );
                }
                let values: Vec<String> = rows
                    .iter()
                    .map(|(k, r)| Self::values_sql(composite, k, r))
                    .collect();
                let sql = format!(
                    "INSERT INTO {name} ({}) VALUES {}",
                    Self::columns(composite),
                    values.join(", ")
                );
                let n = rows.len();
                let table = self.model.tables.get_mut(&name).expect("exists");
                table.rows.extend(rows);
                (sql, Expected::Status(format!("INSERT 0 {n}")))
            }
            17..=20 => {
                let key = self.pick_key(composite);
                let row = self.pick_row();
                let sql = format!(
                    "INSERT INTO {name} VALUES {}",
                    Self::values_sql(composite, &key, &row)
                );
                let table = self.model.tables.get_mut(&name).expect("exists");
                match table.rows.entry(key) {
                    std::collections::btree_map::Entry::Occupied(_) => (sql, Expected::Error),
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        entry.insert(row);
                        (sql, Expected::Status("INSERT 0 1".to_string()))
                    }
                }
            }
            21..=35 => {
                let count = 1 + self.below(12);
                let mut rows = BTreeMap::new();
                for _ in 0..count {
                    let key = self.pick_key(composite);
                    let row = self.pick_row();
                    rows.insert(key, row);
                }
                let values: Vec<String> = rows
                    .iter()
                    .map(|(k, r)| Self::values_sql(composite, k, r))
                    .collect();
                let n = rows.len();
                let mode = self.below(3);
                let table = self.model.tables.get_mut(&name).expect("exists");
                let (sql, affected) = match mode {
                    0 => {
                        let sql = format!("UPSERT INTO {name} VALUES {}", values.join(", "));
                        table.rows.extend(rows);
                        (sql, n)
                    }
                    1 => {
                        let sql = format!(
                            "INSERT INTO {name} VALUES {} ON CONFLICT DO NOTHING",
                            values.join(", ")
                        );
                        let mut added = 0;
                        for (key, row) in rows {
                            if let std::collections::btree_map::Entry::Vacant(e) =
                                table.rows.entry(key)
                            {
                                e.insert(row);
                                added += 1;
                            }
                        }
                        (sql, added)
                    }
                    _ => {
                        let target = if composite { "(k, k2)" } else { "(k)" };
                        let sql = format!(
                            "INSERT INTO {name} VALUES {} ON CONFLICT {target} DO UPDATE SET v = EXCLUDED.v, s = {name}.s",
                            values.join(", ")
                        );
                        for (key, row) in rows {
                            match table.rows.get_mut(&key) {
                                Some(existing) => existing.v = row.v,
                                None => {
                                    table.rows.insert(key, row);
                                }
                            }
                        }
                        (sql, n)
                    }
                };
                (sql, Expected::Status(format!("INSERT 0 {affected}")))
            }
            36..=50 => {
                let pred = self.pick_pred(0);
                let add = self.below(5) as i64 - 2;
                let new_s = self.pick_text();
                let set_text = self.rng.chance(0.5);
                let sql = if set_text {
                    format!(
                        "UPDATE {name} SET v = v + {add}, s = {} WHERE {}",
                        sql_text(&new_s),
                        pred.sql()
                    )
                } else {
                    format!("UPDATE {name} SET v = v + {add} WHERE {}", pred.sql())
                };
                let table = self.model.tables.get_mut(&name).expect("exists");
                let mut count = 0;
                for (key, row) in table.rows.iter_mut() {
                    if pred.eval(key, row) == Some(true) {
                        row.v = row.v.map(|v| v + add);
                        if set_text {
                            row.s = new_s.clone();
                        }
                        count += 1;
                    }
                }
                (sql, Expected::Status(format!("UPDATE {count}")))
            }
            51..=58 => {
                let pred = self.pick_pred(0);
                let sql = format!("DELETE FROM {name} WHERE {}", pred.sql());
                let table = self.model.tables.get_mut(&name).expect("exists");
                let before = table.rows.len();
                table
                    .rows
                    .retain(|key, row| pred.eval(key, row) != Some(true));
                let count = before - table.rows.len();
                (sql, Expected::Status(format!("DELETE {count}")))
            }
            59..=68 => {
                let pred = self.pick_pred(0);
                let sql = format!(
                    "SELECT COUNT(*), SUM(v), MIN(s), MAX(v), COUNT(b) FROM {name} WHERE {}",
                    pred.sql()
                );
                let table = &self.model.tables[&name];
                let matching: Vec<&Row> = table
                    .rows
                    .iter()
                    .filter(|(k, r)| pred.eval(k, r) == Some(true))
                    .map(|(_, r)| r)
                    .collect();
                let vs: Vec<i64> = matching.iter().filter_map(|r| r.v).collect();
                let ss: Vec<&String> = matching.iter().filter_map(|r| r.s.as_ref()).collect();
                let row = vec![
                    Value::Int(matching.len() as i64),
                    if vs.is_empty() {
                        Value::Null
                    } else {
                        Value::Int(vs.iter().sum())
                    },
                    ss.iter()
                        .min()
                        .map_or(Value::Null, |s| Value::Text((*s).clone())),
                    vs.iter().max().map_or(Value::Null, |v| Value::Int(*v)),
                    Value::Int(matching.iter().filter(|r| r.b.is_some()).count() as i64),
                ];
                let columns = ["count", "sum", "min", "max", "count"]
                    .map(String::from)
                    .to_vec();
                (sql, Expected::Rows(columns, vec![row]))
            }
            _ => {
                let pred = self.pick_pred(0);
                let order = self.below(5);
                let limit = if self.rng.chance(0.5) {
                    Some(self.below(8))
                } else {
                    None
                };
                let order_sql = match order {
                    0 => "",
                    1 => " ORDER BY v",
                    2 => " ORDER BY v DESC",
                    3 => " ORDER BY s DESC, k",
                    _ => " ORDER BY k DESC",
                };
                let limit_sql = limit.map_or(String::new(), |l| format!(" LIMIT {l}"));
                let sql = format!(
                    "SELECT * FROM {name} WHERE {}{order_sql}{limit_sql}",
                    pred.sql()
                );
                let table = &self.model.tables[&name];
                let mut rows: Vec<(&Key, &Row)> = table
                    .rows
                    .iter()
                    .filter(|(k, r)| pred.eval(k, r) == Some(true))
                    .collect();
                // NULLs last ascending, first descending; stable: ties stay in key order.
                fn nulls<T: Ord>(a: &Option<T>, b: &Option<T>, descending: bool) -> Ordering {
                    match (a, b) {
                        (None, None) => Ordering::Equal,
                        (None, Some(_)) => {
                            if descending {
                                Ordering::Less
                            } else {
                                Ordering::Greater
                            }
                        }
                        (Some(_), None) => {
                            if descending {
                                Ordering::Greater
                            } else {
                                Ordering::Less
                            }
                        }
                        (Some(a), Some(b)) => {
                            if descending {
                                b.cmp(a)
                            } else {
                                a.cmp(b)
                            }
                        }
                    }
                }
                match order {
                    1 => rows.sort_by(|a, b| nulls(&a.1.v, &b.1.v, false)),
                    2 => rows.sort_by(|a, b| nulls(&a.1.v, &b.1.v, true)),
                    3 => rows.sort_by(|a, b| nulls(&a.1.s, &b.1.s, true).then(a.0 .0.cmp(&b.0 .0))),
                    4 => rows.sort_by_key(|row| std::cmp::Reverse(row.0 .0)),
                    _ => {}
                }
                let rows: Vec<Vec<Value>> = rows
                    .into_iter()
                    .take(limit.map_or(usize::MAX, |l| l as usize))
                    .map(|(k, r)| Self::full_row(composite, k, r))
                    .collect();
                let columns = Self::columns(composite)
                    .split(", ")
                    .map(String::from)
                    .collect();
                (sql, Expected::Rows(columns, rows))
            }
        }
    }
}

/// Runs `steps` statements of workload `seed` on `session` and on the model; panics at the
/// first difference, naming the seed and the statement.
pub async fn run_differential(session: &Session, seed: u64, steps: usize, replay: &str) {
    let mut workload = Workload::new(seed);
    for step in 0..steps {
        let (sql, expected) = workload.next();
        let got = session.execute(&sql).await;
        let got = match got {
            Ok(Outcome::Rows { columns, rows }) => Expected::Rows(columns, rows),
            Ok(Outcome::Status { tag, .. }) => Expected::Status(tag),
            Err(_) => Expected::Error,
        };
        assert_eq!(
            got, expected,
            "seed {seed}, step {step}: {sql}\nreplay: {replay}"
        );
    }
}
