//! Replays every saved input of every target (`corpus/<target>/*`, the regression inputs
//! `regress-*` among them) through the target's function, without libFuzzer: a crash
//! that was fixed stays fixed. `scripts/test.sh` runs this.

use std::path::Path;

use synchronizer_fuzz::targets::ALL;

#[test]
fn every_saved_input_of_every_target_passes() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (name, target) in ALL {
        let dir = corpus.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                entry
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                    .path()
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: no saved input");
        for file in &files {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
        total += files.len();
        eprintln!("{name}: {} inputs", files.len());
    }
    eprintln!("{total} inputs replayed");
}

#[test]
fn every_target_has_a_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in ALL {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "{name}"
        );
        assert!(root.join("corpus").join(name).is_dir(), "{name}");
    }
    let binaries = std::fs::read_dir(root.join("fuzz_targets"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        binaries,
        ALL.len(),
        "a fuzz target missing from targets::ALL"
    );
}
