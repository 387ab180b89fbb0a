//! `khtest`: run the kheaders matrix (see README.md). Each subcommand is a
//! function here; its exit statuses are `exit_codes.rs`'s.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use khtest::cell::{self, Settings};
use khtest::matrix::Matrix;
use khtest::progress::Printer;
use khtest::tree::Source;
use khtest::{exit_codes, report, Project};

#[derive(Parser)]
#[command(version, about = "Build, boot and check kernels with the in-kernel headers archive")]
struct Cli {
    /// The matrix file (default: configs/matrix.yaml of this repository).
    #[arg(long, global = true)]
    matrix: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the matrix's cells.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run cells (default: all of them).
    Run {
        cells: Vec<String>,
        #[command(flatten)]
        place: Place,
        /// Keep every artifact (the initramfs) of passing cells too.
        #[arg(long)]
        keep: bool,
        /// Run the regen checks even if they passed before with the same
        /// source, series, toolchain and config (also: KHTEST_FRESH=1).
        #[arg(long)]
        fresh: bool,
        /// Cells at once: one builds its kernel while another's guests run
        /// (kernel builds still take turns).
        #[arg(short, long, default_value_t = cell::DEFAULT_JOBS)]
        jobs: usize,
    },
    /// Prepare the kernel tree (unpacked, with the series unless
    /// --unpatched) in the cache and print its path.
    Tree {
        #[command(flatten)]
        place: Place,
        #[arg(long)]
        unpatched: bool,
        /// The kernel: 6.12 or 7.3.
        #[arg(long, default_value = "6.12")]
        kernel: khtest::matrix::Kernel,
    },
    /// Get the headers archive out of a built kernel without booting it.
    Extract {
        /// vmlinux, bzImage, Image, Image.gz, or kheaders.ko.
        image: PathBuf,
        /// Where to write the archive.
        #[arg(short, long, default_value = "kheaders.tar.xz")]
        output: PathBuf,
    },
    /// Measure build cost, archive size and verdict time (see BENCHMARKS.md).
    Bench {
        #[command(flatten)]
        place: Place,
        /// Repetitions of each timing (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Also time the whole matrix, twice (the second run must build nothing).
        #[arg(long)]
        whole_matrix: bool,
        /// With --whole-matrix: run it in a private, empty cache, so that the
        /// first run is cold (about 45 min here), then remove that cache.
        #[arg(long, requires = "whole_matrix")]
        cold: bool,
        /// Instead of the usual figures, the no-op rebuild with and without
        /// the archive on x86_64 `defconfig` (6.12), the size measured in
        /// the 2019 review: two defconfig kernels, built once in the cache.
        #[arg(long, conflicts_with = "whole_matrix")]
        defconfig: bool,
    },
}

/// Where the kernel comes from and where results and builds go.
#[derive(clap::Args)]
struct Place {
    /// Kernel source for every cell: a tree or a .tar.xz (default: each
    /// cell's kernel from Debian, linux-source-6.12 or linux-source-7.3).
    #[arg(long)]
    tree: Option<PathBuf>,
    /// Where results go (default: target/khtest).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The shared cache (default: $KHTEST_CACHE or ~/.cache/khtest).
    #[arg(long)]
    cache: Option<PathBuf>,
}

impl Place {
    fn settings(self, project: &Project, matrix: Option<&PathBuf>) -> Result<Settings> {
        let mut rerun = String::from("cargo run --release -p khtest --");
        if let Some(m) = matrix {
            rerun += &format!(" --matrix {}", m.display());
        }
        rerun += " run {cell}";
        if let Some(t) = &self.tree {
            rerun += &format!(" --tree {}", t.display());
        }
        let defaults = Settings::new(project, rerun);
        Ok(Settings {
            cache_dir: self.cache.unwrap_or(defaults.cache_dir.clone()),
            out_dir: self.out.unwrap_or(defaults.out_dir.clone()),
            source: self.tree.as_deref().map(Source::from_arg).transpose()?,
            ..defaults
        })
    }
}

/// Progress lines with the elapsed time: a live status line on a terminal,
/// plain lines (a status at least every 30 s) in logs.
fn progress_printer() -> Printer {
    let terminal = std::io::stderr().is_terminal();
    Printer::new(terminal, colour(terminal))
}

/// Colour only on a terminal, and never with `NO_COLOR` set (no-color.org).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// An error with the exit status it ends khtest with (exit_codes.rs).
struct Failure {
    code: u8,
    error: anyhow::Error,
}

