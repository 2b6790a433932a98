//! Host tests: scripts compile, every program passes the kernel's own
//! verifier (bpf-vm with the Linux platform tables), errors say where and
//! what, output looks like bpftrace's.

use bpf_vm::verifier::{self, linux, Config, Env, MapDef};
use ktrace_abi::bpf::ProgramType;
use ktrace_abi::trace::{TracepointField, TracepointInfo};

use ktrace_symbols::params::{AccessStep, LeafKind, ParamAccess, ParamError, Place};

use crate::check::MapKind;
use crate::codegen::Compiled;
use crate::output::{self, Aggregate, Entry, Value};
use crate::{compile_script, World};

fn world() -> World {
    World {
        tracepoints: ktrace_tracepoints::ALL
            .iter()
            .map(|d| TracepointInfo {
                category: d.category.into(),
                name: d.name.into(),
                size: d.size,
                fields: d
                    .fields
                    .iter()
                    .map(|f| TracepointField {
                        name: f.name.into(),
                        type_name: f.type_name.into(),
                        offset: f.offset,
                        size: f.size,
                        signed: f.signed,
                    })
                    .collect(),
                refcount: 0,
                sites: 0,
                hits: 0,
            })
            .collect(),
        params: Some(std::sync::Arc::new(FixedParams)),
    }
}

/// Parameters of `RequestQueue::submit_bio` as the kernel's DWARF places
/// them (`bio` passed by reference in rdx, `inner` in rsi), and a
/// `small` struct of two `i32`s packed in rdi.
#[derive(Debug)]
struct FixedParams;

impl crate::ParamSource for FixedParams {
    fn access(&self, spec: &str, path: &[&str]) -> Result<ParamAccess, ParamError> {
        use AccessStep::*;
        let access = |steps, place, size, kind, type_name: &str| {
            Ok(ParamAccess {
                steps,
                place,
                size,
                kind,
                type_name: type_name.into(),
            })
        };
        if spec != "RequestQueue::submit_bio" {
            return Err(ParamError {
                at: 0,
                message: format!("`{spec}` has no DWARF here"),
            });
        }
        match path {
            ["bio", "op"] => access(
                vec![Register(1), Add(120)],
                Place::Memory,
                1,
                LeafKind::Enum {
                    signed: false,
                    variants: vec![(0, "Read".into()), (1, "Write".into()), (2, "Flush".into())],
                },
                "Op",
            ),
            ["bio", "sector"] => access(
                vec![Register(1), Add(96)],
                Place::Memory,
                8,
                LeafKind::Int { signed: false },
                "u64",
            ),
            ["inner"] => access(
                vec![Register(4)],
                Place::Register { shift: 0 },
                8,
                LeafKind::Pointer,
                "&mut Inner",
            ),
            ["inner", "stats", "queued"] => access(
                vec![Register(4), Add(16), Load, Add(8)],
                Place::Memory,
                4,
                LeafKind::Int { signed: true },
                "i32",
            ),
            ["small", "hi"] => access(
                vec![Register(5)],
                Place::Register { shift: 4 },
                4,
                LeafKind::Int { signed: true },
                "i32",
            ),
            ["bio", other] => Err(ParamError {
                at: 1,
                message: format!("`Bio` has no field `{other}`: expected one of op, sector"),
            }),
            _ => Err(ParamError {
                at: 0,
                message: format!(
                    "`submit_bio` has no parameter `{}`: expected one of self, inner, bio",
                    path[0]
                ),
            }),
        }
    }
}

