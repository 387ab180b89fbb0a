//! The Rust port of the `kheaders` kselftest (`selftests/kheaders/`).
//!
//! It runs on a device (the harness's `device` phase runs its static build
//! in the guest) or on a host against an archive pulled out of one:
//! [`archive`] unpacks it safely, [`contents`] checks what is in it,
//! [`modbuild`] builds the test module against it, [`install`] is
//! `kheaders install` (the archive as a headers package for DKMS), [`load`] loads it into
//! the running kernel, [`ktap`] reports, and [`signals`] lets an interrupt
//! end the build cleanly.

pub mod archive;
pub mod contents;
pub mod elf;
pub mod install;
pub mod ktap;
pub mod load;
pub mod modbuild;
pub mod running;
pub mod signals;

use std::path::Path;

/// The test module's sources, `selftests/kheaders/testmod` (the files the
/// shell kselftest builds), carried in the binary: a device has only it.
const TESTMOD: &[(&str, &str)] =
    &[("Makefile", include_str!("../../kheaders/testmod/Makefile")), ("test.c", include_str!("../../kheaders/testmod/test.c"))];

/// Write the test module's sources into the new directory `dir`.
pub fn write_testmod(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    TESTMOD.iter().try_for_each(|(name, text)| std::fs::write(dir.join(name), text))
}
