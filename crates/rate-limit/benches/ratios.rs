//! The variants of `overhead`, measured in turn round after round; each figure is the best
//! round, so a burst of load from other processes skews no ratio. Prints ns per call and the
//! ratios the layer is judged by.
//!
//! `cargo bench -p wsguard-rate-limit --bench ratios`
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;

use common::{VARIANTS, Variants};

const ROUNDS: usize = 30;
const CALLS: u64 = 200_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built and run by `cargo test --benches`: measure only under `cargo bench`
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let variants = Variants::new();
    for threads in [1u64, 2] {
        let mut best: HashMap<&str, f64> = HashMap::new();
        for _ in 0..ROUNDS {
            for name in VARIANTS {
                let ns = variants.time(name, threads, CALLS).as_nanos() as f64 / CALLS as f64;
                let entry = best.entry(name).or_insert(f64::MAX);
                *entry = entry.min(ns);
            }
        }
        println!("{threads} thread(s), best of {ROUNDS} rounds of {CALLS} calls, ns per call:");
        for name in VARIANTS {
            println!("  {name:<26} {:>8.1}", best[name]);
        }
        let ratio = |a: &str, b: &str| best[a] / best[b];
        let cost = |a: &str| best[a] - best["bare"];
        println!(
            "  layer (messages) cost / governor cost   {:>6.2}",
            cost("layer_messages") / cost("governor_direct")
        );
        println!(
            "  layer (both limits) cost / governor     {:>6.2}",
            cost("layer_messages_and_bytes") / cost("governor_direct")
        );
        println!(
            "  stack with / stack without              {:>6.2}",
            ratio("stack_with", "stack_without")
        );
    }
}
