//! The results table: rows of median/min/max with a target and a verdict, and the machine they
//! were measured on. The same text goes to the terminal and into `BENCHMARKS.md`.

use std::fmt::Write as _;

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
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Section number (1–6).
    pub section: u8,
    /// What was measured.
    pub measure: String,
    /// The numbers, already formatted: median, min, max, n.
    pub cells: [String; 4],
    /// The target, in words.
    pub target: String,
    /// Met or not.
    pub verdict: Verdict,
}

impl Row {
    /// A measured row. `target` is `(text, predicate on the median)`.
    pub fn measured(
        section: u8,
        measure: impl Into<String>,
        values: &[f64],
        unit: Unit,
        target: Option<(&str, &dyn Fn(f64) -> bool)>,
    ) -> Row {
        let Some(s) = Summary::of(values) else {
            return Row::error(section, measure, "no samples");
        };
        let scale = s.median.abs();
        let (target, verdict) = match target {
            None => (String::new(), Verdict::Info),
            Some((t, ok)) => (
                t.to_string(),
                if ok(s.median) {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
            ),
        };
        Row {
            section,
            measure: measure.into(),
            cells: [
                fmt_value(s.median, unit, scale),
                fmt_value(s.min, unit, scale),
                fmt_value(s.max, unit, scale),
                s.n.to_string(),
            ],
            target,
            verdict,
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
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.section, r.measure, r.cells[0], r.cells[1], r.cells[2], r.cells[3], r.target, verdict
        );
    }
    out
}
