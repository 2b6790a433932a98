//! `ktrace-fuzz`: the coverage-guided fuzzer of the control protocol (see
//! `ktrace_tests::fuzz` and docs/fuzz.md).
//!
//! ```text
//! ktrace-fuzz [--secs N] [--seed N] [--corpus DIR] [--save-corpus]
//!             [--crashes DIR] [--no-minimise] [--minimise-secs N] [--random] [--kernel ELF]
//!             [--coverage-file FILE]
//! ktrace-fuzz --replay FILE [--kernel ELF]
//! ktrace-fuzz --minimise FILE [--minimise-secs N] [--kernel ELF]
//! ktrace-fuzz --minimize-corpus [--dry-run] [--corpus DIR] [--kernel ELF]
//! ```
//! Exits 1 when a run finds a failure or a replay fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ktrace_tests::fuzz::{self, EdgeMap, Mode, Options, Program};
use probe_sdk::kernel_image::{self, Flavor};

const USAGE: &str = "usage: ktrace-fuzz [--secs N] [--seed N] [--corpus DIR] [--save-corpus] [--crashes DIR] [--no-minimise] [--minimise-secs N] [--random] [--kernel ELF] [--request-timeout SECS] [--coverage-file FILE]\n       ktrace-fuzz --replay FILE [--kernel ELF]\n       ktrace-fuzz --minimise FILE [--minimise-secs N] [--kernel ELF]\n       ktrace-fuzz --minimize-corpus [--dry-run] [--corpus DIR] [--kernel ELF]";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ktrace-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let root = kernel_image::workspace_root();
    let mut opts = Options {
        mode: Mode::Guided,
        seed: 0x6b74_7261_6365_2121,
        budget: Duration::from_secs(120),
        corpus: Some(root.join("tests/fuzz-corpus")),
        save_corpus: false,
        crashes: root.join("target/fuzz-crashes"),
        minimise: true,
        minimise_budget: Duration::from_secs(600),
        request_timeout: Duration::from_secs(30),
        vm_name: "fuzz".into(),
    };
    let mut replay = None;
    let mut kernel = None;
    let mut minimize_corpus = false;
    let mut minimise_file = None;
    let mut dry_run = false;
    let mut coverage_file = Some(root.join("target/fuzz-coverage.json"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().ok_or(format!("{a} needs {what}\n{USAGE}"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{a}: not a number: {v}"))
        };
        match a.as_str() {
            "--secs" => opts.budget = Duration::from_secs(number(value("seconds")?)?),
            "--seed" => opts.seed = number(value("a number")?)?,
            "--corpus" => opts.corpus = Some(PathBuf::from(value("a directory")?)),
            "--no-corpus" => opts.corpus = None,
            "--save-corpus" => opts.save_corpus = true,
            "--crashes" => opts.crashes = PathBuf::from(value("a directory")?),
            "--no-minimise" => opts.minimise = false,
            "--minimise-secs" => {
                opts.minimise_budget = Duration::from_secs(number(value("seconds")?)?)
            }
            "--random" => opts.mode = Mode::Random,
            "--request-timeout" => {
                opts.request_timeout = Duration::from_secs(number(value("seconds")?)?)
            }
            "--replay" => replay = Some(PathBuf::from(value("a file")?)),
            "--minimise" => minimise_file = Some(PathBuf::from(value("a file")?)),
            "--minimize-corpus" => minimize_corpus = true,
            "--dry-run" => dry_run = true,
            "--coverage-file" => coverage_file = Some(PathBuf::from(value("a file")?)),
            "--no-coverage-file" => coverage_file = None,
            "--kernel" => kernel = Some(PathBuf::from(value("an ELF file")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    let elf = match kernel {
        Some(k) => k,
        None => {
            eprintln!("building the coverage kernel...");
            kernel_image::prepare_flavor(Flavor::Coverage, true)
                .map_err(|e| e.to_string())?
                .source
        }
    };
    if let Some(path) = replay {
        let prog = Program::load(&path)?;
        println!(
            "replaying {} ({} steps):\n{}",
            path.display(),
            prog.steps.len(),
            prog.describe()
        );
        let mut ex = fuzz::Executor::new(&elf, "fuzz-replay", opts.request_timeout);
        ex.verbose = true;
        let t = Instant::now();
        let (verdict, _) = ex.replay(&prog)?;
        return Ok(match verdict.signature() {
            Some(sig) => {
                println!(
                    "FAILED after {:.1} s: {sig}\n{verdict:?}",
                    t.elapsed().as_secs_f64()
                );
                ExitCode::from(1)
            }
            None => {
                println!("the kernel is alive after the {} steps", prog.steps.len());
                ExitCode::SUCCESS
            }
        });
    }
    if let Some(path) = minimise_file {
        let prog = Program::load(&path)?;
        let mut ex = fuzz::Executor::new(&elf, "fuzz-min", opts.request_timeout);
        let t = Instant::now();
        let Some((sig, min)) = ex.minimise_program(&prog, opts.minimise_budget) else {
            println!("{} did not fail in three replays", path.display());
            return Ok(ExitCode::from(1));
        };
        let out = path.with_extension("min.json");
        min.save(&out)
            .map_err(|e| format!("{}: {e}", out.display()))?;
        println!(
            "{sig}\n{} steps -> {} in {:.0} s: {}\n{}",
            prog.steps.len(),
            min.steps.len(),
            t.elapsed().as_secs_f64(),
            out.display(),
            min.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if minimize_corpus {
        let dir = opts
            .corpus
            .clone()
            .ok_or("--minimize-corpus needs a corpus")?;
        let cut = fuzz::minimize_corpus(
            &elf,
            &dir,
            "fuzz-cmin",
            opts.request_timeout,
            dry_run,
            &mut |line| eprintln!("{line}"),
        )?;
        println!(
            "{}: {} programs reach {} edges; {} keep them all{}",
            dir.display(),
            cut.before,
            cut.edges,
            cut.kept.len(),
            if dry_run {
                format!(" ({} would be removed)", cut.removed.len())
            } else {
                format!(" ({} removed)", cut.removed.len())
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let map = EdgeMap::from_elf(&elf)?;
    let t = Instant::now();
    let report = fuzz::fuzz(&elf, &opts, &mut |line| eprintln!("{line}"));
    println!(
        "this run ({:.0} s):\n{}",
        t.elapsed().as_secs_f64(),
        map.summary(&report.edges)
    );
    if let Some(path) = &coverage_file {
        let mut acc = fuzz::Accumulated::load(path, &elf, map.guard_function.len());
        acc.add(path, &report.edges, t.elapsed().as_secs_f64())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let all = acc.edges.iter().copied().collect();
        println!(
            "accumulated over {} runs ({:.0} s) on this kernel build ({}):\n{}",
            acc.runs,
            acc.seconds,
            path.display(),
            map.summary(&all)
        );
    }
    for c in &report.crashes {
        println!(
            "failure: {} (after {:.0} s, {} requests; reproducer {} steps{}: {})",
            c.signature,
            c.found_after.as_secs_f64(),
            c.requests_before,
            c.reproducer_steps,
            if c.reproduced {
                ", minimised"
            } else {
                ", not reproduced"
            },
            c.reproducer
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        );
    }
    Ok(if report.crashes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
