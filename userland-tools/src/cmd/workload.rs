//! `ktrace workload`: run the in-kernel I/O workload generator (fio-like)
//! and report IOPS, bandwidth and latency percentiles.
use std::io::Write as _;

use anyhow::bail;
use probe_sdk::client::ConnectOptions;
use probe_sdk::vm::Vm;

pub use crate::workload::Args;
use crate::workload::{progress_line, render, spec_from_args};

/// Run `ktrace workload` against VM `vm_name`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let spec = spec_from_args(&args)?;
    let vm = Vm::attach(vm_name)?;
    let mut client = vm.connect(&ConnectOptions {
        client_name: "ktrace workload".into(),
        ..ConnectOptions::default()
    })?;
    let quiet = args.quiet || args.json;
    let mut shown = false;
    let report = client.run_workload(&spec, |p| {
        if !quiet {
            err!("\r{}", progress_line(p));
            let _ = std::io::stderr().flush();
            shown = true;
        }
    });
    if shown {
        errln!();
    }
    let report = report?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", render(&spec, &report));
    }
    if report.verify_failures > 0 {
        bail!(
            "verify failed: {} of {} blocks differ; first: {}",
            report.verify_failures,
            report.verified_blocks,
            report.first_mismatch.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
