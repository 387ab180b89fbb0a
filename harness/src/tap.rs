//! The one TAP/KTAP reader: the kselftest runner's output (TAP 13, with the
//! test's own TAP nested under `# `) and the port's KTAP. The host's and
//! the device's judges both read through it; recorded outputs are in
//! `test_data/tap/` and `test_data/kselftest/`.

use crate::buildlog;

/// The plan line, `1..N`, with a whole-test skip's reason (`1..0 # SKIP why`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub count: usize,
    pub skip: Option<String>,
}

/// What follows ` # ` on a result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    Skip(String),
    /// The kselftest runner's `# TIMEOUT 45 seconds`.
    Timeout(String),
    /// Anything else (`TODO`, or a plain comment).
    Other(String),
}

/// One result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapResult {
    pub number: usize,
    pub ok: bool,
    /// Its description, without the directive.
    pub name: String,
    pub directive: Option<Directive>,
    /// The diagnostic lines (`# ...`, without the `# `) printed before it.
    pub diag: Vec<String>,
    /// The line itself (without the prefix), as quoted in verdicts.
    pub line: String,
}

impl TapResult {
    /// The reason of a `# SKIP`, if it is skipped.
    pub fn skip(&self) -> Option<&str> {
        match &self.directive {
            Some(Directive::Skip(why)) => Some(why),
            _ => None,
        }
    }

    pub fn timed_out(&self) -> bool {
        matches!(self.directive, Some(Directive::Timeout(_)))
    }

    /// What its diagnostics say went wrong, one indented line each: a
    /// build log's first errors, else their last three lines.
    pub fn why(&self) -> String {
        let f = buildlog::first_failure(&self.diag.join("\n"));
        let lines = if f.lines.is_empty() { self.diag[self.diag.len().saturating_sub(3)..].to_vec() } else { f.lines };
        lines.iter().map(|l| format!("\n    {l}")).collect()
    }
}

/// The plan and the results of one TAP stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tap {
    pub plan: Option<Plan>,
    pub results: Vec<TapResult>,
}

impl Tap {
    /// Result `n`, if there is one.
    pub fn result(&self, n: usize) -> Option<&TapResult> {
        self.results.iter().find(|r| r.number == n)
    }
}

/// The TAP in `text` whose lines start with `prefix`: `"# "` for a test's
/// output nested in the kselftest runner's, `""` for the runner's own or
/// the port's. Lines without the prefix, and lines that are not TAP, are
/// passed over.
pub fn parse(text: &str, prefix: &str) -> Tap {
    let (mut tap, mut diag) = (Tap::default(), Vec::new());
    for line in text.lines() {
        let Some(l) = line.trim_end().strip_prefix(prefix) else { continue };
        if let Some(d) = l.strip_prefix("# ").or_else(|| (l == "#").then_some("")) {
            diag.push(d.to_owned());
        } else if let Some(p) = l.strip_prefix("1..") {
            let (n, skip) = p.split_once(" # SKIP").map_or((p, None), |(n, w)| (n, Some(w.trim().to_owned())));
            tap.plan = n.trim().parse().ok().map(|count| Plan { count, skip });
        } else if let Some(r) = parse_result(l) {
            tap.results.push(TapResult { diag: std::mem::take(&mut diag), ..r });
        }
    }
    tap
}

fn parse_result(l: &str) -> Option<TapResult> {
    let (ok, rest) = match l.strip_prefix("not ok ") {
        Some(r) => (false, r),
        None => (true, l.strip_prefix("ok ")?),
    };
    let (num, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n, Some(directive(d.trim()))),
        None => (rest, None),
    };
    Some(TapResult { number: num.parse().ok()?, ok, name: name.trim().to_owned(), directive, diag: Vec::new(), line: l.to_owned() })
}

fn directive(d: &str) -> Directive {
    let (word, rest) = d.split_once(' ').unwrap_or((d, ""));
    match word.to_ascii_uppercase().as_str() {
        "SKIP" => Directive::Skip(rest.trim().to_owned()),
        "TIMEOUT" => Directive::Timeout(rest.trim().to_owned()),
        _ => Directive::Other(d.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_results_their_diagnostics_and_directives() {
        let text = "TAP version 13\n1..1\n# timeout set to 45\n# TAP version 13\n# 1..4\n# # archive: a.tar.xz\n# ok 1 archive extracts\n\
            # # cc: error\n# not ok 3 module builds\n# ok 4 module loads # SKIP not the running kernel's\nnot ok 1 selftests: kheaders: x.sh # TIMEOUT 45 seconds\n";
        let inner = parse(text, "# ");
        assert_eq!(inner.plan, Some(Plan { count: 4, skip: None }));
        assert_eq!(inner.results.len(), 3);
        assert_eq!(inner.results[0].diag, ["archive: a.tar.xz"]);
        assert!(!inner.results[1].ok && inner.results[1].line == "not ok 3 module builds");
        assert_eq!(inner.result(4).unwrap().skip(), Some("not the running kernel's"));
        let outer = parse(text, "");
        assert_eq!(outer.plan, Some(Plan { count: 1, skip: None }));
        let r = &outer.results[0];
        assert!(!r.ok && r.timed_out() && r.name == "selftests: kheaders: x.sh", "{r:?}");
        assert_eq!(r.diag[0], "timeout set to 45");
    }

    #[test]
    fn a_whole_skip_and_lines_that_are_not_tap() {
        let tap = parse("make: Entering\n1..0 # SKIP 'gcc' not found\nok\nok x y\n", "");
        assert_eq!(tap.plan, Some(Plan { count: 0, skip: Some("'gcc' not found".into()) }));
        assert!(tap.results.is_empty(), "{:?}", tap.results);
        let r = &parse("ok 2 a # TODO later\n", "").results[0];
        assert_eq!(r.directive, Some(Directive::Other("TODO later".into())));
        assert_eq!(r.skip(), None);
    }
}
