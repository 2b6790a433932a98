//! Rust names a user can select, through the real binaries: a source line
//! the compiler duplicated gets a probe on every copy (`probe add`,
//! `ktrace load`, `kperf stat`), a function copied into several codegen
//! units resolves to all its copies, closures are selected by where they
//! start (`path@file.rs:LINE`), `<Type as Trait>::method` survives a
//! section name, `--all` attaches to every match, a foreign object (a clang
//! object naming a Linux function) loads with `--no-attach` and attaches
//! elsewhere with `--attach PROG=TARGET`, `ktrace build --check` refuses a
//! misspelt target, and the symbol listing fits the terminal.

use std::process::Command;

use ktrace_tests::{compile_c, json, TestVm};
use ktrace_tests::{run_tool as run, run_tool_ok as run_ok, tool};
use probe_sdk::kernel_image;

/// Functions the compiler copied into several codegen units (one
/// instantiation: one legacy hash at several addresses), each with its
/// copies' addresses. Which functions get copied depends on codegen, so the
/// test looks them up in the tests' kernel; those of the kernel's own
/// crates come first.
fn copied_functions() -> Vec<(String, Vec<u64>)> {
    let index = ktrace_symbols::SymbolIndex::open(&ktrace_tests::kernel_image().source).unwrap();
    let mut by_name: std::collections::BTreeMap<&str, Vec<&ktrace_symbols::Function>> =
        Default::default();
    for f in index.functions() {
        if f.hash.is_some() && f.size > 0 {
            by_name.entry(&f.name).or_default().push(f);
        }
    }
    let copied = by_name
        .into_iter()
        .filter(|(_, fs)| fs.len() >= 2 && fs.iter().all(|f| f.demangled == fs[0].demangled));
    let (ours, theirs): (Vec<_>, Vec<_>) = copied.partition(|(n, _)| {
        n.starts_with("kernel::") || n.contains("ktrace_") || n.contains("<kernel::")
    });
    let found: Vec<_> = ours
        .into_iter()
        .chain(theirs)
        .filter_map(|(name, fs)| {
            let res = index
                .resolve(name, ktrace_symbols::ResolveOptions::default())
                .ok()?;
            let mut addrs: Vec<u64> = fs.iter().map(|f| f.addr).collect();
            addrs.sort_unstable();
            addrs.dedup();
            (res.points.len() == addrs.len()).then(|| (name.to_string(), addrs))
        })
        .collect();
    assert!(
        !found.is_empty(),
        "the kernel has no function copied into several codegen units"
    );
    found
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `block/queue.rs:LINE` of a line of `submit_bio` that runs once per call
/// (past the early return for a bad bio, before the merge/insert decision)
/// and that the compiler duplicated: it copies the tail of the function into
/// the arms of that decision, and one copy or the other runs. Candidates
/// are read from the source; the first with several copies is taken.
fn duplicated_line() -> String {
    let src = kernel_image::workspace_root().join("kernel/src/block/queue.rs");
    let source = std::fs::read_to_string(src).unwrap();
    let candidates = ["bio.id = NEXT_BIO_ID.fetch_add", "bio.queued_ns = now;"];
    for needle in candidates {
        let Some(i) = source.lines().position(|l| l.contains(needle)) else {
            continue;
        };
        let line = format!("block/queue.rs:{}", i + 1);
        let out = run("ktrace", &["symbols", "--json", &line]);
        if !out.status.success() {
            continue;
        }
        let v = json(&text(&out.stdout));
        if v["points"].as_array().is_some_and(|p| p.len() >= 2) {
            return line;
        }
    }
    panic!("none of the lines {candidates:?} of submit_bio has several copies in this build; the test needs one");
}

/// A program that only returns, in section `section`: what it attaches to
/// is what the test looks at (the kernel counts its runs).
fn c_program(section: &str) -> String {
    format!(
        "__attribute__((section(\"{section}\"), used)) int prog(void *ctx) {{ return 0; }}\n\
         char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n"
    )
}

#[test]
fn symbols_name_every_copy_and_every_closure() {
    // A duplicated line: every copy, and a note saying so.
    let line = duplicated_line();
    let out = run(
        "ktrace",
        &["symbols", "--json", &format!("kernel/src/{line}")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = json(&text(&out.stdout));
    let points = v["points"].as_array().unwrap();
    assert!(
        points.len() >= 2,
        "{line} should have several copies (the test relies on it): {v}"
    );
    assert!(points
        .iter()
        .all(|p| p["function"] == "kernel::block::queue::RequestQueue::submit_bio"));
    assert!(
        v["note"]
            .as_str()
            .unwrap()
            .contains("has several copies (the compiler duplicated its code); probing every one"),
        "{v}"
    );

    // One instantiation copied into several codegen units: every copy,
    // no --all.
    let (copied, addrs) = copied_functions().swap_remove(0);
    let v = json(&run_ok("ktrace", &["symbols", "--json", &copied]));
    let got: Vec<u64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["addr"].as_u64().unwrap())
        .collect();
    assert_eq!(got, addrs, "{v}");
    assert!(
        v["note"]
            .as_str()
            .unwrap()
            .contains(&format!("has {} copies", addrs.len())),
        "{v}"
    );

    // Monomorphizations (legacy names carry no type arguments) by the
    // arguments DWARF gives each instance.
    let out = run("ktrace", &["symbols", "kernel::trace::tracepoint::emit"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("monomorphizations of one generic function match"),
        "{err}"
    );
    let selectors: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split("(select with `").nth(1))
        .map(|s| s.trim_end_matches("`)"))
        .collect();
    assert!(selectors.len() >= 2, "{err}");
    let mut addrs = Vec::new();
    for s in &selectors {
        // `emit::<SchedSwitch>`: the event type, not a hash.
        let args = s
            .strip_prefix("kernel::trace::tracepoint::emit::<")
            .and_then(|a| a.strip_suffix('>'))
            .unwrap_or_else(|| panic!("{s}"));
        assert!(args.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
        let v = json(&run_ok("ktrace", &["symbols", "--json", s]));
        assert_eq!(v["points"].as_array().unwrap().len(), 1, "{s}: {v}");
        addrs.push(v["points"][0]["addr"].as_u64().unwrap());
    }
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), selectors.len(), "{selectors:?}");

    // Closures: the ambiguity offers `path@file:line` for each, and each
    // selects exactly one.
    let out = run("ktrace", &["symbols", "bpf::handle::{{closure}}"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("closures match"), "{err}");
    let selectors: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split("(select with `").nth(1))
        .map(|s| s.trim_end_matches("`)"))
        .collect();
    assert!(selectors.len() >= 2, "{err}");
    let mut addrs = Vec::new();
    for s in &selectors {
        assert!(s.contains("{closure}@bpf/mod.rs:"), "{s}");
        let v = json(&run_ok("ktrace", &["symbols", "--json", s]));
        let points = v["points"].as_array().unwrap();
        assert_eq!(points.len(), 1, "{s}: {v}");
        addrs.push(points[0]["addr"].as_u64().unwrap());
    }
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), selectors.len(), "{selectors:?}");

    // The listing fits a terminal; a pipe and --wide get every character.
    let glob = "*btree*insert*";
    let piped = run_ok("ktrace", &["symbols", glob]);
    let longest = piped.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(longest > 120, "{piped}");
    let on_tty = |extra: &str| {
        let cmd = format!(
            "COLUMNS=100 {} symbols {extra} '{glob}'",
            ktrace_tests::tools_dir().join("ktrace").display()
        );
        // The same kernel as `run`: script(1) passes the environment on.
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env(
                kernel_image::KERNEL_ENV,
                &ktrace_tests::kernel_image().source,
            )
            .output()
            .expect("script(1) from util-linux");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).replace('\r', "")
    };
    let fitted = on_tty("");
    assert_eq!(fitted.lines().count(), piped.lines().count(), "{fitted}");
    for l in fitted.lines() {
        assert!(l.chars().count() <= 100, "{l}");
        assert!(l.contains('…'), "{l}");
    }
    assert_eq!(on_tty("--wide"), piped);
}