/// Compiles and verifies every program as the kernel would.
fn compile_ok(src: &str) -> Compiled {
    let w = world();
    let c = compile_script(src, &w).unwrap_or_else(|d| panic!("{}", d.render("t", src)));
    let maps: Vec<MapDef> = c
        .maps
        .iter()
        .enumerate()
        .map(|(i, m)| MapDef {
            fd: i as i32,
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
        })
        .collect();
    let helpers = linux::helpers();
    for p in &c.programs {
        let ty = match (&p.load.prog_type, &p.load.attach) {
            (
                ProgramType::Tracepoint,
                ktrace_abi::bpf::AttachTarget::Tracepoint { category, name },
            ) => {
                let d = ktrace_tracepoints::find(&format!("{category}:{name}")).unwrap();
                let fields: Vec<(u32, u32)> = d.fields.iter().map(|f| (f.offset, f.size)).collect();
                linux::tracepoint(&format!("{category}:{name}"), d.size, &fields)
            }
            (ProgramType::PerfEvent, _) => linux::perf_event(),
            _ => linux::kprobe(),
        };
        let prog = bpf_vm::decode(&p.load.insns).expect("decodes");
        let env = Env {
            prog_type: &ty,
            helpers: &helpers,
            maps: &maps,
        };
        if let Err(r) = verifier::verify(prog.insns(), &env, &Config::default()) {
            let span = p.span_of(r.error.insn_index).unwrap_or_default();
            panic!(
                "{} rejected: {}\nat {:?} `{}`",
                p.probe.text,
                r.error,
                span,
                &src[span.start..span.end.min(src.len())]
            );
        }
    }
    c
}

fn error(src: &str) -> String {
    match compile_script(src, &world()) {
        Ok(_) => panic!("`{src}` compiled"),
        Err(d) => d.render("t", src),
    }
}

#[test]
fn tutorial_one_liners_verify() {
    for src in [
        "BEGIN { printf(\"hello world\\n\"); }",
        "kprobe:kernel::block::* { @[func] = count(); }",
        "kprobe:submit_bio { @[comm] = count(); }",
        "tracepoint:block:block_rq_complete { @ = count(); }",
        "tracepoint:block:block_rq_complete { @bytes = hist(args.bytes); }",
        "tracepoint:block:block_rq_issue { @[args.rwbs] = sum(args.bytes); }",
        "tracepoint:block:block_rq_issue /args.bytes > 4096/ { @big = count(); }",
        "tracepoint:block:block_rq_complete /args.error != 0/ { @errors[args.error] = count(); }",
        "kprobe:f { @start[tid] = nsecs; } kretprobe:f /@start[tid]/ { @ns = hist(nsecs - @start[tid]); delete(@start[tid]); }",
        "tracepoint:block:block_rq_issue { @s = stats(args.bytes); @a = avg(args.bytes); @lo = min(args.bytes); @hi = max(args.bytes); }",
        "tracepoint:block:block_rq_issue { @l = lhist(args.bytes, 0, 65536, 4096); }",
        "tracepoint:block:block_rq_issue { printf(\"%s %d %u %-8s\\n\", comm, pid, args.bytes, args.rwbs); }",
        "tracepoint:sched:sched_switch /args.prev_comm == \"idle\"/ { @[args.next_comm] = count(); }",
        "tracepoint:sched:sched_switch { @[comm == \"workload\" ? 1 : 0] = count(); }",
        "kretprobe:f { @ret[retval < 0] = count(); }",
        "kprobe:f { @[arg0, arg1 & 0xff] = count(); $x = arg2; if ($x > 3) { @big++ } else { @small += $x; } }",
        "profile:hz:99 { @[kstack] = count(); }",
        "interval:s:1 { print(@c); clear(@c); } tracepoint:block:block_rq_issue { @c = count(); }",
        "kprobe:f { @[probe] = count(); } END { printf(\"%d\\n\", elapsed); exit(); }",
        "tracepoint:block:block_rq_issue, tracepoint:block:block_rq_complete { @[probe, cpu] = count(); }",
        "tracepoint:block:block_rq_issue { $c = comm; @[$c] = count(); @last = nsecs; @who = comm; } END { printf(\"%s\\n\", @who); }",
        "kprobe:f /pid == 42 && (arg0 / 2) > 1 || !tid/ { @x = -arg0 + ~arg1 % 3 << 2 >> 1; }",
        "kprobe:kernel::block::find { @[str(arg0, arg1)] = count(); printf(\"%s %s\\n\", str(arg0), str(arg0, arg1)); $s = str(arg0, 3); @last = $s; }",
        "kprobe:RequestQueue::submit_bio /args.bio.sector > 8/ { @[args.bio.op] = count(); @q = sum(args.inner.stats.queued); @h = hist(args.small.hi); printf(\"%s %p\\n\", args.bio.op, args.inner); }",
        "profile:hz:997 { @[kstack] = count(); }",
    ] {
        compile_ok(src);
    }
}

