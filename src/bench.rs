//! `rshard bench`: a load generator against a running cluster.
//!
//! N concurrent clients (tasks sharing one routing client, so one QUIC connection per node
//! and one stream per request) each loop for the duration: pick a key uniformly from the
//! key space, put (a fresh value) or get it by the mix. Latency is recorded per operation in
//! an HDR histogram (microseconds, 3 significant digits); a progress line goes to stderr
//! every second; the summary gives ops/s and p50/p99/p999 per kind.
//! The first `--warmup` is run but not counted, and neither is an operation that ends after
//! the measured window: ops/s is what completed inside it.
//!
//! The clients run on `--threads` runtime threads, one by default: a load generator on the
//! same machine as the cluster competes with it for cores, and one thread does the work
//! with the fewest cross-thread wake-ups (see docs/perf.md for the measured difference).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

use crate::kv::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Runtime threads the clients run on (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// How long to measure, e.g. 30s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Run this long before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Percent of operations that are puts (the rest are gets).
    #[arg(long, default_value_t = 100)]
    put_percent: u8,
    #[arg(long, default_value_t = 16)]
    key_bytes: usize,
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Distinct keys the clients pick from.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Seeds the key choice of every client.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Parses `30s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|at| text.split_at(at))
        .unwrap_or((text, "s"));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("unknown unit in {text:?} (use ms, s or m)")),
    }
}

#[derive(Clone)]
struct Recorded {
    puts: Histogram<u64>,
    gets: Histogram<u64>,
    errors: u64,
    /// The first error seen (warmup included), to say what went wrong.
    first_error: Option<String>,
}

impl Recorded {
    fn new() -> anyhow::Result<Self> {
        let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3);
        Ok(Recorded {
            puts: histogram().context("histogram")?,
            gets: histogram().context("histogram")?,
            errors: 0,
            first_error: None,
        })
    }
}

/// One xorshift step: the key choice needs speed and a seed, not quality.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn key(index: u64, bytes: usize) -> Vec<u8> {
    let mut key = format!("bench/{index:010}").into_bytes();
    key.resize(bytes.max(1), b'.');
    key
}

pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    if args.clients == 0 || args.keys == 0 || args.put_percent > 100 {
        bail!("need at least one client and one key, and a put percent of at most 100");
    }
    let client = Arc::new(args.client.client()?);
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let measure_until = measure_from + args.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..args.clients {
        let (client, stop, completed) = (client.clone(), stop.clone(), completed.clone());
        let mut recorded = Recorded::new()?;
        let (keys, key_bytes, value_bytes, put_percent) = (
            args.keys,
            args.key_bytes,
            args.value_bytes,
            u64::from(args.put_percent),
        );
        let mut state = args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (index as u64 + 1);
        tasks.push(tokio::spawn(async move {
            let mut value = vec![b'v'; value_bytes];
            while !stop.load(Ordering::Relaxed) {
                let pick = next_random(&mut state);
                let key = key(pick % keys, key_bytes);
                let is_put = next_random(&mut state) % 100 < put_percent;
                let began = Instant::now();
                let result = if is_put {
                    if let Some(first) = value.first_mut() {
                        *first = b'a' + (pick % 26) as u8;
                    }
                    client.put(&key, &value).await
                } else {
                    client.get(&key).await.map(|_| ())
                };
                if let (Err(error), None) = (&result, &recorded.first_error) {
                    recorded.first_error = Some(error.to_string());
                }
                let ended = Instant::now();
                if began < measure_from || ended > measure_until {
                    continue;
                }
                let micros = ended.duration_since(began).as_micros().max(1) as u64;
                match result {
                    Ok(()) if is_put => recorded.puts.saturating_record(micros),
                    Ok(()) => recorded.gets.saturating_record(micros),
                    Err(_) => recorded.errors += 1,
                }
                completed.fetch_add(1, Ordering::Relaxed);
            }
            recorded
        }));
    }
    let mut last = 0;
    while Instant::now() < measure_until {
        tokio::time::sleep(Duration::from_secs(1).min(measure_until - Instant::now())).await;
        let done = completed.load(Ordering::Relaxed);
        let phase = if Instant::now() < measure_from {
            "warmup"
        } else {
            "measuring"
        };
        eprintln!(
            "[{:>5.1}s] {phase}: {} ops/s, {done} ops counted",
            started.elapsed().as_secs_f64(),
            done - last
        );
        last = done;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Recorded::new()?;
    for task in tasks {
        let recorded = task.await?;
        total.puts.add(&recorded.puts).context("merging")?;
        total.gets.add(&recorded.gets).context("merging")?;
        total.errors += recorded.errors;
        total.first_error = total.first_error.or(recorded.first_error);
    }
    let seconds = args.duration.as_secs_f64();
    println!(
        "clients {} duration {:?} put {}% key {} B value {} B keys {}",
        args.clients, args.duration, args.put_percent, args.key_bytes, args.value_bytes, args.keys
    );
    for (kind, histogram) in [("put", &total.puts), ("get", &total.gets)] {
        if histogram.is_empty() {
            continue;
        }
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        println!(
            "{kind}: {:.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  ({} ops)",
            histogram.len() as f64 / seconds,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0,
            histogram.len()
        );
    }
    match &total.first_error {
        Some(error) => println!("errors: {} (first: {error})", total.errors),
        None => println!("errors: 0"),
    }
    Ok(u8::from(total.errors > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("1h").is_err() && parse_duration("fast").is_err());
    }
}
