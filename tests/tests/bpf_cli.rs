//! The BPF commands of the `ktrace` CLI against a VM it started: `load` a
//! clang-built object, then `prog`, `map`, `link` and `events`, in text and
//! JSON.

use ktrace_tests::{ktrace_ok, unique_name, CliVmGuard};
use probe_sdk::client::ConnectOptions;
use probe_sdk::runtime::Runtime;
use probe_sdk::vm::Vm;

const C_PROG: &str = r#"
#include "ktrace_helpers.h"
__attribute__((section("maps"), used)) struct bpf_map_def hits = { 2, 4, 8, 1, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def args = { 1, 8, 8, 64, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def rb = { 27, 0, 0, 4096, 0 };
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int on_target(struct pt_regs *ctx) {
    unsigned int zero = 0;
    unsigned long long *n = bpf_map_lookup_elem(&hits, &zero);
    if (n) __sync_fetch_and_add(n, 1);
    unsigned long long rec[2] = { 0x55, PT_REGS_PARM1(ctx) };
    bpf_ringbuf_output(&rb, rec, sizeof(rec), 0);
    char fmt[] = "hit %d";
    bpf_trace_printk(fmt, sizeof(fmt), (int)PT_REGS_PARM1(ctx));
    return 0;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"#;

#[test]
fn cli_load_prog_map_link_events() {
    let dir = std::env::temp_dir().join(format!("ktrace-bpf-cli-{}", std::process::id()));
    let obj = ktrace_tests::compile_c(&dir, "on_target", C_PROG);

    let name = unique_name("cli-bpf");
    let _guard = CliVmGuard(name.clone());
    ktrace_ok(&["vm", "start", "--name", &name]);
    let vm = ["--vm", name.as_str()];
    let run = |args: &[&str]| ktrace_ok(&[&vm[..], args].concat());

    let out = run(&["load", obj.to_str().unwrap()]);
    assert!(out.contains("loaded `on_target`"), "{out}");
    assert!(out.contains("kprobe kernel::bpf::testing::target"), "{out}");

    // Fire the probe 10 times (arguments 1000..1009) through the library.
    {
        let v = Vm::attach(&name).unwrap();
        let mut client = v.connect(&ConnectOptions::default()).unwrap();
        Runtime::new(&mut client).trigger(10, 1000).unwrap();
    }

    let progs: serde_json::Value = serde_json::from_str(&run(&["prog", "list", "--json"])).unwrap();
    let p = &progs[0];
    assert_eq!(p["name"], "on_target");
    assert_eq!(p["run_count"], 10);
    assert_eq!(p["faults"], 0);
    let id = p["id"].as_u64().unwrap().to_string();
    let text = run(&["prog", "list"]);
    assert!(text.starts_with("ID  NAME"), "{text}");
    let dump = run(&["prog", "dump", &id]);
    assert!(dump.contains("call 1"), "{dump}");
    assert!(
        dump.contains("; ") && dump.contains("on_target.c:"),
        "source lines interleaved:\n{dump}"
    );
    assert!(run(&["prog", "show", &id]).contains("verifier:"));

    assert_eq!(run(&["map", "lookup", "hits", "0"]).trim(), "0: 10");
    let hits: serde_json::Value =
        serde_json::from_str(&run(&["map", "dump", "hits", "--json"])).unwrap();
    assert_eq!(hits, serde_json::json!([{ "key": 0, "value": 10 }]));
    let args: serde_json::Value =
        serde_json::from_str(&run(&["map", "dump", "args", "--json"])).unwrap();
    assert_eq!(
        args.as_array().unwrap().len(),
        0,
        "the C program does not fill `args`"
    );
    run(&["map", "update", "args", "5", "7", "--flags", "noexist"]);
    assert_eq!(run(&["map", "lookup", "args", "5"]).trim(), "5: 7");
    let out = ktrace_tests::ktrace()
        .args(
            [
                &vm[..],
                &["map", "update", "args", "5", "8", "--flags", "noexist"],
            ]
            .concat(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("errno -17"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run(&["map", "delete", "args", "5"]);
    let list = run(&["map", "list"]);
    assert!(
        list.contains("ringbuf") && list.contains("hits") && list.contains("args"),
        "{list}"
    );

    // The 10 ring buffer records waited in the ring; `events` drains them in order.
    let ev = run(&[
        "events",
        "--no-printk",
        "--count",
        "10",
        "--json",
        "--duration",
        "20",
    ]);
    let recs: Vec<serde_json::Value> = ev
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 10, "{ev}");
    for (i, r) in recs.iter().enumerate() {
        let data: Vec<u8> = serde_json::from_value(r["data"].clone()).unwrap();
        assert_eq!(u64::from_le_bytes(data[..8].try_into().unwrap()), 0x55);
        assert_eq!(
            u64::from_le_bytes(data[8..].try_into().unwrap()),
            1000 + i as u64
        );
    }
    // `info` counts what the event task pushed to that client's session.
    let info = run(&["info"]);
    let streamed: Vec<&str> = info
        .lines()
        .skip_while(|l| !l.starts_with("event streams"))
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(streamed.len(), 1, "{info}");
    assert!(
        streamed[0].contains(" (10 records), ") && streamed[0].contains("dropped 0 (0 records)"),
        "{info}"
    );
    // trace_printk went to the console.
    let console = Vm::attach(&name).unwrap().console();
    assert!(
        console.contains(": hit 1009"),
        "console lacks trace_printk output"
    );

    let links: serde_json::Value = serde_json::from_str(&run(&["link", "list", "--json"])).unwrap();
    assert_eq!(links[0]["hits"], 10);
    let link = links[0]["id"].as_u64().unwrap().to_string();
    assert!(run(&["link", "detach", &link]).contains("detached"));
    assert!(
        run(&["link", "list"]).trim().lines().count() == 1,
        "only the header is left"
    );
    run(&["prog", "unload", &id]);

    // `ktrace load` pinned the object under its name, which is why its
    // maps outlived that command. The maps stay after `prog unload`;
    // `map free` and `unload` free them.
    assert_eq!(
        run(&["pin", "list"]),
        "ID  NAME       PIN        SESSION  MAPS     PROGS  LINKS\n\
         1   on_target  on_target  -        1,2,3,4  -      -\n"
    );
    let refused = ktrace_tests::ktrace()
        .args([&vm[..], &["load", obj.to_str().unwrap()]].concat())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("the pin `on_target` is taken by object 1 (`on_target`): unload it first (`ktrace unload on_target`) or choose another pin name")
            && stderr.contains("errno -17"),
        "{stderr}"
    );
    assert_eq!(
        run(&["map", "free", "args"]).trim(),
        "freed map 2 (args, 4624 bytes)"
    );
    assert_eq!(
        run(&["unload", "on_target"]).trim(),
        "freed object 1 (`on_target`): 3 maps, 0 programs, 0 links"
    );
    assert_eq!(
        run(&["map", "list"]).trim().lines().count(),
        1,
        "no map left"
    );
    assert_eq!(
        run(&["pin", "list"]).trim().lines().count(),
        1,
        "no pin left"
    );

    // --pin NAME chooses the name; --no-pin loads for the command only.
    let out = run(&["load", obj.to_str().unwrap(), "--pin", "second"]);
    assert!(out.contains("pinned as `second`"), "{out}");
    let out = run(&["load", obj.to_str().unwrap(), "--no-pin"]);
    assert!(
        out.contains("not pinned: freed when this command exits"),
        "{out}"
    );
    let pins: serde_json::Value =
        serde_json::from_str(&run(&["pin", "list", "--all", "--json"])).unwrap();
    assert_eq!(pins.as_array().unwrap().len(), 1, "{pins}");
    assert_eq!(pins[0]["pin"], "second");
    assert_eq!(
        run(&["pin", "rm", "second"]).trim(),
        "unpinned `second`: freed object 2 (`on_target`): 4 maps, 1 programs, 1 links"
    );
    assert_eq!(
        run(&["prog", "list"]).trim().lines().count(),
        1,
        "no program left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A program written against the header `ktrace helpers --c-header`
/// prints: `SEC()`, map types, `PT_REGS_PARM*()` and helpers of several
/// kinds. The tracepoint program calls a kprobe-only helper.
const WITH_HEADER: &str = r#"
#include "ktrace_helpers.h"
struct bpf_map_def SEC("maps") starts = { BPF_MAP_TYPE_HASH, 8, 8, 64, 0 };
struct bpf_map_def SEC("maps") events = { BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0 };
SEC("kprobe/kernel::bpf::testing::target")
int on_entry(struct pt_regs *ctx) {
    unsigned long long key = PT_REGS_PARM1(ctx) ^ PT_REGS_PARM2(ctx);
    unsigned long long now = bpf_ktime_get_ns() + bpf_get_func_ip(ctx);
    bpf_map_update_elem(&starts, &key, &now, 0);
    unsigned long long *rec = bpf_ringbuf_reserve(&events, 16, 0);
    if (!rec)
        return 0;
    rec[0] = bpf_get_current_pid_tgid();
    bpf_probe_read_kernel(&rec[1], 8, (void *)PT_REGS_SP(ctx));
    bpf_ringbuf_submit(rec, 0);
    return 0;
}
SEC("tracepoint/block/block_rq_issue")
int on_issue(void *ctx) {
    return bpf_get_func_ip(ctx) != 0;
}
char _license[] SEC("license") = "GPL";
"#;

#[test]
fn helpers_lists_by_program_type_and_its_c_header_builds_verified_programs() {
    use ktrace_bpf_platform::helper::HELPERS;

    // The header the tool prints is the one the tests compile against.
    let header = ktrace_ok(&["helpers", "--c-header"]);
    assert_eq!(header, ktrace_bpf_platform::CHeader.to_string());

    let table = ktrace_ok(&["helpers"]);
    assert_eq!(table.lines().count(), HELPERS.len() + 1, "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("173  bpf_get_func_ip")
            && l.contains(" kprobe,kretprobe ")
            && l.ends_with("unsigned long long bpf_get_func_ip(void *ctx)")),
        "{table}"
    );
    let tracepoint = ktrace_tests::json(&ktrace_ok(&["helpers", "--type", "tracepoint", "--json"]));
    let names: Vec<&str> = tracepoint
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), HELPERS.len() - 1, "{names:?}");
    assert!(!names.contains(&"bpf_get_func_ip"), "{names:?}");
    assert!(names.contains(&"bpf_ringbuf_output"), "{names:?}");

    // Bad input: a clear refusal naming the choices.
    let out = ktrace_tests::ktrace()
        .args(["helpers", "--type", "xdp"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("invalid value 'xdp'") && stderr.contains("perf_event"),
        "{stderr}"
    );
    let out = ktrace_tests::ktrace()
        .args(["helpers", "--c-header", "--type", "kprobe"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ktrace_tests::assert_ends_by_sigpipe("ktrace", &["helpers", "--c-header"]);

    // The kernel's verifier (on the host) accepts the kprobe program and
    // refuses the tracepoint's call of the kprobe-only helper, by name.
    let dir = std::env::temp_dir().join(format!("ktrace-helpers-{}", std::process::id()));
    let obj = ktrace_tests::compile_c(&dir, "with_header", WITH_HEADER);
    let out = ktrace_tests::ktrace()
        .arg("check")
        .arg(&obj)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains("on_entry (kprobe/kernel::bpf::testing::target): accepted ("),
        "{report}"
    );
    assert!(
        report.contains("on_issue (tracepoint/block/block_rq_issue): REJECTED")
            && report.contains(
                "program of this type (tracepoint) cannot use helper bpf_get_func_ip#173"
            ),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
