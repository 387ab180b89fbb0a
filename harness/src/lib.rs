//! khtest: the end-to-end harness for the in-kernel headers archive.
//!
//! One module per stage of the flow: matrix → tree → kbuild → image → vm
//! → checks → report, with [`cell`] running one cell through all of them.
//! The module map, with each module's one job, is in `docs/design.md`.

pub mod bench;
pub mod blame;
pub mod bpf;
pub mod buildlog;
pub mod cache;
pub mod cell;
pub mod checks;
pub mod clients;
pub mod console;
pub mod debsrc;
pub mod device;
pub mod exit_codes;
pub mod extract;
pub mod image;
pub mod kbuild;
pub mod matrix;
pub mod phase;
pub mod process;
pub mod progress;
pub mod regen;
pub mod report;
pub mod scratch;
pub mod symvers;
pub mod tap;
pub mod tools;
pub mod tree;
pub mod userland;
pub mod vm;

use std::path::{Path, PathBuf};

/// The checked-out repository: where the series, selftest, images and
/// configs live.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
}

impl Project {
    /// The repository this binary was built from (`KHTEST_ROOT` overrides).
    pub fn locate() -> Project {
        let root = std::env::var_os("KHTEST_ROOT").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        Project { root: root.canonicalize().unwrap_or(root) }
    }

    pub fn kernel_dir(&self) -> PathBuf {
        self.root.join("kernel")
    }

    /// The series for `kernel`: `kernel/<version>/`.
    pub fn series_dir(&self, kernel: matrix::Kernel) -> PathBuf {
        self.kernel_dir().join(kernel.version())
    }

    /// The kselftest target, installed as `tools/testing/selftests/kheaders`.
    pub fn selftest_dir(&self) -> PathBuf {
        self.root.join("selftests/kheaders")
    }

    /// The test module's sources, shared by the kselftest, its Rust port
    /// and the modbuild phase.
    pub fn testmod_dir(&self) -> PathBuf {
        self.selftest_dir().join("testmod")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn default_matrix(&self) -> PathBuf {
        self.root.join("configs/matrix.yaml")
    }

    /// Per-cell results go under here unless told otherwise.
    pub fn default_out_dir(&self) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| self.root.join("target"));
        target.join("khtest")
    }
}

/// Where the shared cache lives: `$KHTEST_CACHE`, else `$XDG_CACHE_HOME/khtest`,
/// else `~/.cache/khtest`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("KHTEST_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("khtest");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/khtest")
}

/// `KHTEST_FRESH=1`: run again the checks whose passing outcome is cached.
pub fn fresh_from_env() -> bool {
    std::env::var_os("KHTEST_FRESH").is_some_and(|v| !v.is_empty() && v != "0")
}
