//! The BPF commands of the `ktrace` CLI against a VM it started: `load` a
//! clang-built object, then `prog`, `map`, `link` and `events`, in text and
//! JSON.

use ktrace_tests::{ktrace_ok, unique_name, CliVmGuard};
use probe_sdk::client::ConnectOptions;
use probe_sdk::runtime::Runtime;
use probe_sdk::vm::Vm;

const C_PROG: &str = r#"
struct bpf_map_def { unsigned int type, key_size, value_size, max_entries, map_flags; };
__attribute__((section("maps"), used)) struct bpf_map_def hits = { 2, 4, 8, 1, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def args = { 1, 8, 8, 64, 0 };
__attribute__((section("maps"), used)) struct bpf_map_def rb = { 27, 0, 0, 4096, 0 };
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *) 1;
static long (*bpf_trace_printk)(const char *fmt, unsigned int size, ...) = (void *) 6;
static long (*bpf_ringbuf_output)(void *rb, void *data, unsigned long long size, unsigned long long flags) = (void *) 130;
struct pt_regs { unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss; };
__attribute__((section("kprobe/kernel::bpf::testing::target"), used))
int on_target(struct pt_regs *ctx) {
    unsigned int zero = 0;
    unsigned long long *n = bpf_map_lookup_elem(&hits, &zero);
    if (n) __sync_fetch_and_add(n, 1);
    unsigned long long rec[2] = { 0x55, ctx->di };
    bpf_ringbuf_output(&rb, rec, sizeof(rec), 0);
    char fmt[] = "hit %d";
    bpf_trace_printk(fmt, sizeof(fmt), (int)ctx->di);
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
