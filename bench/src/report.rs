//! The results: rows of median/min/max with a target and a verdict, rendered as a Markdown
//! table under the machine they were measured on. The same text goes to the terminal and, between
//! two markers, into `BENCHMARKS.md`, whose hand-written text around them is kept.

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
        out.push_str(&row_line(r));
        out.push('\n');
    }
    out
}

/// One row of the table, without its newline.
fn row_line(r: &Row) -> String {
    let verdict = match r.verdict {
        Verdict::Met => "met",
        Verdict::Missed => "**MISSED**",
        Verdict::Info => "",
        Verdict::Error => "**ERROR**",
        Verdict::NotMeasured => "not measured",
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        r.section, r.measure, r.cells[0], r.cells[1], r.cells[2], r.cells[3], r.target, verdict
    )
}

/// A note of section `n` as the report shows it, `(§n) text`: a partial run replaces the notes
/// of its sections by this tag.
pub fn tag_note(n: u8, text: &str) -> String {
    format!("{}{text}", note_tag(n))
}

fn note_tag(n: u8) -> String {
    format!("(§{n}) ")
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

/// Writes a partial run (`--only`) into `path`: its rows and notes replace those of
/// `sections` in the generated section already there, which keeps the rest (the rows and
/// notes of the other sections, the header of the run they came from) and gains one line per
/// section re-measured, with its date and load average. Without a generated section to merge
/// into, it is written as a full run would be.
pub fn write_partial(
    path: &Path,
    h: &Header,
    took: Duration,
    sections: &[u8],
    rows: &[Row],
    notes: &[String],
) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let merged = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let line = re_measured(h, took);
            merge(&old[b + BEGIN.len()..e], &line, sections, rows, notes)
        }
        _ => None,
    };
    let text = merged.unwrap_or_else(|| render(h, took, rows, notes));
    write_section(path, &text)
}

/// The header line of a section re-measured alone, after `- §N `.
fn re_measured(h: &Header, took: Duration) -> String {
    format!(
        "re-measured alone{}: {} · run took {:.0} s · load average (1/5/15 min) before the \
         build: {}; at the first measurement: {}; at the end: {}",
        if h.quick { " (QUICK smoke run)" } else { "" },
        h.machine.date,
        took.as_secs_f64(),
        h.load_before,
        h.load_start,
        machine::loadavg()
    )
}

/// The generated text `old` (between the markers) with the rows and notes of `sections`
/// replaced; `None` if `old` has no table.
fn merge(old: &str, line: &str, sections: &[u8], rows: &[Row], notes: &[String]) -> Option<String> {
    let lines: Vec<&str> = old.trim().lines().collect();
    let t = lines.iter().position(|l| l.starts_with("| # |"))?;
    let stale = |l: &str| {
        sections
            .iter()
            .any(|n| l.starts_with(&format!("- §{n} re-measured alone")))
    };
    let mut head: Vec<String> = lines[..t]
        .iter()
        .filter(|l| !stale(l))
        .map(|l| l.to_string())
        .collect();
    while head.last().is_some_and(|l| l.trim().is_empty()) {
        head.pop();
    }
    let mut sorted = sections.to_vec();
    sorted.sort_unstable();
    head.extend(sorted.iter().map(|n| format!("- §{n} {line}")));
    let mut table: Vec<(u8, String)> = Vec::new();
    let mut i = t + 2;
    while let Some(l) = lines.get(i).filter(|l| l.starts_with("| ")) {
        let n: u8 = l[2..].split('|').next()?.trim().parse().ok()?;
        if !sections.contains(&n) {
            table.push((n, l.to_string()));
        }
        i += 1;
    }
    table.extend(rows.iter().map(|r| (r.section, row_line(r))));
    // Stable: the rows of one section keep their order.
    table.sort_by_key(|&(n, _)| n);
    let mut kept: Vec<String> = lines[i..]
        .iter()
        .filter_map(|l| l.strip_prefix("- "))
        .filter(|n| !sections.iter().any(|&s| n.starts_with(&note_tag(s))))
        .map(str::to_string)
        .collect();
    kept.extend(notes.iter().cloned());
    let mut s = head.join("\n");
    s.push_str("\n\n| # | measure | median | min | max | n | target | verdict |\n");
    s.push_str("|---|---|--:|--:|--:|--:|---|---|\n");
    for (_, l) in &table {
        s.push_str(l);
        s.push('\n');
    }
    if !kept.is_empty() {
        s.push_str("\nNotes of this run:\n\n");
        for n in &kept {
            s.push_str(&format!("- {n}\n"));
        }
    }
    Some(s)
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
    fn a_partial_run_replaces_only_its_sections() {
        let old = "### Results\n\n- Date: then\n- §11 re-measured alone: before\n\n\
                   | # | measure | median | min | max | n | target | verdict |\n\
                   |---|---|--:|--:|--:|--:|---|---|\n\
                   | 1 | a | 1 | 1 | 1 | 1 |  |  |\n\
                   | 11 | old | 1 | 1 | 1 | 1 |  |  |\n\
                   | 12 | c | 1 | 1 | 1 | 1 |  |  |\n\n\
                   Notes of this run:\n\n- untagged\n- (§11) old note\n- (§1) kept\n";
        let rows = [Row::measured(11, "new", &[2.0], Unit::Count)];
        let notes = [tag_note(11, "new note")];
        let s = merge(old, "re-measured alone: now", &[11], &rows, &notes).unwrap();
        let table: Vec<&str> = s.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(table.len(), 4, "{s}");
        assert!(table[1].starts_with("| 1 | a"));
        assert!(table[2].starts_with("| 11 | new"));
        assert!(table[3].starts_with("| 12 | c"));
        assert!(s.contains("- Date: then\n- §11 re-measured alone: now\n\n| # |"));
        assert!(!s.contains("before") && !s.contains("old note"));
        assert!(s.contains("- untagged\n- (§1) kept\n- (§11) new note\n"));
        assert_eq!(merge("no table", "x", &[11], &rows, &notes), None);
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
