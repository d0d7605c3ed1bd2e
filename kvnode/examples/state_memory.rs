//! Measures what the state machine costs in memory, with the node's allocator (mimalloc):
//! resident bytes per key after a fill through `apply` (the real path), after overwrites while
//! a clone (a snapshot's frozen view) is held, and after a restore from a snapshot file (in a
//! fresh process: the allocator keeps freed memory, so the first process's RSS would count the
//! dropped state's pages again).
//!
//! `cargo run --release -p kvnode --example state_memory -- [KEYS] [VALUE_BYTES]`
//! (defaults: 2000000 keys of 256 bytes; keys are `k0`, `k1`, ... as `bench scale` writes).

use std::io::{BufWriter, Write};

use bytes::Bytes;
use kvstate::{Command, KeyOp, Op, StateMachine};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = (statm.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn put(key: u64, value: &Bytes, seq: u64) -> Vec<u8> {
    let command = Command {
        owner: "client1".into(),
        client_id: seq % 64,
        seq,
        op: Op::Key(KeyOp::Put {
            key: Bytes::from(format!("k{key}")),
            value: value.clone(),
        }),
    };
    command.encode().expect("a put encodes")
}

/// Prints the RSS growth since `base` per key and over the payload.
fn report(what: &str, base: u64, keys: u64, payload: u64) {
    let rss = rss_bytes();
    let delta = rss.saturating_sub(base);
    println!(
        "{what:<46} rss {:>6} MB  +{:>6} MB  {:>5.0} B/key  {:.2}x payload",
        rss >> 20,
        delta >> 20,
        delta as f64 / keys as f64,
        delta as f64 / payload as f64
    );
}

/// The second process: restores the snapshot file at `path` on a thread of its own that then
/// exits (as a node's snapshot loader does), reports, then overwrites every key on the main
/// thread (as a wiped follower catching up does) and reports again.
fn restore(
    path: &str,
    keys: u64,
    value_bytes: usize,
    payload: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let base = rss_bytes();
    let started = std::time::Instant::now();
    let file = std::fs::File::open(path)?;
    let loader = std::thread::spawn(move || StateMachine::restore_from(file));
    let mut restored = loader.join().map_err(|_| "the loader thread panicked")??;
    println!(
        "  restored {} keys in {:.1} s",
        restored.len(),
        started.elapsed().as_secs_f64()
    );
    let report = |what: &str| report(what, base, keys, payload);
    report("restored on a thread (a fresh process)");
    let value = Bytes::from(vec![b'w'; value_bytes]);
    let mut index = restored.applied_index();
    for key in 0..keys {
        index += 1;
        restored.apply(index, &put(key, &value, index));
    }
    report("then overwrote every key on the main thread");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let restore_path = match args.peek().map(String::as_str) {
        Some("--restore") => {
            args.next();
            args.next()
        }
        _ => None,
    };
    let keys: u64 = args.next().map_or(Ok(2_000_000), |a| a.parse())?;
    let value_bytes: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    let payload = keys * (value_bytes as u64 + format!("k{}", keys / 2).len() as u64);
    if let Some(path) = restore_path {
        return restore(&path, keys, value_bytes, payload);
    }
    let report = |what: &str, base: u64| report(what, base, keys, payload);
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let base = rss_bytes();
    let mut state = StateMachine::new();
    let mut index = 0;
    let started = std::time::Instant::now();
    for key in 0..keys {
        index += 1;
        state.apply(index, &put(key, &value, index));
    }
    let fill_s = started.elapsed().as_secs_f64();
    report("filled through apply", base);
    println!("  fill: {:.0} applies/s", keys as f64 / fill_s);

    // A frozen view (a snapshot's clone) held while 1% of the keys are overwritten in a
    // scattered order: enough to write to every shard, so every shard is copied once.
    let frozen = state.clone();
    let step = 7_919; // a prime: visits distinct keys when keys is not a multiple of it
    let overwrite = |state: &mut StateMachine, count: u64, index: &mut u64| {
        let started = std::time::Instant::now();
        for i in 0..count {
            *index += 1;
            let key = (i * step) % keys;
            state.apply(*index, &put(key, &value, *index));
        }
        println!(
            "  overwrote {count} keys: {:.0} applies/s",
            count as f64 / started.elapsed().as_secs_f64()
        );
    };
    overwrite(&mut state, keys / 100, &mut index);
    report("overwrote 1% of the keys while a clone is held", base);
    drop(frozen);
    report("clone dropped", base);
    overwrite(&mut state, keys, &mut index);
    report("then overwrote every key", base);

    let path = std::env::temp_dir().join(format!("state-memory-{}.snap", std::process::id()));
    let started = std::time::Instant::now();
    {
        let mut out = BufWriter::new(std::fs::File::create(&path)?);
        state.write_snapshot(&mut out)?;
        out.flush()?;
    }
    println!(
        "  snapshot written in {:.1} s ({} MB)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&path)?.len() >> 20
    );
    drop(state);
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--restore")
        .arg(&path)
        .arg(keys.to_string())
        .arg(value_bytes.to_string())
        .status();
    std::fs::remove_file(&path)?;
    if !status?.success() {
        return Err("the restoring process failed".into());
    }
    Ok(())
}
