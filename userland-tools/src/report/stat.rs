//! Counter tables in the shape of `perf stat`:
//!
//! ```text
//!  Performance counter stats for 'workload randread' (3 runs):
//!
//!              1,234      block:block_rq_issue      #  617.0 /sec   ( +-  1.20% )
//!      <not supported>    cycles
//!
//!        2.000123456 seconds time elapsed
//! ```

use serde::Serialize;

/// One counter over one or more runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CounterRow {
    pub event: String,
    /// One value per run; `None` when the event is not supported.
    pub values: Option<Vec<u64>>,
    /// Unit shown after the value (`msec` for task-clock), empty otherwise.
    pub unit: String,
    /// The CPU counted, for a row of `perf stat -A` (`None`: the CPUs
    /// summed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
}

impl CounterRow {
    /// Mean over runs.
    pub fn mean(&self) -> Option<f64> {
        let v = self.values.as_ref()?;
        if v.is_empty() {
            return None;
        }
        Some(v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64)
    }

    /// Relative standard error of the mean in percent, as `perf stat -r`
    /// prints it (`( +- x% )`); `None` with fewer than two runs.
    pub fn variance_pct(&self) -> Option<f64> {
        let v = self.values.as_ref()?;
        if v.len() < 2 {
            return None;
        }
        let n = v.len() as f64;
        let mean = self.mean()?;
        if mean == 0.0 {
            return Some(0.0);
        }
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        Some((var / n).sqrt() / mean * 100.0)
    }
}

/// Group digits by thousands (`1234567` → `1,234,567`).
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Render the table. `elapsed_s` is the mean wall time of one run.
pub fn render(title: &str, runs: usize, rows: &[CounterRow], elapsed_s: f64) -> String {
    let mut out = String::new();
    if runs > 1 {
        out.push_str(&format!(
            "\n Performance counter stats for '{title}' ({runs} runs):\n\n"
        ));
    } else {
        out.push_str(&format!("\n Performance counter stats for '{title}':\n\n"));
    }
    let name_w = rows
        .iter()
        .map(|r| r.event.len())
        .max()
        .unwrap_or(0)
        .max(20);
    for r in rows {
        if let Some(cpu) = r.cpu {
            out.push_str(&format!("{:<7}", format!("CPU{cpu}")));
        }
        match r.mean() {
            None => out.push_str(&format!("{:>19}      {}\n", "<not supported>", r.event)),
            Some(mean) => {
                let value = if r.unit == "msec" {
                    format!("{:.2} msec", mean)
                } else {
                    thousands(mean.round() as u64)
                };
                let rate = match metric(r, mean, elapsed_s) {
                    Some((cpus, unit)) if r.unit == "msec" => format!("#  {cpus:.3} {unit}"),
                    Some((rate, unit)) => format!("#  {rate:.1} {unit}"),
                    None if r.unit == "msec" => "#  0.000 CPUs utilized".to_string(),
                    None => String::new(),
                };
                let var = r
                    .variance_pct()
                    .map(|p| format!("  ( +- {p:5.2}% )"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{value:>19}      {:<name_w$} {rate}{var}\n",
                    r.event
                ));
            }
        }
    }
    out.push_str(&format!("\n {elapsed_s:>18.9} seconds time elapsed\n"));
    out
}

/// The metric `perf stat` prints after a counter: CPUs utilized for
/// task-clock (msec), a rate otherwise; `None` without a time.
fn metric(r: &CounterRow, mean: f64, elapsed_s: f64) -> Option<(f64, &'static str)> {
    if elapsed_s <= 0.0 {
        return None;
    }
    Some(if r.unit == "msec" {
        (mean / 1000.0 / elapsed_s, "CPUs utilized")
    } else {
        (mean / elapsed_s, "/sec")
    })
}

