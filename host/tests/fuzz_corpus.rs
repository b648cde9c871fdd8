//! Replays the corpus each fuzz target found (`host/fuzz/corpus/<target>/`, see
//! docs/fuzzing.md) on the stable toolchain: an input that once made a
//! target panic, hang or grow stays a test.

use std::path::Path;

#[test]
fn every_fuzz_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0;
    for (name, target) in skyhost::fuzzing::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (each target keeps a corpus)", dir.display()));
        let mut files = 0;
        for entry in entries {
            let path = entry.expect("read the corpus directory").path();
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                // A fuzzer running beside the tests replaces inputs it reduced.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", path.display()),
            };
            println!("{name}: {}", path.display());
            target(&data);
            files += 1;
        }
        assert!(files > 0, "{}: an empty corpus", dir.display());
        replayed += files;
    }
    println!("{replayed} inputs replayed");
}
