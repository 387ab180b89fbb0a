//! `kheaders`: install the running kernel's headers archive as a headers
//! package (`/usr/src/kheaders-<release>`, `/lib/modules/<release>/build`),
//! or remove it. See `install.rs` and the README's device recipe.

use std::path::{Path, PathBuf};
use std::process::exit;

use kheaders_selftest::install::{self, Outcome, Places};
use kheaders_selftest::{load, running};

const USAGE: &str = "\
usage: kheaders install [--archive PATH] [--root DIR] [--release R]
       kheaders remove [--root DIR] [--release R]

install: unpack the running kernel's headers archive (/sys/kernel/kheaders.tar.xz
or /proc/kheaders.tar.xz, loading kheaders.ko when needed) into
DIR/usr/src/kheaders-R and point DIR/lib/modules/R/build at it, so that DKMS
and `make -C /lib/modules/$(uname -r)/build M=$PWD` work with no headers
package. It refuses, changing nothing, an archive with headers only, one
for another kernel release or machine, and a place somebody else controls.
Running it again with the same archive changes nothing. On a kernel that
serves its symbol versions (/sys/kernel/symvers/vmlinux: CONFIG_MODVERSIONS),
they go in the tree as Module.symvers, so that modules built there load.

remove: remove what install made.

DIR defaults to /, R to the running kernel's release (uname -r).
Exit status: 0 done, 1 refused or failed, 2 usage.
";

fn usage(why: &str) -> ! {
    eprint!("kheaders: {why}\n{USAGE}");
    exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| usage("no command"));
    if command == "-h" || command == "--help" {
        print!("{USAGE}");
        exit(0);
    }
    let (mut archive, mut root, mut release) = (None, PathBuf::from("/"), None);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--archive" if command == "install" => archive = Some(PathBuf::from(value())),
            "--root" => root = PathBuf::from(value()),
            "--release" => release = Some(value()),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let release = release.unwrap_or_else(|| install::running_release().unwrap_or_else(|e| fail(&format!("cannot read the kernel release: {e}"))));
    let places = Places { root, release };
    let outcome = match command.as_str() {
        "install" => {
            let (path, loaded) = match archive {
                Some(p) => (p, false),
                None => running_archive(),
            };
            // The served versions are the running kernel's only.
            let running = install::running_release().is_ok_and(|r| r == places.release);
            let served = Path::new(load::SERVED_SYMVERS);
            let symvers = (running && served.is_file()).then_some(served);
            let r = install::install(&places, &path, symvers, install::this_machine());
            if loaded {
                running::unload_kheaders();
            }
            r
        }
        "remove" => install::remove(&places),
        other => usage(&format!("unknown command {other}")),
    };
    match outcome {
        Ok(Outcome::Installed { files, versions }) => {
            let with = if versions { format!(", with {} as Module.symvers", load::SERVED_SYMVERS) } else { String::new() };
            println!("kheaders: {files} files in {}{with}, linked from {}", places.tree().display(), places.build_link().display())
        }
        Ok(Outcome::AlreadyInstalled) => println!("kheaders: {} already holds this archive", places.tree().display()),
        Ok(Outcome::Removed) => println!("kheaders: removed {} and its build link", places.tree().display()),
        Ok(Outcome::NothingToRemove) => println!("kheaders: nothing to remove for {}", places.release),
        Err(e) => fail(&e.to_string()),
    }
}

/// The running kernel's archive, loading kheaders.ko if it serves none;
/// and whether this run loaded it.
fn running_archive() -> (PathBuf, bool) {
    if let Some(p) = running::served() {
        return (p, false);
    }
    match running::load_kheaders() {
        Some(p) => (p, true),
        None => fail("the kernel serves no headers archive (and `modprobe kheaders` did not make one): it needs CONFIG_IKHEADERS"),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("kheaders: {why}");
    exit(1)
}
