//! A stable-toolchain driver for neonet's fuzz targets (no libFuzzer, no coverage feedback):
//! seeded random inputs and mutations of a growing corpus (bit flips, interesting bytes,
//! inserted, deleted and duplicated runs, splices), each run under `catch_unwind`. A panic
//! writes the input to `fuzz/artifacts/<target>/crash-<n>` and the run exits 1.
//!
//! `fuzz-stable TARGET|all EXECUTIONS [SEED]`

use std::panic;
use std::time::Instant;

use neonet_fuzz::{run, TARGETS};

/// Largest input generated, bytes: room for several frames and a big blueprint.
const INPUT_BYTES_MAX: usize = 16 * 1024;
/// Inputs kept to mutate further (oldest replaced): enough variety, bounded memory.
const CORPUS_MAX: usize = 4096;

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    const INTERESTING: [u8; 12] = [0, 1, 2, 0x7f, 0x80, 0xff, 0x10, 0x20, 0x40, 0x3f, 0x7e, 0xfe];
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(64);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                input.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let run: Vec<u8> = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, run);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - i);
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            _ => {
                let n = rng.below(64);
                input.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    input.truncate(INPUT_BYTES_MAX);
}

fn fuzz(target: &str, execs: u64, seed: u64) -> bool {
    let mut rng = Rng(seed | 1);
    let mut corpus: Vec<Vec<u8>> = vec![Vec::new()];
    let started = Instant::now();
    let mut input = Vec::new();
    for n in 0..execs {
        input.clear();
        if rng.below(16) == 0 || corpus.is_empty() {
            let len = rng.below(512);
            input.extend((0..len).map(|_| rng.next() as u8));
        } else {
            input.extend_from_slice(&corpus[rng.below(corpus.len())]);
            mutate(&mut rng, &corpus, &mut input);
        }
        let data = input.clone();
        let result = panic::catch_unwind(|| run(target, &data));
        if result.is_err() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("artifacts")
                .join(target);
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("crash-{n}"));
            let _ = std::fs::write(&path, &data);
            eprintln!("{target}: CRASH at execution {n}, input in {}", path.display());
            return false;
        }
        if rng.below(64) == 0 {
            if corpus.len() >= CORPUS_MAX {
                let i = rng.below(corpus.len());
                corpus[i] = data;
            } else {
                corpus.push(data);
            }
        }
        if n > 0 && n % 1_000_000 == 0 {
            eprintln!(
                "{target}: {n} executions, {:.0}/s",
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "{target}: {execs} executions, 0 crashes, {:.1} s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
    true
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(target), Some(execs)) = (args.first(), args.get(1).and_then(|n| n.parse().ok()))
    else {
        eprintln!("usage: fuzz-stable TARGET|all EXECUTIONS [SEED]; targets: {TARGETS:?}");
        std::process::exit(2);
    };
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    // Panics are expected to be caught and reported once, not printed for every input.
    panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let targets: Vec<&str> = if target == "all" {
        TARGETS.to_vec()
    } else if TARGETS.contains(&target.as_str()) {
        vec![target.as_str()]
    } else {
        eprintln!("unknown target {target}; targets: {TARGETS:?}");
        std::process::exit(2);
    };
    let mut ok = true;
    for t in targets {
        ok &= fuzz(t, execs, seed);
    }
    std::process::exit(if ok { 0 } else { 1 });
}
