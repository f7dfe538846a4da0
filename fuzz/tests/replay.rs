//! Replays every saved input of every target (`corpus/<target>/*`, the regression inputs
//! `regress-*` among them) and the fixtures it reads as seeds (`seed-dirs`) through the
//! target's function, without libFuzzer: a crash that was fixed stays fixed.
//! `scripts/test.sh` runs this (`scripts/fuzz.sh replay`).

use std::path::{Path, PathBuf};

use synchronizer_fuzz::targets::ALL;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files under `dir`, subdirectories included, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
                .path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The seed directories of `target` (`seed-dirs`).
fn seed_dirs(target: &str) -> Vec<PathBuf> {
    let list = std::fs::read_to_string(root().join("seed-dirs"))
        .unwrap_or_else(|e| panic!("seed-dirs: {e}"));
    list.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(t, _)| *t == target)
        .map(|(_, dir)| root().join("..").join(dir))
        .collect()
}

#[test]
fn every_saved_input_of_every_target_passes() {
    let mut total = 0;
    for (name, target) in ALL {
        let mut files = files_under(&root().join("corpus").join(name));
        assert!(!files.is_empty(), "{name}: no saved input");
        for dir in seed_dirs(name) {
            files.extend(files_under(&dir));
        }
        for file in &files {
            let data = match std::fs::read(file) {
                Ok(data) => data,
                // A fuzzer running on this target meanwhile (scripts/fuzz.sh) replaces
                // inputs by smaller ones: one gone since the listing is no saved input.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", file.display()),
            };
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
        total += files.len();
        eprintln!("{name}: {} inputs", files.len());
    }
    eprintln!("{total} inputs replayed");
}

#[test]
fn every_target_has_a_binary_a_corpus_and_known_seed_dirs() {
    for (name, _) in ALL {
        let binary = root().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(binary.is_file(), "{}", binary.display());
        assert!(root().join("corpus").join(name).is_dir(), "{name}");
    }
    let binaries = std::fs::read_dir(root().join("fuzz_targets"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        binaries,
        ALL.len(),
        "a fuzz target missing from targets::ALL"
    );
    let list = std::fs::read_to_string(root().join("seed-dirs")).unwrap_or_default();
    for line in list.lines().filter(|l| !l.starts_with('#')) {
        let (target, dir) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("seed-dirs: {line:?}"));
        assert!(ALL.iter().any(|(n, _)| *n == target), "seed-dirs: {target}");
        assert!(root().join("..").join(dir).is_dir(), "seed-dirs: {dir}");
    }
}
