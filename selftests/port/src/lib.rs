//! The Rust port of the `kheaders` kselftest (`selftests/kheaders/`).
//!
//! The shell script runs on a device; this port runs the same steps on the
//! host, against an archive pulled out of a guest, and is what the harness
//! uses: [`archive`] unpacks it safely, [`contents`] checks what is in it,
//! [`modbuild`] builds the test module against it, [`ktap`] reports.

pub mod archive;
pub mod contents;
pub mod ktap;
pub mod modbuild;

use std::path::PathBuf;

/// The test module's sources: `selftests/kheaders/testmod`, the same files
/// the shell kselftest builds.
pub fn testmod_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kheaders/testmod")
}
