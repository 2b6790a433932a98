//! `kperf record`: sample the kernel's instruction pointer (and call
//! stacks) from a timer on every CPU (or those of `-C`) while a workload
//! runs, into `kperf.data`; each sample names its CPU.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use ktrace_abi::trace::PerfEvent;
use probe_sdk::trace::TraceClient;

use super::work::{do_work, work_from};
use crate::{kernel, stop};

/// Arguments of `kperf record`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Samples per second.
    #[arg(short = 'F', long = "freq", default_value_t = 999)]
    pub freq: u32,
    /// Record call stacks (frame-pointer walk).
    #[arg(short = 'g', long = "call-graph")]
    pub call_graph: bool,
    /// Sample for this many seconds when no workload is given.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Keep only the samples of these CPUs (`0,2-3`, as `perf record -C`);
    /// a CPU the VM does not have is refused. Default: every CPU.
    #[arg(short = 'C', long = "cpu", value_name = "LIST")]
    pub cpus: Option<String>,
    /// Where to write the samples.
    #[arg(short = 'o', long, default_value = "kperf.data")]
    pub output: PathBuf,
    /// The kernel ELF used to name frames (default: as `ktrace symbols`).
    #[arg(long, value_name = "ELF")]
    pub kernel: Option<PathBuf>,
    /// The in-kernel workload to sample (arguments of `ktrace workload`).
    #[arg(last = true, value_name = "WORKLOAD ARGS")]
    pub workload: Vec<String>,
}

/// Run `kperf record` against VM `vm`.
pub fn run(args: Args, vm: &str) -> anyhow::Result<()> {
    if args.freq == 0 || args.freq > 10_000 {
        bail!("-F {}: the frequency must be 1 to 10000 Hz", args.freq);
    }
    let work = work_from(&args.workload, args.duration, None)?;
    let elf = match &args.kernel {
        Some(p) => p.clone(),
        None => kernel::kernel_elf(None)?,
    };
    let index = ktrace_symbols::SymbolIndex::open(&elf)
        .with_context(|| format!("reading kernel symbols from {}", elf.display()))?;
    let mut client = kernel::connect(vm, "kperf record")?;
    let online = client.info()?.cpus;
    let cpus = super::select_cpus(args.cpus.as_deref(), online)?;
    let wanted = |cpu: u32| cpus.contains(&cpu);
    stop::catch_signals();
    let id = client.perf_open(PerfEvent::Sampling {
        freq_hz: args.freq,
        max_stack: if args.call_graph { 64 } else { 0 },
    })?;
    let mut samples = Vec::new();
    let r = (|| -> anyhow::Result<(Duration, u64)> {
        client.perf_enable(id)?;
        // The kernel's ring holds 8192 samples (8 s at 999 Hz): a second
        // session drains it while the work runs, so long recordings lose
        // nothing to a full ring. Without a free session, everything is
        // drained at the end as before.
        let draining = Arc::new(AtomicBool::new(true));
        let drainer = {
            let (draining, vm) = (draining.clone(), vm.to_string());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let Ok(mut c) = kernel::connect(&vm, "kperf record (drain)") else {
                    return got;
                };
                while draining.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(250));
                    match c.perf_drain(id, 4096) {
                        Ok((batch, _)) => got.extend(batch),
                        Err(_) => break,
                    }
                }
                got
            })
        };
        let t = do_work(&mut client, &work, true);
        draining.store(false, Ordering::Release);
        let early = drainer.join().unwrap_or_default();
        let t = t?;
        client.perf_disable(id)?;
        samples.extend(
            early
                .iter()
                .filter(|s| wanted(s.cpu))
                .map(|s| super::data_sample(s, args.call_graph, Some(&index))),
        );
        loop {
            let (batch, _) = client.perf_drain(id, 4096)?;
            if batch.is_empty() {
                break;
            }
            samples.extend(
                batch
                    .iter()
                    .filter(|s| wanted(s.cpu))
                    .map(|s| super::data_sample(s, args.call_graph, Some(&index))),
            );
        }
        // Read after the last drain: every loss is counted by now.
        let v = client.perf_read(id)?;
        let lost = cpus
            .iter()
            .filter_map(|&c| v.per_cpu.get(c as usize))
            .map(|c| c.lost)
            .sum();
        Ok((t, lost))
    })();
    let _ = client.perf_close(id);
    let (elapsed, lost) = r?;
    let header = super::DataHeader {
        kperf_data: 1,
        freq_hz: args.freq,
        call_graph: args.call_graph,
        duration_ns: elapsed.as_nanos() as u64,
        samples: samples.len() as u64,
        lost,
        kernel: client.info().map(|i| i.kernel_version).unwrap_or_default(),
    };
    super::write_data(&args.output, &header, &samples)?;
    let per_cpu = cpus
        .iter()
        .map(|&c| {
            let n = samples.iter().filter(|s| s.cpu == c).count();
            format!("CPU{c} {n}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    errln!(
        "[ kperf record: {} samples ({} lost) in {:.2} s written to {} ]",
        samples.len(),
        lost,
        elapsed.as_secs_f64(),
        args.output.display()
    );
    errln!("[ kperf record: samples per CPU: {per_cpu} ]");
    Ok(())
}
