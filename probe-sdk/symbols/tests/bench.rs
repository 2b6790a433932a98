//! Figures, not pass/fail: run with
//! `cargo test --release -p ktrace-symbols --test bench -- --ignored --nocapture`.
//!
//! - `lookups_vs_nm`: index an ELF once, answer 1,000 queries, and time the
//!   same lookups done the shell way (`nm -C <elf> | grep -F <name>`, one
//!   pipeline per lookup), in the same run.
//! - `index_time_by_symbol_count`: generate ELFs with 1k … 200k functions
//!   (`object::write`) and time indexing each.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ktrace_symbols::{ResolveOptions, SymbolIndex};
use object::write::{Object, StandardSection, Symbol, SymbolSection};
use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolKind, SymbolScope};

/// The kernel if it was built, else the legacy fixture.
fn bench_elf() -> PathBuf {
    let kernel = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/kernel/kernel/kernel");
    if kernel.is_file() {
        kernel
    } else {
        common::build_fixture(false)
    }
}

/// `nm -C <elf> | grep -F -- <needle>`: two processes joined by a pipe.
fn nm_grep(elf: &Path, needle: &str) -> usize {
    let mut nm = Command::new("nm")
        .arg("-C")
        .arg(elf)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run nm");
    let out = Command::new("grep")
        .args(["-F", "--", needle])
        .stdin(nm.stdout.take().expect("nm stdout"))
        .output()
        .expect("run grep");
    nm.wait().expect("wait for nm");
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

/// CPU time this thread has run, in ns (Linux schedstat): unlike wall
/// time, it does not grow when other jobs share the cores.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// CPU time (user + system) of this process's reaped children, in ns
/// (`/proc/self/stat` fields 16 and 17, in clock ticks of 10 ms).
fn children_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); cutime is field 16, cstime 17.
    let ticks: u64 = fields.get(13)?.parse::<u64>().ok()? + fields.get(14)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000)
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

#[test]
#[ignore = "benchmark: prints figures"]
fn lookups_vs_nm() {
    for elf in [bench_elf(), common::build_fixture(true)] {
        let cpu = thread_cpu_ns();
        let t = Instant::now();
        let index = SymbolIndex::from_path(&elf).expect("index");
        let index_time = t.elapsed();
        let index_cpu_ms = match (cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e6,
            _ => f64::NAN,
        };
        // 1,000 queries cycling over the functions: the full path, and the
        // last two segments (a suffix query).
        let fns: Vec<_> = index.functions().iter().filter(|f| f.size > 0).collect();
        let queries: Vec<String> = (0..1000)
            .map(|i| {
                let f = fns[(i * 7919) % fns.len()];
                if i % 2 == 0 {
                    f.name.clone()
                } else {
                    let p = f.search_paths()[0].clone();
                    let segs: Vec<&str> = p.rsplitn(3, "::").collect();
                    segs[..segs.len().min(2)]
                        .iter()
                        .rev()
                        .copied()
                        .collect::<Vec<_>>()
                        .join("::")
                }
            })
            .collect();
        let cpu = thread_cpu_ns();
        let t = Instant::now();
        let mut found = 0;
        for q in &queries {
            found += index.find(q).len();
        }
        let find_time = t.elapsed();
        let find_cpu_us = match (cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e3 / queries.len() as f64,
            _ => f64::NAN,
        };
        let t = Instant::now();
        let mut resolved = 0;
        for q in &queries {
            let all = ResolveOptions {
                all: true,
                ..Default::default()
            };
            if let Ok(r) = index.resolve(q, all) {
                resolved += r.points.len();
            }
        }
        let resolve_time = t.elapsed();
        // nm spawns two processes per lookup; 200 of the same queries give
        // a stable per-lookup figure.
        let n_nm = 200;
        let cpu = children_cpu_ns();
        let t = Instant::now();
        let mut nm_lines = 0;
        for q in &queries[..n_nm] {
            nm_lines += nm_grep(&elf, q);
        }
        let nm_time = t.elapsed();
        let nm_cpu_us = match (cpu, children_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e3 / n_nm as f64,
            _ => f64::NAN,
        };
        let (find_us, resolve_us, nm_us) = (
            per(find_time, queries.len()),
            per(resolve_time, queries.len()),
            per(nm_time, n_nm),
        );
        println!(
            "{}: {} functions, indexed in {:.1} ms ({index_cpu_ms:.1} ms cpu)\n  \
             find (name -> addresses): {find_us:.2} us/lookup ({found} hits)\n  \
             resolve (+ boundary check, file:line): {resolve_us:.2} us/lookup ({resolved} points)\n  \
             nm -C | grep -F: {nm_us:.0} us/lookup ({nm_lines} lines for {n_nm})\n  \
             ratio nm/find = {:.0}x, nm/resolve = {:.0}x; break-even after {:.0} lookups including indexing\n  \
             cpu time only: find {find_cpu_us:.2} us/lookup, nm + grep {nm_cpu_us:.0} us/lookup, ratio {:.0}x",
            elf.file_name().unwrap().to_string_lossy(),
            index.functions().len(),
            index_time.as_secs_f64() * 1e3,
            nm_us / find_us,
            nm_us / resolve_us,
            index_time.as_secs_f64() * 1e6 / (nm_us - resolve_us),
            nm_cpu_us / find_cpu_us,
        );
        std::io::stdout().flush().ok();
    }
}

