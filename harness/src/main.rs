//! `khtest`: run the kheaders matrix (see README.md).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};

use khtest::cell::{self, Settings};
use khtest::matrix::Matrix;
use khtest::tree::Source;
use khtest::vm::Timeouts;
use khtest::{report, Project};

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
        /// Kernel source: a tree or a .tar.xz (default: Debian's linux-source-6.12).
        #[arg(long)]
        tree: Option<PathBuf>,
        /// Where per-cell results go (default: target/khtest).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The shared cache (default: $KHTEST_CACHE or ~/.cache/khtest).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KHTEST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("khtest: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    khtest::process::stop_children_on_signals()?;
    let project = Project::locate();
    let matrix_path = cli.matrix.clone().unwrap_or_else(|| project.default_matrix());
    let matrix = Matrix::load(&matrix_path)?;
    match cli.command {
        Cmd::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&matrix.cells)?);
            } else {
                for c in &matrix.cells {
                    println!("{:24} {}", c.name, c.description);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { cells, tree, out, cache } => {
            let selected = matrix.select(&cells)?;
            let mut rerun = String::from("cargo run --release -p khtest --");
            if let Some(m) = &cli.matrix {
                rerun += &format!(" --matrix {}", m.display());
            }
            rerun += " run {cell}";
            if let Some(t) = &tree {
                rerun += &format!(" --tree {}", t.display());
            }
            let settings = Settings {
                cache_dir: cache.unwrap_or_else(khtest::default_cache_dir),
                out_dir: out.unwrap_or_else(|| project.default_out_dir()),
                source: Source::from_arg(tree.as_deref())?,
                timeouts: Timeouts::default(),
                build_limit: std::time::Duration::from_secs(3600),
                rerun,
            };
            let start = Instant::now();
            let terminal = std::io::stderr().is_terminal();
            let progress = |msg: &str| {
                let t = start.elapsed().as_secs();
                if terminal {
                    eprintln!("\x1b[1m[{:3}:{:02}]\x1b[0m {msg}", t / 60, t % 60);
                } else {
                    eprintln!("[{:3}:{:02}] {msg}", t / 60, t % 60);
                }
            };
            let mut reports = Vec::new();
            for c in selected {
                if khtest::process::interrupted().is_some() {
                    break;
                }
                let r = cell::run(&project, &matrix, c, &settings, &progress);
                eprintln!("{}", r.explain());
                reports.push(r);
            }
            print!("{}", report::table(&reports));
            println!("results: {}", settings.out_dir.display());
            if let Some(sig) = khtest::process::interrupted() {
                return Ok(ExitCode::from(128 + sig as u8));
            }
            let bad = reports.iter().any(|r| r.verdict.is_bad());
            Ok(if bad { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}