/// One counter as a `perf stat -x SEP` line, in perf's field order:
/// value, unit, event, variance (with several runs), run time (ns),
/// percentage of that time counted, metric value, metric unit. `prefix` is
/// the interval time stamp of `-I` (with its separator), or empty.
pub fn csv_line(prefix: &str, r: &CounterRow, elapsed_s: f64, sep: &str) -> String {
    let runtime_ns = (elapsed_s * 1e9).round() as u64;
    let Some(mean) = r.mean() else {
        return format!(
            "{prefix}<not supported>{sep}{sep}{}{sep}0{sep}100.00{sep}{sep}",
            r.event
        );
    };
    let value = if r.unit == "msec" {
        format!("{mean:.2}")
    } else {
        format!("{}", mean.round() as u64)
    };
    let variance = r
        .variance_pct()
        .map(|p| format!("{sep}{p:.2}%"))
        .unwrap_or_default();
    let (metric_value, metric_unit) = match metric(r, mean, elapsed_s) {
        Some((v, unit)) => (format!("{v:.3}"), unit),
        None => (String::new(), ""),
    };
    format!(
        "{prefix}{value}{sep}{}{sep}{}{variance}{sep}{runtime_ns}{sep}100.00{sep}{metric_value}{sep}{metric_unit}",
        r.unit, r.event
    )
}

/// The table as `perf stat -x SEP` prints it: one [`csv_line`] per
/// counter, no title, no elapsed line.
pub fn render_csv(rows: &[CounterRow], elapsed_s: f64, sep: &str) -> String {
    rows.iter()
        .map(|r| {
            let prefix = r.cpu.map(|c| format!("CPU{c}{sep}")).unwrap_or_default();
            csv_line(&prefix, r, elapsed_s, sep) + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn variance_is_standard_error_of_mean() {
        let r = CounterRow {
            event: "x".into(),
            values: Some(vec![90, 110]),
            unit: String::new(),
            cpu: None,
        };
        assert_eq!(r.mean(), Some(100.0));
        // sd = 14.142, se = 10, 10%.
        assert!((r.variance_pct().unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn renders_rates_and_unsupported() {
        let rows = vec![
            CounterRow {
                event: "context-switches".into(),
                values: Some(vec![2000]),
                unit: String::new(),
                cpu: None,
            },
            CounterRow {
                event: "cycles".into(),
                values: None,
                unit: String::new(),
                cpu: None,
            },
        ];
        let t = render("sleep 2", 1, &rows, 2.0);
        assert!(t.contains("Performance counter stats for 'sleep 2':"));
        assert!(
            t.contains("              2,000      context-switches     #  1000.0 /sec"),
            "{t}"
        );
        assert!(t.contains("    <not supported>      cycles"), "{t}");
        assert!(t.contains("2.000000000 seconds time elapsed"));
    }

    #[test]
    fn per_cpu_rows_start_with_the_cpu_as_perf_stat_a() {
        let row = |cpu, v| CounterRow {
            event: "context-switches".into(),
            values: Some(vec![v]),
            unit: String::new(),
            cpu: Some(cpu),
        };
        let rows = [row(0, 1500), row(1, 500)];
        let t = render("sleep 1", 1, &rows, 1.0);
        assert!(
            t.contains("\nCPU0                 1,500      context-switches     #  1500.0 /sec\n"),
            "{t}"
        );
        assert!(
            t.contains("\nCPU1                   500      context-switches"),
            "{t}"
        );
        assert_eq!(
            render_csv(&rows, 1.0, ","),
            "CPU0,1500,,context-switches,1000000000,100.00,1500.000,/sec\n\
             CPU1,500,,context-switches,1000000000,100.00,500.000,/sec\n"
        );
    }

    #[test]
    fn csv_lines_have_perfs_fields() {
        let row = |event: &str, values: Option<Vec<u64>>, unit: &str| CounterRow {
            event: event.into(),
            values,
            unit: unit.into(),
            cpu: None,
        };
        let t = render_csv(
            &[
                row("task-clock", Some(vec![1200]), "msec"),
                row("context-switches", Some(vec![3000]), ""),
                row("cycles", None, ""),
            ],
            2.0,
            ",",
        );
        assert_eq!(
            t,
            "1200.00,msec,task-clock,2000000000,100.00,0.600,CPUs utilized\n\
             3000,,context-switches,2000000000,100.00,1500.000,/sec\n\
             <not supported>,,cycles,0,100.00,,\n"
        );
        // With several runs the variance comes after the event name.
        let r = row("irqs", Some(vec![90, 110]), "");
        assert_eq!(
            csv_line("1.000000000;", &r, 1.0, ";"),
            "1.000000000;100;;irqs;10.00%;1000000000;100.00;100.000;/sec"
        );
    }
}
