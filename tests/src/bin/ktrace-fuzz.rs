//! `ktrace-fuzz`: the coverage-guided fuzzer of the control protocol (see
//! `ktrace_tests::fuzz` and docs/fuzz.md).
//!
//! ```text
//! ktrace-fuzz [--secs N] [--seed N] [--corpus DIR] [--save-corpus]
//!             [--crashes DIR] [--no-minimise] [--random] [--kernel ELF]
//! ktrace-fuzz --replay FILE [--kernel ELF]
//! ```
//! Exits 1 when a run finds a failure or a replay fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ktrace_tests::fuzz::{self, EdgeMap, Mode, Options, Program};
use probe_sdk::kernel_image::{self, Flavor};

const USAGE: &str = "usage: ktrace-fuzz [--secs N] [--seed N] [--corpus DIR] [--save-corpus] [--crashes DIR] [--no-minimise] [--random] [--kernel ELF] [--request-timeout SECS]\n       ktrace-fuzz --replay FILE [--kernel ELF]";

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
        request_timeout: Duration::from_secs(30),
        vm_name: "fuzz".into(),
    };
    let mut replay = None;
    let mut kernel = None;
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
            "--random" => opts.mode = Mode::Random,
            "--request-timeout" => {
                opts.request_timeout = Duration::from_secs(number(value("seconds")?)?)
            }
            "--replay" => replay = Some(PathBuf::from(value("a file")?)),
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
    let map = EdgeMap::from_elf(&elf)?;
    let report = fuzz::fuzz(&elf, &opts, &mut |line| eprintln!("{line}"));
    println!("{}", map.summary(&report.edges));
    for c in &report.crashes {
        println!(
            "failure: {} (after {:.0} s; reproducer {} steps{}: {})",
            c.signature,
            c.found_after.as_secs_f64(),
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