#[test]
fn programs_and_maps_line_up() {
    let c = compile_ok("kprobe:f { @start[tid] = nsecs; } kretprobe:f /@start[tid]/ { @ns = hist(nsecs - @start[tid]); }");
    assert_eq!(c.programs.len(), 2);
    let names: Vec<&str> = c.maps.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["start", "ns", "printf"]);
    assert_eq!(c.maps[0].key_size, 8);
    assert_eq!(c.maps[1].key_size, 16, "no key, then the bucket");
}

#[test]
fn syntax_errors_point_at_the_column() {
    assert_eq!(
        error("kprobe:f { @x = count() @y = 1 }"),
        "t:1:25: error: expected `;` or `}` after the statement, found `@y`\nkprobe:f { @x = count() @y = 1 }\n                        ^^\n"
    );
    assert_eq!(
        error("kprobe:f { @x = }"),
        "t:1:17: error: expected an expression, found `}`\nkprobe:f { @x = }\n                ^\n"
    );
    assert_eq!(
        error("kprobe f { }"),
        "t:1:7: error: expected a Rust path, glob or file.rs:line after `kprobe:`\nkprobe f { }\n      ^\n"
    );
    assert_eq!(
        error("uprobe:x { }"),
        "t:1:1: error: unknown probe type `uprobe`: expected kprobe, kretprobe, tracepoint, profile, interval, BEGIN or END\nuprobe:x { }\n^^^^^^\n"
    );
    assert_eq!(
        error("BEGIN { printf(\"%d\\n\", 1, 2); }"),
        "t:1:9: error: the format has 1 conversion(s) but 2 argument(s) follow it\nBEGIN { printf(\"%d\\n\", 1, 2); }\n        ^^^^^^^^^^^^^^^^^^^^\n"
    );
    assert_eq!(
        error("tracepoint:block:block_rq_issue /args.bytes > 4096 { @ = count(); }"),
        "t:1:52: error: expected `/` to end the filter, found `{`\ntracepoint:block:block_rq_issue /args.bytes > 4096 { @ = count(); }\n                                                   ^\n"
    );
}

#[test]
fn type_errors_say_what_was_expected() {
    assert_eq!(
        error("tracepoint:block:block_rq_issue { @[args.byte] = count(); }"),
        "t:1:42: error: `block:block_rq_issue` has no field `byte`: expected one of sector, rq_id, dev, nr_sector, bytes, pid, rwbs, comm\ntracepoint:block:block_rq_issue { @[args.byte] = count(); }\n                                         ^^^^\n"
    );
    assert_eq!(
        error("kprobe:f { @x = count(); } kprobe:g { @x = hist(arg0); }"),
        "t:1:39: error: `@x` holds count(), so it cannot also hold hist()\nkprobe:f { @x = count(); } kprobe:g { @x = hist(arg0); }\n                                      ^^\n"
    );
    assert_eq!(
        error("kprobe:f { @x = sum(comm); }"),
        "t:1:21: error: expected an integer as the value of sum(), found a string (char[16])\nkprobe:f { @x = sum(comm); }\n                    ^^^^\n"
    );
    assert_eq!(
        error("kprobe:f { printf(\"%d\\n\", retval); }"),
        "t:1:27: error: `retval` is only known in a kretprobe, not in `kprobe:f`\nkprobe:f { printf(\"%d\\n\", retval); }\n                          ^^^^^^\n"
    );
    assert_eq!(
        error("kprobe:f { @[pid] = count(); @[comm] = count(); }"),
        "t:1:30: error: `@` is keyed by [an integer] elsewhere, not [a string (char[16])]\nkprobe:f { @[pid] = count(); @[comm] = count(); }\n                             ^^^^^^^\n"
    );
    assert_eq!(
        error("kprobe:f { @x = $y; }"),
        "t:1:17: error: `$y` is used before it is assigned in this probe\nkprobe:f { @x = $y; }\n                ^^\n"
    );
}

