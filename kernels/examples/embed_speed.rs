//! In-process embedding speed of all-MiniLM-L6-v2 at a few batch sizes of 128-token inputs (what
//! `tools/bench_embed.py` measures over HTTP, without the server around it).
//!
//! `cargo run --release -p kernels --example embed_speed [-- MODEL_DIR]`

use std::time::Instant;

use kernels::{EmbeddingModel, LoadOptions};

fn main() {
    // The server's allocator thresholds and libtorch spin (re-executes once).
    kernels::torch::init_process();
    // EMBED_SPEED_THREAD=1: run on a spawned thread, as the server's engine does.
    if std::env::var_os("EMBED_SPEED_THREAD").is_some() {
        std::thread::spawn(run).join().unwrap();
    } else {
        run();
    }
}

fn run() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "models/all-MiniLM-L6-v2".into());
    let mut m = EmbeddingModel::load(dir.as_ref(), LoadOptions::default(), None, &mut |_, _| {}).unwrap();
    let input: Vec<u32> = std::iter::once(101).chain((0..126).map(|i| 2000 + i * 37 % 5000)).chain([102]).collect();
    for batch in [1usize, 8, 32] {
        let inputs: Vec<&[u32]> = vec![&input; batch];
        m.embed(&inputs).unwrap();
        let reps = (64 / batch).max(3);
        let t = Instant::now();
        // EMBED_SPEED_GAP_MS: idle time between calls, as between a server's requests (not counted).
        let gap = std::env::var("EMBED_SPEED_GAP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0u64);
        let mut busy = std::time::Duration::ZERO;
        for _ in 0..reps {
            std::thread::sleep(std::time::Duration::from_millis(gap));
            let t = Instant::now();
            m.embed(&inputs).unwrap();
            busy += t.elapsed();
        }
        let _ = t;
        let per_call = busy.as_secs_f64() / reps as f64;
        println!("batch {batch:>2}: {:.1} ms per call, {:.1} inputs/s", per_call * 1e3, batch as f64 / per_call);
    }
}
