//! Every input the fuzzers kept (`fuzz/corpus/`) and every crash they found
//! (`fuzz/regressions/`) run through the same target bodies on every test run,
//! so a fixed crash stays fixed without a fuzzer installed (docs/FUZZING.md).

#[allow(dead_code)]
#[path = "../../../../fuzz/targets.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_kept_fuzz_input_still_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, run) in targets::TARGETS {
        let mut inputs = 0;
        for kind in ["corpus", "regressions"] {
            let dir = root.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).expect("read an input");
                let result = std::panic::catch_unwind(|| run(&bytes));
                assert!(
                    result.is_ok(),
                    "fuzz target {name} fails on {}",
                    entry.path().display()
                );
                inputs += 1;
            }
        }
        assert!(inputs > 0, "fuzz target {name} has no kept inputs");
    }
}