trait ExitAs<T> {
    /// On error, exit with `code`.
    fn exit_as(self, code: u8) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ExitAs<T> for std::result::Result<T, E> {
    fn exit_as(self, code: u8) -> Result<T, Failure> {
        self.map_err(|e| Failure { code, error: e.into() })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KHTEST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .with_target(false)
        .without_time()
        .init();
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("khtest: error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn real_main(cli: Cli) -> Result<u8, Failure> {
    khtest::process::stop_children_on_signals().exit_as(exit_codes::HOST_ERROR)?;
    let project = Project::locate();
    let matrix_path = cli.matrix.clone().unwrap_or_else(|| project.default_matrix());
    let load = || Matrix::load(&matrix_path).exit_as(exit_codes::USAGE);
    match cli.command {
        Cmd::List { json } => list(&load()?, json),
        Cmd::Run { cells, place, keep, fresh, jobs } => {
            let matrix = load()?;
            let base = place.settings(&project, cli.matrix.as_ref()).exit_as(exit_codes::USAGE)?;
            run(&project, &matrix, &cells, Settings { keep, fresh: fresh || base.fresh, ..base }, jobs)
        }
        Cmd::Tree { place, unpatched, kernel } => {
            let s = place.settings(&project, None).exit_as(exit_codes::USAGE)?;
            tree(&project, &s, kernel, !unpatched).exit_as(exit_codes::HOST_ERROR)
        }
        Cmd::Extract { image, output } => extract(&image, &output),
        Cmd::Bench { place, reps, whole_matrix, cold, defconfig } => {
            let matrix = load()?;
            let settings = place.settings(&project, cli.matrix.as_ref()).exit_as(exit_codes::USAGE)?;
            let opts = khtest::bench::Options { reps: reps.max(1), matrix: whole_matrix, cold, defconfig };
            bench(&project, &matrix, &settings, &opts).exit_as(exit_codes::BENCH_FAILED)
        }
    }
}

/// `khtest list`: the cells, as a table or JSON.
fn list(matrix: &Matrix, json: bool) -> Result<u8, Failure> {
    if json {
        println!("{}", serde_json::to_string_pretty(&matrix.cells).exit_as(exit_codes::HOST_ERROR)?);
    } else {
        for c in &matrix.cells {
            println!("{:24} {}", c.name, c.description);
        }
    }
    Ok(exit_codes::OK)
}

/// `khtest run`: the selected cells, `jobs` at once, each one's
/// explanation as it ends, then the table; the status says who has to act.
fn run(project: &Project, matrix: &Matrix, cells: &[String], settings: Settings, jobs: usize) -> Result<u8, Failure> {
    let selected = matrix.select(cells).exit_as(exit_codes::USAGE)?;
    let printer = progress_printer();
    let explain = |r: &report::CellReport| {
        printer.end_live_line();
        eprintln!("{}", r.explain());
    };
    let reports = cell::run_many(project, matrix, &selected, &settings, jobs, &|m| printer.print(m), &explain);
    print!("{}", report::table(&reports));
    println!("results: {}", settings.out_dir.display());
    if let Some(sig) = khtest::process::interrupted() {
        return Ok(exit_codes::INTERRUPTED_BASE.saturating_add(sig as u8));
    }
    Ok(exit_codes::of_run(&reports))
}

/// `khtest tree`: the prepared tree's path.
fn tree(project: &Project, s: &Settings, kernel: khtest::matrix::Kernel, patched: bool) -> Result<u8> {
    let cache = khtest::cache::Cache::open(&s.cache_dir)?;
    let printer = progress_printer();
    let tree = khtest::tree::prepare(&cache, s.source.as_ref(), project, kernel, patched, &|m| printer.print(m))?;
    println!("{}", tree.path.display());
    Ok(exit_codes::OK)
}

/// `khtest extract`: the archive out of a kernel file. A file with no
/// readable archive is bad input; failing to write the output is the host's.
fn extract(image: &Path, output: &Path) -> Result<u8, Failure> {
    let found = khtest::extract::from_file(image).exit_as(exit_codes::BAD_INPUT)?;
    std::fs::write(output, &found.archive).with_context(|| format!("cannot write {}", output.display())).exit_as(exit_codes::HOST_ERROR)?;
    let place = match found.inside {
        None => format!("at offset {}", found.offset),
        Some((kind, at)) => format!("at offset {} of the {kind} payload at offset {at}", found.offset),
    };
    println!("{}: {} bytes {place} of {}", output.display(), found.archive.len(), image.display());
    Ok(exit_codes::OK)
}

/// `khtest bench`: every figure, as markdown, and where it was written.
fn bench(project: &Project, matrix: &Matrix, settings: &Settings, opts: &khtest::bench::Options) -> Result<u8> {
    let printer = progress_printer();
    let figures = khtest::bench::run(project, matrix, settings, opts, &|m| printer.print(m))?;
    printer.end_live_line();
    print!("{}", khtest::bench::markdown(&figures));
    println!("\nwritten to {}", settings.out_dir.join("bench").display());
    Ok(exit_codes::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_parses() {
        Cli::command().debug_assert();
        for args in [
            &["khtest", "--matrix", "m.yaml", "run", "a", "--keep"][..],
            &["khtest", "bench", "--whole-matrix", "--cold", "--reps", "5"],
            &["khtest", "bench", "--defconfig"],
            &["khtest", "extract", "vmlinux", "-o", "x.tar.xz"],
            &["khtest", "tree", "--unpatched"],
            &["khtest", "tree", "--kernel", "7.3"],
            &["khtest", "list", "--json"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["khtest", "bench", "--cold"]).is_err(), "--cold means nothing without --whole-matrix");
        assert!(Cli::try_parse_from(["khtest", "bench", "--defconfig", "--whole-matrix"]).is_err(), "--defconfig is a bench of its own");
    }
}
