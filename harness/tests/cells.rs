//! One test per cell of `configs/matrix.yaml`: `cargo nextest run -E
//! 'binary(cells)'` runs them all, `-E 'test(x86_64-y-o)'` one. Each test
//! builds, boots and checks its cell for real; the test fails with the
//! cell's verdict, failed phase and log directory.

use libtest_mimic::{Arguments, Failed, Trial};

use khtest::cell::{self, Settings};
use khtest::matrix::Matrix;
use khtest::tree::Source;
use khtest::vm::Timeouts;
use khtest::Project;

fn main() {
    let args = Arguments::from_args();
    if let Err(e) = khtest::process::stop_children_on_signals() {
        eprintln!("cannot handle signals: {e:#}");
        std::process::exit(101);
    }
    let project = Project::locate();
    let matrix = match Matrix::load(&project.default_matrix()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(101);
        }
    };
    let trials = matrix
        .cells
        .iter()
        .map(|c| {
            let (project, matrix, cell) = (project.clone(), matrix.clone(), c.clone());
            Trial::test(c.name.clone(), move || run_cell(&project, &matrix, &cell))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn run_cell(project: &Project, matrix: &Matrix, c: &khtest::matrix::Cell) -> Result<(), Failed> {
    let settings = Settings {
        cache_dir: khtest::default_cache_dir(),
        out_dir: project.default_out_dir(),
        source: Source::from_arg(None).map_err(|e| Failed::from(format!("{e:#}")))?,
        timeouts: Timeouts::default(),
        build_limit: std::time::Duration::from_secs(3600),
        keep: false,
        rerun: "cargo nextest run -p khtest --test cells -E 'test(={cell})'".into(),
    };
    let progress = |m: &str| eprintln!("{m}");
    let r = cell::run(project, matrix, c, &settings, &progress);
    eprint!("{}", khtest::report::table(std::slice::from_ref(&r)));
    if r.verdict.is_bad() {
        return Err(r.explain().into());
    }
    eprintln!("{}", r.explain());
    Ok(())
}