#[test]
fn parameter_errors_point_at_the_path() {
    assert_eq!(
        error("kprobe:RequestQueue::submit_bio { @[args.bio.opp] = count(); }"),
        "t:1:46: error: `Bio` has no field `opp`: expected one of op, sector\nkprobe:RequestQueue::submit_bio { @[args.bio.opp] = count(); }\n                                             ^^^\n"
    );
    assert_eq!(
        error("kprobe:RequestQueue::submit_bio { @[args.bo.op] = count(); }"),
        "t:1:42: error: `submit_bio` has no parameter `bo`: expected one of self, inner, bio\nkprobe:RequestQueue::submit_bio { @[args.bo.op] = count(); }\n                                         ^^\n"
    );
    assert_eq!(
        error("kretprobe:RequestQueue::submit_bio { @[args.bio.op] = count(); }"),
        "t:1:45: error: `args` is not available in a kretprobe: the parameters of `kretprobe:RequestQueue::submit_bio` are gone when it returns; save what you need in its kprobe (`@x[tid] = args.NAME`) and read it here\nkretprobe:RequestQueue::submit_bio { @[args.bio.op] = count(); }\n                                            ^^^\n"
    );
    assert_eq!(
        error("kprobe:RequestQueue::submit_bio { @ = sum(comm == args.bio.op); }"),
        "t:1:43: error: expected an integer as an operand, found a string (char[16])\nkprobe:RequestQueue::submit_bio { @ = sum(comm == args.bio.op); }\n                                          ^^^^\n"
    );
    let w = World {
        params: None,
        ..world()
    };
    let src = "kprobe:RequestQueue::submit_bio { @[args.bio.op] = count(); }";
    assert_eq!(
        compile_script(src, &w).unwrap_err().render("t", src),
        "t:1:42: error: the parameters of `RequestQueue::submit_bio` need the kernel's DWARF, which is not at hand: use arg0..arg5\nkprobe:RequestQueue::submit_bio { @[args.bio.op] = count(); }\n                                         ^^^\n"
    );
}

#[test]
fn profile_rates_the_timer_can_run() {
    compile_ok("profile:hz:19 { @ = count(); }");
    compile_ok("profile:hz:20000 { @ = count(); }");
    assert_eq!(
        error("profile:hz:99 { @a = count(); } profile:hz:999 { @b = count(); }"),
        "t:1:33: error: the kernel has one sampling timer, which `profile:hz:99` already uses: one `profile` probe a script\nprofile:hz:99 { @a = count(); } profile:hz:999 { @b = count(); }\n                                ^^^^^^^^^^^^^^\n"
    );
    assert_eq!(
        error("profile:hz:18 { @ = count(); }"),
        "t:1:1: error: the kernel's sampling timer runs at 19 to 20000 Hz, not 18 Hz\nprofile:hz:18 { @ = count(); }\n^^^^^^^^^^^^^\n"
    );
    assert_eq!(
        error("profile:hz:100000 { @ = count(); }"),
        "t:1:1: error: the kernel's sampling timer runs at 19 to 20000 Hz, not 100000 Hz\nprofile:hz:100000 { @ = count(); }\n^^^^^^^^^^^^^^^^^\n"
    );
}

#[test]
fn histograms_print_like_bpftrace() {
    let text = output::render_map(
        "bytes",
        &MapKind::Hist,
        vec![Entry {
            keys: vec![],
            value: Aggregate::Buckets(vec![(12, 4), (14, 8), (3, 0)]),
        }],
    );
    assert_eq!(
        text,
        "@bytes:\n\
[1K, 2K)               4 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n\
[2K, 4K)               0 |                                                    |\n\
[4K, 8K)               8 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n\n"
    );
    let text = output::render_map(
        "c",
        &MapKind::Count,
        vec![
            Entry {
                keys: vec![Value::Str("b".into())],
                value: Aggregate::Scalar(Value::Uint(9)),
            },
            Entry {
                keys: vec![Value::Str("a".into())],
                value: Aggregate::Scalar(Value::Uint(3)),
            },
        ],
    );
    assert_eq!(text, "@c[a]: 3\n@c[b]: 9\n\n");
    assert_eq!(
        output::bucket_label(
            &MapKind::Lhist {
                min: 0,
                max: 100,
                step: 10
            },
            11
        ),
        "[100, ...)"
    );
    assert_eq!(output::bucket_label(&MapKind::Hist, 1), "[0]");
    assert_eq!(
        output::map_json(
            "s",
            &MapKind::Stats,
            vec![Entry {
                keys: vec![],
                value: Aggregate::Total { sum: 12, count: 3 }
            }]
        ),
        r#"{"type": "stats", "data": {"@s": {"count": 3, "average": 4, "total": 12}}}"#
    );
}

