//! The running kernel's archive, as both binaries find it: where the kernel
//! serves it, and `modprobe kheaders` when it serves none yet.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the running kernel serves its archive, in the order looked for.
pub const PATHS: [&str; 2] = ["/sys/kernel/kheaders.tar.xz", "/proc/kheaders.tar.xz"];

/// The first of [`PATHS`] that exists.
pub fn served() -> Option<PathBuf> {
    PATHS.into_iter().map(PathBuf::from).find(|p| p.exists())
}

/// Whether `program args` runs and exits 0 within 30 s (its process group
/// ended at the deadline).
pub fn tool(program: &str, args: &[&str]) -> bool {
    let ask = crate::modbuild::run_with_deadline(Duration::from_secs(30));
    ask(Command::new(program).args(args), Path::new("/dev/null")).is_ok_and(|s| s.success())
}

/// `modprobe kheaders`, then the archive it serves, if any.
pub fn load_kheaders() -> Option<PathBuf> {
    tool("modprobe", &["kheaders"]).then(served).flatten()
}

/// `modprobe -r kheaders`, for a run that loaded it.
pub fn unload_kheaders() {
    tool("modprobe", &["-r", "kheaders"]);
}