/// `ktrace build --check` resolves kprobe targets against the kernel ELF:
/// a misspelt one is refused with the closest names. A `#[kprobe]` on
/// `<Type as Trait>::method`, as an ambiguity message suggests it, builds
/// (its spaces travel as `%20` in the section name) and resolves.
#[test]
fn build_check_refuses_a_misspelt_target() {
    let root = kernel_image::workspace_root();
    let dir = std::env::temp_dir().join(format!("ktrace-names-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let krate = dir.join("typo");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let manifest = std::fs::read_to_string(root.join("examples/count-calls/Cargo.toml"))
        .unwrap()
        .replace("name = \"count-calls\"", "name = \"typo\"")
        .replace("path = \"../../", &format!("path = \"{}/", root.display()));
    std::fs::write(krate.join("Cargo.toml"), manifest).unwrap();
    let lib = std::fs::read_to_string(root.join("examples/count-calls/src/lib.rs")).unwrap();
    assert!(lib.contains("RequestQueue::submit_bio\""), "{lib}");
    let lib = lib.replace(
        "ktrace_probe::license!",
        "#[kprobe(\"<Deadline<P> as Scheduler<P>>::dispatch\")]\n\
         fn dispatch(_ctx: KprobeContext) -> u32 {\n    TOTAL.add(0, 1);\n    0\n}\n\n\
         ktrace_probe::license!",
    );
    let build = |lib: &str| {
        std::fs::write(krate.join("src/lib.rs"), lib).unwrap();
        tool("ktrace")
            .args(["build", "--check", "-o"])
            .arg(&dir)
            .arg(&krate)
            .output()
            .unwrap()
    };
    let out = build(&lib.replace("RequestQueue::submit_bio\"", "RequestQueue::submit_bioo\""));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("RequestQueue::submit_bioo`: no function matches")
            && err.contains("did you mean:\n  kernel::block::queue::RequestQueue::submit_bio"),
        "{err}"
    );
    let out = build(&lib);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("kprobe/<Deadline<P>%20as%20Scheduler<P>>::dispatch"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_copy_is_probed_and_foreign_objects_load() {
    let (vm, dir) = TestVm::boot_with_disks("names", 1);
    let name = vm.name().to_string();
    let k = |args: &[&str]| run_ok("ktrace", &[&["--vm", name.as_str()], args].concat());
    let line = duplicated_line();

    // probe add on a duplicated line: one probe per copy; their hits add up
    // to the calls of the function (a probe on its entry counts them).
    let out = k(&["probe", "add", &line]);
    let copies = out.lines().filter(|l| l.starts_with("probe ")).count();
    assert!(copies >= 2, "{out}");
    k(&["probe", "add", "RequestQueue::submit_bio"]);
    k(&["workload", "--dev", "vda", "--count", "200", "--quiet"]);
    let probes = json(&k(&["probe", "list", "--json"]));
    let probes = probes.as_array().unwrap();
    let entry: u64 = probes
        .iter()
        .filter(|p| p["offset"] == 0)
        .map(|p| p["hits"].as_u64().unwrap())
        .sum();
    let at_line: u64 = probes
        .iter()
        .filter(|p| p["offset"] != 0)
        .map(|p| p["hits"].as_u64().unwrap())
        .sum();
    assert!(entry >= 200, "{probes:?}");
    assert_eq!(at_line, entry, "{probes:?}");
    for p in probes {
        k(&["probe", "remove", &p["id"].to_string()]);
    }

    // kperf: one row per copy, adding up to the calls again.
    let csv = run_ok(
        "kperf",
        &[
            "--vm",
            &name,
            "stat",
            "-x,",
            "-e",
            &format!("kprobe:{line},kprobe:RequestQueue::submit_bio"),
            "--",
            "--dev",
            "vda",
            "--count",
            "100",
        ],
    );
    let rows: Vec<(u64, String)> = csv
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[2].to_string())
        })
        .collect();
    assert_eq!(rows.len(), copies + 1, "{csv}");
    let (calls, last) = rows.last().unwrap();
    assert_eq!(last, "kprobe:RequestQueue::submit_bio");
    assert!(*calls >= 100, "{csv}");
    let per_copy: u64 = rows[..copies].iter().map(|(n, _)| n).sum();
    assert_eq!(per_copy, *calls, "{csv}");
    assert!(rows[..copies]
        .iter()
        .all(|(_, e)| e.starts_with("kprobe:kernel::block::queue::RequestQueue::submit_bio+0x")));

    // ktrace trace shares the resolver: every copy, one count.
    let out = k(&[
        "trace",
        &format!("kprobe:{line} {{ @ = count(); }}"),
        "--",
        "--dev",
        "vda",
        "--count",
        "50",
    ]);
    assert!(
        out.contains(&format!("Attaching {copies} probes...")) && out.contains("@: 50\n"),
        "{out}"
    );

    // A name two functions share: refused with the choices, or with --all
    // a probe (a counter) on each.
    let out = run("ktrace", &["--vm", &name, "probe", "add", "dispatch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("pass --all"),
        "{}",
        text(&out.stderr)
    );
    let out = k(&["probe", "add", "--all", "dispatch"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains("Deadline<P> as") && out.contains("Noop<P> as"),
        "{out}"
    );
    for p in json(&k(&["probe", "list", "--json"])).as_array().unwrap() {
        k(&["probe", "remove", &p["id"].to_string()]);
    }
    let kperf_dispatch = |all: &[&str]| {
        run(
            "kperf",
            &[
                &["--vm", name.as_str(), "stat", "-x,"],
                all,
                &["-e", "kprobe:dispatch", "--duration", "0.2"],
            ]
            .concat(),
        )
    };
    let out = kperf_dispatch(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("pass --all"),
        "{}",
        text(&out.stderr)
    );
    let out = kperf_dispatch(&["--all"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // One row per function, in address order, which is the linker's: any
    // change to the kernel may swap the two, so they are compared sorted.
    let mut events: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.split(',').nth(2).unwrap().to_string())
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "kprobe:<ktrace_block::sched::deadline::Deadline<P> as ktrace_block::sched::Scheduler<P>>::dispatch",
            "kprobe:<ktrace_block::sched::noop::Noop<P> as ktrace_block::sched::Scheduler<P>>::dispatch"
        ]
    );

    // Copies of one function share its name: each gets a probe at its own
    // address, and a kperf row named by it.
    // The first one the kernel lets us probe (some are in blacklisted code,
    // such as the page-table code text patching uses).
    let (copied, addrs, out) = copied_functions()
        .into_iter()
        .find_map(|(copied, addrs)| {
            let out = run("ktrace", &["--vm", &name, "probe", "add", &copied]);
            out.status
                .success()
                .then(|| (copied, addrs, text(&out.stdout)))
        })
        .expect("a copied function outside the blacklist");
    let mut at: Vec<&str> = out
        .lines()
        .map(|l| l.split(" at ").nth(1).unwrap().split(' ').next().unwrap())
        .collect();
    at.dedup();
    let want: Vec<String> = addrs.iter().map(|a| format!("{a:#x}")).collect();
    assert_eq!(at, want, "{out}");
    for p in json(&k(&["probe", "list", "--json"])).as_array().unwrap() {
        k(&["probe", "remove", &p["id"].to_string()]);
    }
    let csv = run_ok(
        "kperf",
        &[
            "--vm",
            &name,
            "stat",
            "-x,",
            "-e",
            &format!("kprobe:{copied}"),
            "--duration",
            "0.2",
        ],
    );
    let rows: Vec<&str> = csv.lines().map(|l| l.split(',').nth(2).unwrap()).collect();
    let want: Vec<String> = at.iter().map(|a| format!("kprobe:{copied}@{a}")).collect();
    assert_eq!(rows, want, "{csv}");

    // A section naming `<Type as Trait>::method` (spaces as %20, as
    // #[kprobe] writes them) and one a name two functions share (--all).
    let tmp = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&tmp).unwrap();
    let qualified = compile_c(
        &tmp,
        "qualified",
        &c_program("kprobe/<Deadline<P>%20as%20Scheduler<P>>::dispatch"),
    );
    let out = k(&["load", "--no-pin", qualified.to_str().unwrap()]);
    assert!(
        out.contains(
            "kprobe <ktrace_block::sched::deadline::Deadline<P> as ktrace_block::sched::Scheduler<P>>::dispatch"
        ),
        "{out}"
    );
    let shared = compile_c(&tmp, "shared", &c_program("kprobe/dispatch"));
    let out = run(
        "ktrace",
        &["--vm", &name, "load", "--no-pin", shared.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("pass --all"),
        "{}",
        text(&out.stderr)
    );
    let out = k(&["load", "--no-pin", "--all", shared.to_str().unwrap()]);
    assert_eq!(out.matches("  link ").count(), 2, "{out}");

    // A clang object for Linux: refused with the way out, loaded and
    // verified with --no-attach, attached elsewhere with --attach.
    let foreign = compile_c(&tmp, "foreign", &c_program("kprobe/do_sys_open"));
    let f = foreign.to_str().unwrap();
    let out = run("ktrace", &["--vm", &name, "load", "--no-pin", f]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot attach to `do_sys_open`: no function matches")
            && err.contains("--attach PROG=TARGET")
            && err.contains("--no-attach"),
        "{err}"
    );
    let out = k(&["load", "--no-pin", "--no-attach", f]);
    assert!(out.contains("prog") && !out.contains("  link "), "{out}");
    let out = run(
        "ktrace",
        &[
            "--vm",
            &name,
            "load",
            "--no-pin",
            "--attach",
            "nosuch=submit_bio",
            f,
        ],
    );
    assert!(
        text(&out.stderr).contains(
            "the object has no program `nosuch`; its programs: prog (kprobe/do_sys_open)"
        ),
        "{}",
        text(&out.stderr)
    );
    k(&[
        "load",
        "--attach",
        "kprobe/do_sys_open=RequestQueue::submit_bio",
        "--pin",
        "foreign",
        f,
    ]);
    let links = k(&["link", "list"]);
    assert!(
        links.contains("kernel::block::queue::RequestQueue::submit_bio"),
        "{links}"
    );
    k(&["workload", "--dev", "vda", "--count", "50", "--quiet"]);
    let progs = json(&k(&["prog", "list", "--json"]));
    let runs = progs.as_array().unwrap()[0]["run_count"].as_u64().unwrap();
    assert!(runs >= 50, "{progs}");
    k(&["unload", "foreign"]);
    let _ = std::fs::remove_dir_all(&tmp);
    drop(vm);
    let _ = std::fs::remove_dir_all(dir);
}
