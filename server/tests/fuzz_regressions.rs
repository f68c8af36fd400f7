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