#[test]
fn printf_formats() {
    assert_eq!(
        output::printf(
            "%-6s|%5d|%05u|%x|%%\n",
            &[
                Value::Str("ab".into()),
                Value::Int(-3),
                Value::Uint(42),
                Value::Uint(255)
            ]
        ),
        "ab    |   -3|00042|ff|%\n"
    );
    assert_eq!(output::conversions("%lu %s").unwrap(), vec!['u', 's']);
    assert!(output::conversions("%q")
        .unwrap_err()
        .contains("unknown printf conversion `%q`"));
}

/// Nothing a user types panics the compiler: every prefix of the tutorial
/// scripts, and each with one character replaced by each of a set of
/// troublesome ones, gives a program or a diagnostic.
#[test]
fn no_input_panics() {
    let scripts = [
        "kprobe:f { @start[tid] = nsecs; } kretprobe:f /@start[tid]/ { @ns = hist(nsecs - @start[tid]); delete(@start[tid]); }",
        "tracepoint:block:block_rq_issue /args.bytes > 4096 && comm == \"fio\"/ { printf(\"%-8s %d\\n\", args.rwbs, args.bytes); @l = lhist(args.bytes, 0, 65536, 4096); }",
        "interval:s:1 { print(@c); clear(@c); if (@c > 3) { exit(); } else { @d += 1; } } profile:hz:99 { @[kstack, $x] = count(); }",
        "BEGIN { $x = -9223372036854775807; @l = lhist(1, -9223372036854775807, 9223372036854775807, 1); }",
    ];
    let w = world();
    let odd = [
        '/', '{', '}', '"', '@', '$', '(', ')', '[', ']', ',', ';', ':', '\\', 'é', '0', '-', '*',
        '%', '\n',
    ];
    for s in scripts {
        let chars: Vec<(usize, char)> = s.char_indices().collect();
        for &(i, _) in &chars {
            let _ = compile_script(&s[..i], &w).map_err(|d| d.render("t", &s[..i]));
            for c in odd {
                let mut m = String::from(&s[..i]);
                m.push(c);
                m.push_str(&s[i + s[i..].chars().next().unwrap().len_utf8()..]);
                let _ = compile_script(&m, &w).map_err(|d| d.render("t", &m));
            }
        }
    }
}

/// A program the verifier refuses maps back to the statement that made
/// the refused instruction (here: a printf record past the 512-byte stack).
#[test]
fn verifier_rejections_map_to_spans() {
    let args = vec!["comm"; 32].join(", ");
    let src = format!(
        "BEGIN {{ @n = count(); printf(\"{}\\n\", {args}); }}",
        "%s ".repeat(32).trim_end()
    );
    let c = compile_script(&src, &world()).unwrap();
    let maps: Vec<MapDef> = c
        .maps
        .iter()
        .enumerate()
        .map(|(i, m)| MapDef {
            fd: i as i32,
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
        })
        .collect();
    let helpers = linux::helpers();
    let ty = linux::kprobe();
    let env = Env {
        prog_type: &ty,
        helpers: &helpers,
        maps: &maps,
    };
    let p = &c.programs[0];
    let prog = bpf_vm::decode(&p.load.insns).unwrap();
    let r = verifier::verify(prog.insns(), &env, &Config::default()).unwrap_err();
    assert_eq!(
        r.error.message,
        "invalid write to stack R10 off=-520 size=8: the stack is fp-512..fp-1"
    );
    let span = p.span_of(r.error.insn_index).unwrap();
    assert!(
        src[span.start..span.end].starts_with("printf(\"%s %s"),
        "{}",
        &src[span.start..span.end]
    );
    assert!(src[span.start..span.end].ends_with("comm)"));
}
