//! The results: rows of median/min/max with a target and a verdict, rendered as a Markdown
//! table under the machine they were measured on. The same text goes to the terminal and, between
//! two markers, into `BENCHMARKS.md`, whose hand-written text around them is kept.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::machine::{self, Machine};

/// Median, min, max of repeated measurements.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many.
    pub n: usize,
}

impl Summary {
    /// Summarises `v`; `None` when it is empty.
    pub fn of(v: &[f64]) -> Option<Summary> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: s[0],
            max: s[n - 1],
            n,
        })
    }
}

/// How a row's numbers are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds, shown in µs, ms or s by the size of the median.
    Time,
    /// A plain count.
    Count,
    /// Kilobytes as `/proc` counts them (KiB), shown as `kB`.
    Kib,
    /// Requests per second, shown in k req/s.
    Rate,
    /// A fraction, shown in percent.
    Ratio,
    /// Nanoseconds, shown in µs with one decimal (short CPU times compared with each other).
    Micros,
}

fn fmt_value(v: f64, unit: Unit, scale_by: f64) -> String {
    match unit {
        Unit::Time => {
            if scale_by < 1e6 {
                format!("{:.0} µs", v / 1e3)
            } else if scale_by < 1e8 {
                format!("{:.2} ms", v / 1e6)
            } else if scale_by < 1e9 {
                format!("{:.1} ms", v / 1e6)
            } else {
                format!("{:.2} s", v / 1e9)
            }
        }
        Unit::Count => {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        }
        Unit::Kib => format!("{v:.0} kB"),
        Unit::Rate => format!("{:.1} k/s", v / 1e3),
        Unit::Ratio => format!("{:.1} %", v * 100.0),
        Unit::Micros => format!("{:.1} µs", v / 1e3),
    }
}

/// Whether a row meets its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// There is a target and the median meets it.
    Met,
    /// There is a target and the median misses it.
    Missed,
    /// No target: a figure for context.
    Info,
    /// The measurement failed.
    Error,
    /// Not measured here, for a reason the row gives (what it needs is missing); not a failure.
    NotMeasured,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Section number (the first column of `SECTIONS` in `main.rs`).
    pub section: u8,
    /// What was measured.
    pub measure: String,
    /// The numbers, already formatted: median, min, max, n.
    pub cells: [String; 4],
    /// The target, in words.
    pub target: String,
    /// Met or not.
    pub verdict: Verdict,
    /// The median a target is judged on; `None` for a row whose measurement failed.
    median: Option<f64>,
}

impl Row {
    /// A measured row, a figure for context until [`target`](Self::target) gives it one; a
    /// failed row when there are no `values`.
    pub fn measured(section: u8, measure: impl Into<String>, values: &[f64], unit: Unit) -> Row {
        let Some(s) = Summary::of(values) else {
            return Row::error(section, measure, "no samples");
        };
        let scale = s.median.abs();
        Row {
            section,
            measure: measure.into(),
            cells: [
                fmt_value(s.median, unit, scale),
                fmt_value(s.min, unit, scale),
                fmt_value(s.max, unit, scale),
                s.n.to_string(),
            ],
            target: String::new(),
            verdict: Verdict::Info,
            median: Some(s.median),
        }
    }

    /// Sets the target: its words, and whether the median meets it. A failed row stays failed.
    pub fn target(&mut self, text: impl Into<String>, ok: impl FnOnce(f64) -> bool) -> &mut Row {
        if let Some(m) = self.median {
            self.target = text.into();
            self.verdict = if ok(m) { Verdict::Met } else { Verdict::Missed };
        }
        self
    }

    /// A row that could not be measured on this machine or checkout (`why`: what is missing);
    /// unlike [`error`](Self::error) it does not fail the run.
    pub fn not_measured(section: u8, measure: impl Into<String>, why: &str) -> Row {
        Row {
            verdict: Verdict::NotMeasured,
            cells: [
                format!("not measured: {}", why.replace('|', "/").replace('\n', " ")),
                String::new(),
                String::new(),
                String::new(),
            ],
            ..Row::error(section, measure, why)
        }
    }