/// A relocatable ELF with `n` legacy-mangled functions of 16 bytes each
/// (`push rbp; mov rbp, rsp; xor eax, eax; pop rbp; ret` + padding).
fn synthetic_elf(n: usize) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.section_id(StandardSection::Text);
    let body: [u8; 16] = [
        0x55, 0x48, 0x89, 0xe5, 0x31, 0xc0, 0x5d, 0xc3, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
        0x90,
    ];
    let mut code = Vec::with_capacity(n * 16);
    for _ in 0..n {
        code.extend_from_slice(&body);
    }
    obj.append_section_data(text, &code, 16);
    for i in 0..n {
        let segs = [
            "kernel".to_string(),
            format!("sub{}", i % 97),
            format!("mod{}", i % 13),
            format!("func_{i}"),
        ];
        let mut name = String::from("_ZN");
        for s in &segs {
            name.push_str(&format!("{}{}", s.len(), s));
        }
        name.push_str(&format!(
            "17h{:016x}E",
            (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ));
        obj.add_symbol(Symbol {
            name: name.into_bytes(),
            value: (i * 16) as u64,
            size: 16,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
    }
    obj.write().expect("write ELF")
}

#[test]
#[ignore = "benchmark: prints figures"]
fn index_time_by_symbol_count() {
    println!("functions  index ms (wall)  index ms (cpu)  cpu ns/function  find us/lookup");
    for n in [1_000, 10_000, 50_000, 100_000, 200_000] {
        let elf = synthetic_elf(n);
        let cpu = thread_cpu_ns();
        let t = Instant::now();
        let index = SymbolIndex::from_bytes(&elf).expect("index");
        let took = t.elapsed();
        let cpu_ns = match (cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64,
            _ => f64::NAN,
        };
        assert_eq!(index.functions().len(), n);
        // Queries on the big index still hit one function each.
        let t = Instant::now();
        for i in (0..n).step_by((n / 1000).max(1)).take(1000) {
            let hits = index.find(&format!("mod{}::func_{i}", i % 13));
            assert_eq!(hits.len(), 1);
            assert_eq!(hits[0].addr, (i * 16) as u64);
        }
        let find = t.elapsed();
        let res = index
            .resolve(&format!("func_{}+0x1", n - 1), ResolveOptions::default())
            .unwrap();
        assert_eq!(res.points[0].addr, ((n - 1) * 16 + 1) as u64);
        println!(
            "{n:>9}  {:>15.1}  {:>14.1}  {:>15.0}  {:>14.2}",
            took.as_secs_f64() * 1e3,
            cpu_ns / 1e6,
            cpu_ns / n as f64,
            per(find, 1000.min(n)),
        );
    }
}
