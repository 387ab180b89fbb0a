//! `khtest`'s exit statuses, one meaning each whatever the subcommand, for
//! scripts and CI (as nextest documents its `exit_codes`). `docs/verdicts.md`
//! has the table; `tests/exit_codes.rs` runs the binary for each.

use crate::report::{CellReport, Verdict};

/// Everything asked for was done: every cell passed or was skipped, or the
/// list, tree, archive or bench was written.
pub const OK: u8 = 0;
/// `run`: some cell FAILed and none had an ERROR: the kernel or the series
/// is at fault.
pub const CELL_FAILED: u8 = 1;
/// A bad command line, matrix, cell name or setting: nothing was started.
pub const USAGE: u8 = 2;
/// The host or the harness failed, so nothing is known about the kernel:
/// `run` with a cell whose verdict is ERROR (whatever the others did), or
/// `tree` that could not prepare the tree. Repeat once the host is fixed.
pub const HOST_ERROR: u8 = 3;
/// `extract`: the file given holds no archive that can be read out (not a
/// kernel file, damaged, or not there).
pub const BAD_INPUT: u8 = 4;
/// `bench`: a measurement could not be made (a cell the bench needs is
/// missing from the matrix or did not pass, a build failed); nothing was
/// written to BENCHMARKS.md's source.
pub const BENCH_FAILED: u8 = 5;
/// Ended by signal N (SIGINT, SIGTERM): 128 + N, as a shell reports it.
pub const INTERRUPTED_BASE: u8 = 128;

/// The exit status for a run that produced `reports`.
pub fn of_run(reports: &[CellReport]) -> u8 {
    if reports.iter().any(|r| matches!(r.verdict, Verdict::Error(_))) {
        HOST_ERROR
    } else if reports.iter().any(|r| matches!(r.verdict, Verdict::Fail(_))) {
        CELL_FAILED
    } else {
        OK
    }
}
