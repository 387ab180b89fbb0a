//! Who is at fault when a phase stops on an error: the kernel under test
//! (FAIL) or the host and the harness (ERROR). This is the one place that
//! decides it for errors; `docs/verdicts.md` has the rules.

use kheaders_selftest::archive::ArchiveError;

use crate::kbuild::MakeFailed;
use crate::report::Verdict;
use crate::vm::VmError;

/// The verdict for an error that stopped a phase:
/// - a `make` that ran to its end and failed broke on the tree under test:
///   FAIL;
/// - a guest kernel that panicked or oopsed: FAIL;
/// - an archive that is damaged, too large or refused as unsafe: FAIL (the
///   kernel served or built it); one that could not be read or written,
///   or a path that is no archive file, is the host's: ERROR;
/// - anything else (a tool that would not start, a timeout, a killed make,
///   a full disk, a hung guest): ERROR.
pub fn of(e: anyhow::Error) -> Verdict {
    let kernels = e.downcast_ref::<MakeFailed>().is_some()
        || e.downcast_ref::<VmError>().is_some_and(|v| matches!(v, VmError::Crash { .. }))
        || e.downcast_ref::<ArchiveError>().is_some_and(|a| !matches!(a, ArchiveError::Io { .. } | ArchiveError::NotAFile(_)));
    if kernels {
        Verdict::Fail(format!("{e:#}"))
    } else {
        Verdict::Error(format!("{e:#}"))
    }
}

/// [`of`] for the guest's errors.
pub fn of_vm(e: VmError) -> Verdict {
    of(e.into())
}

/// The host's fault, whatever the error.
pub fn host(e: impl Into<anyhow::Error>) -> Verdict {
    Verdict::Error(format!("{:#}", e.into()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Context;

    use super::*;

    #[test]
    fn a_crashing_guest_is_a_fail_a_hung_one_an_error() {
        let crash = VmError::Crash { phase: "boot".into(), text: "Kernel panic - not syncing: Attempted to kill init!".into() };
        assert!(matches!(of_vm(crash), Verdict::Fail(m) if m.contains("Kernel panic")));
        let hang = VmError::Timeout { phase: "pull".into(), limit: Duration::from_secs(5), log: "console.log".into() };
        assert!(matches!(of_vm(hang), Verdict::Error(m) if m.contains("during pull")));
    }

    #[test]
    fn a_damaged_archive_is_a_fail_an_unreadable_one_an_error_with_context_kept() {
        let damaged = Err::<(), _>(ArchiveError::Damaged("near byte 9 (block 1 of 1): bad block".into())).context("kheaders.tar.xz").unwrap_err();
        assert!(matches!(of(damaged), Verdict::Fail(m) if m.starts_with("kheaders.tar.xz: ") && m.contains("bad block")));
        let io = ArchiveError::Io { path: "x".into(), source: std::io::Error::other("disk full") };
        assert!(matches!(of(io.into()), Verdict::Error(m) if m.contains("disk full")));
        assert!(matches!(of(anyhow::anyhow!("qemu not found")), Verdict::Error(_)));
    }
}