    /// A row whose measurement failed.
    pub fn error(section: u8, measure: impl Into<String>, why: &str) -> Row {
        Row {
            section,
            measure: measure.into(),
            cells: [
                format!("ERROR: {}", why.replace('|', "/").replace('\n', " ")),
                String::new(),
                String::new(),
                String::new(),
            ],
            target: String::new(),
            verdict: Verdict::Error,
            median: None,
        }
    }
}

/// Renders the rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| # | measure | median | min | max | n | target | verdict |\n");
    out.push_str("|---|---|--:|--:|--:|--:|---|---|\n");
    for r in rows {
        let verdict = match r.verdict {
            Verdict::Met => "met",
            Verdict::Missed => "**MISSED**",
            Verdict::Info => "",
            Verdict::Error => "**ERROR**",
            Verdict::NotMeasured => "not measured",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.section, r.measure, r.cells[0], r.cells[1], r.cells[2], r.cells[3], r.target, verdict
        );
    }
    out
}

const BEGIN: &str = "<!-- bench:begin (generated by `cargo run --release -p bench`; edits inside are overwritten) -->";
const END: &str = "<!-- bench:end -->";

/// What is written above the table.
#[derive(Debug)]
pub struct Header {
    /// A `--quick` smoke run.
    pub quick: bool,
    /// The machine.
    pub machine: Machine,
    /// The load average before the build.
    pub load_before: String,
    /// The load average at the first measurement.
    pub load_start: String,
}

/// The whole text: the header, the table, the notes. The load average at the end is read now.
pub fn render(h: &Header, took: Duration, rows: &[Row], notes: &[String]) -> String {
    let m = &h.machine;
    let mut s = String::new();
    s.push_str(&format!(
        "### Results{}\n\n",
        if h.quick {
            " (QUICK smoke run: not representative)"
        } else {
            ""
        }
    ));
    s.push_str(&format!(
        "- Date: {} · run took {:.0} s\n- Machine: {} CPUs ({}), {} MiB RAM, Linux {}\n- Toolchain: {}\n\
         - Load average (1/5/15 min) before the build: {}; at the first measurement: {}; at the end: {}\n\
         - Limits: {}\n\n",
        m.date,
        took.as_secs_f64(),
        m.nproc,
        m.cpu,
        m.mem_mib,
        m.kernel,
        m.rustc,
        h.load_before,
        h.load_start,
        machine::loadavg(),
        m.limits
    ));
    s.push_str(&table(rows));
    if !notes.is_empty() {
        s.push_str("\nNotes of this run:\n\n");
        for n in notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}

/// Replaces the generated section of `path` (between the markers), or appends one.
pub fn write_section(path: &Path, text: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{text}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ if old.is_empty() => format!("# Benchmarks\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_section_keeps_the_hand_written_text() {
        let path = std::env::temp_dir().join(format!("bench-md-{}.md", std::process::id()));
        let _ = std::fs::remove_file(&path);
        write_section(&path, "first").unwrap();
        let s = std::fs::read_to_string(&path).unwrap();
        assert!(s.starts_with("# Benchmarks\n") && s.contains("first"));
        let edited = format!("intro `bench:begin`\n{s}\nanalysis\n");
        std::fs::write(&path, edited).unwrap();
        write_section(&path, "second").unwrap();
        let s = std::fs::read_to_string(&path).unwrap();
        assert!(s.starts_with("intro `bench:begin`\n"));
        assert!(s.contains("second") && !s.contains("first"));
        assert!(s.ends_with("analysis\n"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_target_judges_the_median() {
        let mut r = Row::measured(2, "x", &[3e5, 2e6, 5e5], Unit::Time);
        assert_eq!((r.verdict, r.cells[0].as_str()), (Verdict::Info, "500 µs"));
        r.target("≤ 1 ms", |m| m <= 1e6);
        assert_eq!((r.verdict, r.target.as_str()), (Verdict::Met, "≤ 1 ms"));
        r.target("0", |m| m == 0.0);
        assert_eq!(r.verdict, Verdict::Missed);
        let mut e = Row::measured(2, "y", &[], Unit::Time);
        e.target("≤ 1 ms", |_| true);
        assert_eq!((e.verdict, e.target.as_str()), (Verdict::Error, ""));
        let mut n = Row::not_measured(7, "z", "no git");
        n.target("≥ 97 %", |_| true);
        assert_eq!(n.verdict, Verdict::NotMeasured);
        assert_eq!(n.cells[0], "not measured: no git");
    }
}
