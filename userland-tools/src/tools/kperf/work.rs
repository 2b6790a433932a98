//! What `kperf stat` and `kperf record` measure: an in-kernel workload
//! given after `--`, or a time.

use std::time::{Duration, Instant};

use anyhow::bail;
use ktrace_abi::block::WorkloadSpec;
use probe_sdk::client::Client;

use crate::{stop, workload};

/// What to measure: a workload, or a time.
pub enum Work {
    Workload(WorkloadSpec, String),
    Sleep(Duration),
}

/// The work of `args` (a workload after `--`) or `duration` (else `default_s`).
pub fn work_from(
    args: &[String],
    duration: Option<f64>,
    default_s: Option<f64>,
) -> anyhow::Result<Work> {
    if !args.is_empty() {
        if duration.is_some() {
            bail!("give either --duration or a workload after `--`, not both");
        }
        return Ok(Work::Workload(
            workload::workload_spec(args)?,
            format!("workload {}", args.join(" ")),
        ));
    }
    match duration.or(default_s) {
        Some(d) if d > 0.0 && d.is_finite() => Ok(Work::Sleep(Duration::from_secs_f64(d))),
        Some(_) => bail!("--duration must be a positive number of seconds"),
        None => bail!(
            "nothing to measure: give --duration SECONDS or a workload after `--` \
             (e.g. `-- --dev vda --rw randread --count 1000`)"
        ),
    }
}

/// Runs the work once; returns its wall time.
pub fn do_work(client: &mut Client, work: &Work, progress: bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    match work {
        Work::Workload(spec, _) => {
            let mut shown = false;
            let r = workload::run_workload_with_events(
                client,
                spec,
                |p| {
                    if progress {
                        err!("\r{}", workload::progress_line(p));
                        shown = true;
                    }
                },
                |_| {},
            );
            if shown {
                errln!();
            }
            let r = r?;
            if r.errors > 0 {
                errln!(
                    "kperf: the workload saw {} I/O errors ({})",
                    r.errors,
                    r.first_error.as_deref().unwrap_or("?")
                );
            }
        }
        Work::Sleep(d) => {
            stop::sleep_unless_stopped(*d);
        }
    }
    Ok(start.elapsed())
}
