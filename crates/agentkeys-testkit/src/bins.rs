//! Where the workspace's binaries are: next to a test's own binary (`cargo test` builds them
//! into one directory), or in the directory a benchmark names (`target/release`).

use std::path::{Path, PathBuf};

/// The directory holding `agentkeys-server`, `agentkeys` and `agentkeys-daemon`.
#[derive(Clone, Debug)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    /// The binaries next to `sibling` (pass `env!("CARGO_BIN_EXE_<a bin of the test's
    /// crate>")`), built by the same `cargo test --workspace`.
    pub fn next_to(sibling: &str) -> Bins {
        Bins::in_dir(Path::new(sibling).parent().unwrap_or(Path::new(".")))
    }

    /// The binaries in `dir`.
    pub fn in_dir(dir: &Path) -> Bins {
        Bins {
            dir: dir.to_owned(),
        }
    }

    /// Their directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binary `name` (`examples/check` for an example); it must exist.
    pub fn path(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        assert!(
            path.exists(),
            "{} is missing: run 'cargo test --workspace' (or 'cargo build --workspace') first",
            path.display()
        );
        path
    }
}
