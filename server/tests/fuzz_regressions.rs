//! Replays every input committed for the `cargo fuzz` targets (`fuzz/corpus/<target>/`, the
//! seeds, and `fuzz/regressions/<target>/`, what the fuzzers found) through the same code the
//! targets run (`server::fuzzing`), so a fixed crash stays fixed in every `cargo test`.

use std::path::Path;

#[test]
fn committed_fuzz_inputs_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, run) in server::fuzzing::TARGETS {
        let mut replayed = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{name}: {} panics", path.display());
                replayed += 1;
            }
        }
        assert!(
            replayed > 0,
            "{name}: no committed input (fuzz/corpus/{name}/ is empty)"
        );
    }
}

/// A few seconds per target of random mutations of the committed inputs (bit flips, byte
/// changes, cuts, splices), in the ordinary test build: not coverage-guided like `cargo fuzz`
/// (scripts/fuzz.sh, whose instrumented build is too slow for CI), but it runs in every `cargo
/// test`. `MCU_FUZZ_SMOKE_S` sets the seconds per target (default 3), `MCU_FUZZ_SEED` replays a
/// run; a failing input is written under `target/fuzz-smoke/` and named in the failure.
#[test]
fn mutated_inputs_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let secs: f64 = std::env::var("MCU_FUZZ_SMOKE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let seed: u64 = std::env::var("MCU_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fuzz smoke: MCU_FUZZ_SEED={seed}, {secs} s per target");
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // libavformat and our own code log on bad input; the smoke makes a lot of it.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for (name, run) in server::fuzzing::TARGETS {
        let seeds: Vec<Vec<u8>> = ["corpus", "regressions"]
            .iter()
            .filter_map(|d| std::fs::read_dir(root.join(d).join(name)).ok())
            .flatten()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
        let mut runs = 0u64;
        while std::time::Instant::now() < deadline {
            let mut data = seeds[(next() as usize) % seeds.len()].clone();
            for _ in 0..1 + next() % 8 {
                let len = data.len().max(1);
                match next() % 5 {
                    0 if !data.is_empty() => data[(next() as usize) % len] ^= 1 << (next() % 8),
                    1 if !data.is_empty() => data[(next() as usize) % len] = next() as u8,
                    2 => data.truncate((next() as usize) % (len + 1)),
                    3 => {
                        let other = &seeds[(next() as usize) % seeds.len()];
                        let from = (next() as usize) % (other.len() + 1);
                        let at = (next() as usize) % (data.len() + 1);
                        let piece = other[from..].iter().take(64).copied();
                        data.splice(at..at, piece);
                    }
                    _ => {
                        let at = (next() as usize) % (data.len() + 1);
                        data.insert(at, next() as u8);
                    }
                }
            }
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                std::panic::set_hook(quiet);
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-smoke");
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(format!("{name}-{seed}-{runs}"));
                std::fs::write(&file, &data).unwrap();
                panic!(
                    "{name} panics on {} (reproduce: cargo fuzz run -s none {name} {}; \
                     or MCU_FUZZ_SEED={seed})",
                    file.display(),
                    file.display()
                );
            }
            runs += 1;
        }
        eprintln!("fuzz smoke: {name}: {runs} inputs");
    }
    std::panic::set_hook(quiet);
}
