//! Verifier accept/reject cases, written in the assembler's text syntax.
//! Every rejection asserts its message, so a change in wording is a
//! deliberate, reviewed change.

use bpf_vm::asm::assemble;
use bpf_vm::verifier::linux::{self, helper, map_type};
use bpf_vm::verifier::{verify, Config, Env, LineInfo, MapDef, Rejection, Report, Rule};

/// Maps used by the tests: 0 hash u32 -> u64, 1 array u32 -> [u8; 64],
/// 2 ringbuf, 3 perf_event_array, 4 stack_trace, 5 hash u64 -> u64.
fn maps() -> Vec<MapDef> {
    let m = |fd, map_type, key_size, value_size, max_entries| MapDef {
        fd,
        map_type,
        key_size,
        value_size,
        max_entries,
    };
    vec![
        m(0, map_type::HASH, 4, 8, 1024),
        m(1, map_type::ARRAY, 4, 64, 16),
        m(2, map_type::RINGBUF, 0, 0, 4096),
        m(3, map_type::PERF_EVENT_ARRAY, 4, 4, 2),
        m(4, map_type::STACK_TRACE, 4, 1016, 128),
        m(5, map_type::HASH, 8, 8, 1024),
    ]
}

fn run_with(
    src: &str,
    pt: &bpf_vm::verifier::ProgramType,
    config: &Config,
) -> Result<Report, Box<Rejection>> {
    let prog = assemble(src).unwrap_or_else(|e| panic!("assembly failed: {e}\n{src}"));
    let helpers = linux::helpers();
    let maps = maps();
    let env = Env {
        prog_type: pt,
        helpers: &helpers,
        maps: &maps,
    };
    verify(prog.insns(), &env, config)
}

fn run(src: &str) -> Result<Report, Box<Rejection>> {
    run_with(src, &linux::kprobe(), &Config::default())
}

#[track_caller]
fn accept(src: &str) -> Report {
    match run(src) {
        Ok(r) => r,
        Err(e) => panic!("rejected: {}\nlog:\n{}", e.error, e.log),
    }
}

#[track_caller]
fn reject(src: &str) -> Box<Rejection> {
    match run(src) {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => e,
    }
}

#[track_caller]
fn reject_msg(src: &str, insn: usize, rule: Rule, msg: &str) {
    let e = reject(src);
    assert_eq!(e.error.message, msg, "full error: {}", e.error);
    assert_eq!(e.error.rule, rule, "full error: {}", e.error);
    assert_eq!(e.error.insn_index, insn, "full error: {}", e.error);
}

// ---------------------------------------------------------------- accepts

#[test]
fn minimal_program() {
    let r = accept("mov %r0, 0\nexit");
    assert_eq!(r.stats.insns_processed, 2);
}

#[test]
fn bounds_check_then_variable_stack_access() {
    // if r1 > 63 goto out; r2 = r10 - 64 + r1; *(u8 *)r2 = 0 ... read back
    accept(
        "
        ldxdw %r1, [%r1+112]
        mov %r0, 0
        jgt %r1, 63, out
        mov %r2, %r10
        add %r2, -64
        add %r2, %r1
        stb [%r2], 7
        out:
        exit",
    );
}

#[test]
fn map_lookup_null_check_read_modify_write() {
    accept(
        "
        mov %r6, %r1
        ldxdw %r1, [%r6+112]
        stxw [%r10-4], %r1
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, miss
        ldxdw %r1, [%r0]
        add %r1, 1
        stxdw [%r0], %r1
        miss:
        mov %r0, 0
        exit",
    );
}

#[test]
fn variable_index_into_array_value_after_bounds_check() {
    accept(
        "
        mov %r6, %r1
        stw [%r10-4], 0
        lddw %r1, map_fd(1)
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, out
        ldxdw %r1, [%r6+104]
        jgt %r1, 63, out
        add %r0, %r1
        ldxb %r2, [%r0]
        add %r2, 1
        stxb [%r0], %r2
        out:
        mov %r0, 0
        exit",
    );
}

#[test]
fn bounded_loop_of_64_iterations() {
    let r = accept(
        "
        mov %r0, 0
        mov %r1, 0
        loop:
        add %r0, %r1
        add %r1, 1
        jlt %r1, 64, loop
        exit",
    );
    assert!(r.stats.insns_processed >= 64 * 3, "{:?}", r.stats);
}

#[test]
fn pruning_keeps_diamonds_linear() {
    // 20 independent if/else diamonds: without pruning 2^20 paths.
    let mut src = String::from("ldxdw %r6, [%r1+112]\nmov %r0, 0\n");
    for i in 0..20 {
        src.push_str(&format!(
            "jset %r6, {}, a{i}\nmov %r2, 1\nja b{i}\na{i}:\nmov %r2, 2\nb{i}:\nadd %r0, 1\n",
            1 << i
        ));
    }
    src.push_str("exit\n");
    let r = accept(&src);
    assert!(r.stats.insns_processed < 400, "{:?}", r.stats);
    assert!(r.stats.states_pruned >= 19, "{:?}", r.stats);
}

#[test]
fn spill_and_fill_keep_pointer_and_bounds() {
    accept(
        "
        stxdw [%r10-8], %r1
        ldxdw %r2, [%r1+112]
        and %r2, 15
        stxdw [%r10-16], %r2
        ldxdw %r3, [%r10-16]
        ldxdw %r1, [%r10-8]
        ldxdw %r0, [%r1+0]
        mov %r4, %r10
        add %r4, -32
        add %r4, %r3
        stb [%r4], 1
        mov %r0, 0
        exit",
    );
}

#[test]
fn ringbuf_reserve_then_submit() {
    accept(
        "
        mov %r6, %r1
        lddw %r1, map_fd(2)
        mov %r2, 16
        mov %r3, 0
        call 131
        jeq %r0, 0, out
        ldxdw %r1, [%r6+112]
        stxdw [%r0], %r1
        stdw [%r0+8], 0
        mov %r1, %r0
        mov %r2, 0
        call 132
        out:
        mov %r0, 0
        exit",
    );
}

#[test]
fn log2_histogram() {
    // Branch-free log2 of a latency, then an array slot increment (the
    // shape of biolatency's hot path).
    accept(
        "
        ldxdw %r1, [%r1+112]
        mov %r2, 0
        mov %r3, %r1
        rsh %r3, 32
        jeq %r3, 0, s16
        rsh %r1, 32
        add %r2, 32
        s16:
        mov %r3, %r1
        rsh %r3, 16
        jeq %r3, 0, s8
        rsh %r1, 16
        add %r2, 16
        s8:
        mov %r3, %r1
        rsh %r3, 8
        jeq %r3, 0, s4
        rsh %r1, 8
        add %r2, 8
        s4:
        mov %r3, %r1
        rsh %r3, 4
        jeq %r3, 0, s2
        rsh %r1, 4
        add %r2, 4
        s2:
        mov %r3, %r1
        rsh %r3, 2
        jeq %r3, 0, s1
        rsh %r1, 2
        add %r2, 2
        s1:
        rsh %r1, 1
        add %r2, %r1
        stxw [%r10-4], %r2
        lddw %r1, map_fd(1)
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, out
        ldxw %r2, [%r10-4]
        jgt %r2, 7, out
        lsh %r2, 3
        add %r0, %r2
        mov %r1, 1
        lock add [%r0], %r1
        out:
        mov %r0, 0
        exit",
    );
}

#[test]
fn bpf_to_bpf_call_with_stack_pointer_argument() {
    accept(
        "
        stdw [%r10-8], 5
        mov %r1, %r10
        add %r1, -8
        call local f
        exit
        f:
        ldxdw %r0, [%r1]
        exit",
    );
}

#[test]
fn helpers_with_stack_buffers() {
    accept(
        "
        mov %r6, %r1
        mov %r1, %r10
        add %r1, -16
        mov %r2, 16
        call 16
        mov %r1, %r10
        add %r1, -32
        mov %r2, 16
        ldxdw %r3, [%r6+112]
        call 113
        mov %r1, %r6
        lddw %r2, map_fd(3)
        lddw %r3, 0xffffffff
        mov %r4, %r10
        add %r4, -32
        mov %r5, 32
        call 25
        mov %r0, 0
        exit",
    );
}

#[test]
fn log_and_line_info() {
    let lines = vec![
        LineInfo {
            insn: 0,
            location: "probe.rs:10".into(),
        },
        LineInfo {
            insn: 2,
            location: "probe.rs:12".into(),
        },
    ];
    let config = Config {
        log_level: 1,
        line_info: &lines,
        clock: Some(|| 42),
        ..Config::default()
    };
    let e = run_with(
        "mov %r0, 0\nmov %r0, 1\nldxdw %r0, [%r2+0]\nexit",
        &linux::kprobe(),
        &config,
    )
    .unwrap_err();
    assert_eq!(e.error.location.as_deref(), Some("probe.rs:12"));
    assert_eq!(e.error.insn_text, "r0 = *(u64 *)(r2 + 0)");
    assert_eq!(
        e.error.to_string(),
        "insn 2 (probe.rs:12): r0 = *(u64 *)(r2 + 0): R2 !read_ok: R2 is read before it is written on this path\n  state: R0=1 R1=ctx() R10=fp0"
    );
    assert_eq!(e.stats.time_ns, Some(0));
    assert!(
        e.log
            .starts_with("0: r0 = 0\n1: r0 = 1\n2: r0 = *(u64 *)(r2 + 0)\n"),
        "{}",
        e.log
    );
    let ok = run_with("mov %r0, 0\nexit", &linux::kprobe(), &config).unwrap();
    assert!(
        ok.log
            .ends_with("processed 2 insns, stored 0 states (peak 0), pruned 0\n"),
        "{}",
        ok.log
    );
}

#[test]
fn tracepoint_and_perf_event_contexts() {
    let tp = linux::tracepoint("block:block_rq_complete", 32, &[(8, 4), (12, 4), (16, 16)]);
    let cfg = Config::default();
    run_with("ldxw %r0, [%r1+12]\nldxdw %r0, [%r1+16]\nexit", &tp, &cfg).unwrap();
    let e = run_with("ldxdw %r0, [%r1+8]\nexit", &tp, &cfg).unwrap_err();
    assert_eq!(
        e.error.message,
        "invalid bpf_context access off=8 size=8: not within one field of tracepoint record block:block_rq_complete"
    );
    let pe = linux::perf_event();
    run_with("ldxdw %r0, [%r1+176]\nexit", &pe, &cfg).unwrap();
    let e = run_with("mov %r1, 0\ncall 173\nexit", &pe, &cfg).unwrap_err();
    assert_eq!(
        e.error.message,
        "program of this type (perf_event) cannot use helper bpf_get_func_ip#173"
    );
}

// ---------------------------------------------------------------- rejects

#[test]
fn reject_map_value_out_of_bounds_fixed() {
    reject_msg(
        "
        stw [%r10-4], 0
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, out
        ldxdw %r1, [%r0+8]
        out:
        mov %r0, 0
        exit",
        7,
        Rule::MemoryAccess,
        "invalid access to map value, value_size=8 off=8 size=8",
    );
}

#[test]
fn reject_map_value_out_of_bounds_variable() {
    reject_msg(
        "
        mov %r6, %r1
        stw [%r10-4], 0
        lddw %r1, map_fd(1)
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, out
        ldxdw %r1, [%r6+104]
        jgt %r1, 64, out
        add %r0, %r1
        ldxb %r2, [%r0]
        out:
        mov %r0, 0
        exit",
        11,
        Rule::MemoryAccess,
        "R0 max value is outside of the allowed memory range: invalid access to map value, value_size=64 off=64 size=1; check the index against the size before using it",
    );
}

#[test]
fn reject_unbounded_index() {
    reject_msg(
        "
        mov %r6, %r1
        stw [%r10-4], 0
        lddw %r1, map_fd(1)
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, out
        ldxdw %r1, [%r6+104]
        add %r0, %r1
        ldxb %r2, [%r0]
        out:
        mov %r0, 0
        exit",
        9,
        Rule::PointerArithmetic,
        "math between map_value pointer and register with unbounded min value is not allowed; bounds-check the offset first",
    );
}

#[test]
fn reject_negative_index() {
    reject_msg(
        "
        mov %r6, %r1
        stw [%r10-4], 0
        lddw %r1, map_fd(1)
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, out
        ldxdw %r1, [%r6+104]
        jsgt %r1, 63, out
        jslt %r1, -8, out
        add %r0, %r1
        ldxb %r2, [%r0]
        out:
        mov %r0, 0
        exit",
        12,
        Rule::MemoryAccess,
        "R0 min value is negative, either use unsigned index or do a if (index >= 0) check (off=0, var_off=(smin=-8,smax=63))",
    );
}

#[test]
fn reject_missing_null_check() {
    reject_msg(
        "
        stw [%r10-4], 0
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -4
        call 1
        ldxdw %r1, [%r0]
        mov %r0, 0
        exit",
        6,
        Rule::NullCheck,
        "R0 invalid mem access 'map_value_or_null': check the value returned by bpf_map_lookup_elem against NULL before dereferencing it",
    );
}

#[test]
fn null_check_on_a_copy_refines_the_original() {
    accept(
        "
        stw [%r10-4], 0
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -4
        call 1
        mov %r6, %r0
        jeq %r6, 0, out
        ldxdw %r1, [%r0]
        out:
        mov %r0, 0
        exit",
    );
}

#[test]
fn reject_dereference_on_the_null_arm() {
    reject_msg(
        "
        stw [%r10-4], 0
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -4
        call 1
        jne %r0, 0, out
        ldxdw %r1, [%r0]
        out:
        mov %r0, 0
        exit",
        7,
        Rule::MemoryAccess,
        "R0 invalid mem access 'scalar': R0 holds a number, not a pointer",
    );
}

#[test]
fn reject_uninit_stack_read() {
    reject_msg(
        "ldxdw %r0, [%r10-8]\nexit",
        0,
        Rule::UninitStack,
        "invalid read from stack R10 off -8+0 size 8: fp-8 is read before it is written",
    );
}

#[test]
fn reject_uninit_stack_as_map_key() {
    reject_msg(
        "
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -4
        call 1
        mov %r0, 0
        exit",
        4,
        Rule::UninitStack,
        "invalid indirect read from stack R2 off -4+0 size 4: fp-4 is not initialised before the call to bpf_map_lookup_elem",
    );
}

#[test]
fn reject_uninit_register() {
    reject_msg(
        "mov %r0, %r5\nexit",
        0,
        Rule::UninitRegister,
        "R5 !read_ok: R5 is read before it is written on this path",
    );
    reject_msg(
        "exit",
        0,
        Rule::UninitRegister,
        "R0 !read_ok: set R0 (the program's return value) before exit",
    );
    reject_msg(
        "call 5\nmov %r0, %r1\nexit",
        1,
        Rule::UninitRegister,
        "R1 !read_ok: R1 is read before it is written on this path",
    );
}

#[test]
fn reject_pointer_leak_into_map() {
    reject_msg(
        "
        stw [%r10-4], 0
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -4
        call 1
        jeq %r0, 0, out
        stxdw [%r0], %r10
        out:
        mov %r0, 0
        exit",
        7,
        Rule::PointerLeak,
        "R10 leaks addr into map: pointers must not be stored outside the stack",
    );
}

#[test]
fn reject_pointer_leak_via_r0() {
    reject_msg(
        "mov %r0, %r1\nexit",
        1,
        Rule::PointerLeak,
        "R0 leaks addr as return value: the program returns a ctx pointer",
    );
}

#[test]
fn reject_pointer_leak_via_stack_bytes_as_map_value() {
    reject_msg(
        "
        stw [%r10-4], 0
        stxdw [%r10-16], %r1
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -4
        mov %r3, %r10
        add %r3, -16
        mov %r4, 0
        call 2
        mov %r0, 0
        exit",
        9,
        Rule::PointerLeak,
        "invalid indirect read from stack R3 off -16+0 size 8: the pointer spilled at fp-16 would leak through bpf_map_update_elem",
    );
}

#[test]
fn reject_pointer_leak_into_helper_and_ringbuf() {
    reject_msg(
        "mov %r3, %r10\nmov %r1, %r10\nadd %r1, -8\nstdw [%r10-8], 0\nmov %r2, 8\ncall 6\nmov %r0, 0\nexit",
        5,
        Rule::PointerLeak,
        "R3 leaks addr into helper function bpf_trace_printk",
    );
}

#[test]
fn reject_unbounded_loop_as_too_complex() {
    let e = reject(
        "
        ldxdw %r1, [%r1+112]
        mov %r0, 0
        loop:
        add %r0, 1
        jne %r0, %r1, loop
        exit",
    );
    assert_eq!(e.error.rule, Rule::Complexity);
    assert!(
        e.error
            .message
            .starts_with("program too complex: processed 1000001 instructions (limit 1000000)"),
        "{}",
        e.error
    );
}

#[test]
fn reject_infinite_loop() {
    reject_msg(
        "mov %r0, 0\nloop:\nja loop",
        1,
        Rule::Complexity,
        "infinite loop detected at insn 1: the state repeats without progress",
    );
}

#[test]
fn reject_bad_helper_arguments() {
    // wrong type: a scalar where the map is expected
    reject_msg(
        "mov %r1, 0\nmov %r2, %r10\nadd %r2, -4\nstw [%r10-4], 0\ncall 1\nmov %r0, 0\nexit",
        4,
        Rule::HelperArgument,
        "R1 type=scalar expected=map_ptr (argument 1 of bpf_map_lookup_elem)",
    );
    // size not constant / unbounded
    reject_msg(
        "ldxdw %r2, [%r1+112]\nmov %r1, %r10\nadd %r1, -16\ncall 16\nmov %r0, 0\nexit",
        3,
        Rule::HelperArgument,
        "R2 min value is negative, either use unsigned or 'var &= const'",
    );
    // size too big for the buffer
    reject_msg(
        "mov %r1, %r10\nadd %r1, -16\nmov %r2, 17\ncall 16\nmov %r0, 0\nexit",
        3,
        Rule::MemoryAccess,
        "invalid indirect access to stack R1 off=-16 size=17: the buffer runs past fp-1",
    );
    // zero size where at least one byte is needed
    reject_msg(
        "mov %r1, %r10\nadd %r1, -16\nmov %r2, 0\ncall 16\nmov %r0, 0\nexit",
        3,
        Rule::HelperArgument,
        "R2 invalid zero-sized read: the size passed to bpf_get_current_comm may be 0",
    );
    // ringbuf_reserve with a variable size
    reject_msg(
        "ldxdw %r2, [%r1+112]\nlddw %r1, map_fd(2)\nmov %r3, 0\ncall 131\nmov %r0, 0\nexit",
        4,
        Rule::HelperArgument,
        "R2 is not a known constant: the size passed to bpf_ringbuf_reserve must be a constant",
    );
    // map of the wrong type
    reject_msg(
        "stw [%r10-4], 0\nlddw %r1, map_fd(2)\nmov %r2, %r10\nadd %r2, -4\ncall 1\nmov %r0, 0\nexit",
        5,
        Rule::HelperArgument,
        "cannot pass map_type 27 into func bpf_map_lookup_elem#1",
    );
}

#[test]
fn reject_unknown_and_disallowed_helpers() {
    reject_msg(
        "call 9999\nmov %r0, 0\nexit",
        0,
        Rule::HelperNotAllowed,
        "invalid func unknown#9999",
    );
    let tp = linux::tracepoint("sched:sched_switch", 64, &[(8, 16)]);
    let e = run_with("mov %r1, 0\ncall 173\nexit", &tp, &Config::default()).unwrap_err();
    assert_eq!(e.error.rule, Rule::HelperNotAllowed);
    assert_eq!(
        e.error.message,
        "program of this type (tracepoint) cannot use helper bpf_get_func_ip#173"
    );
}

#[test]
fn reject_ctx_accesses() {
    reject_msg(
        "stdw [%r1+0], 1\nmov %r0, 0\nexit",
        0,
        Rule::Context,
        "invalid bpf_context access off=0 size=8: struct pt_regs is read-only",
    );
    reject_msg(
        "ldxdw %r0, [%r1+4]\nexit",
        0,
        Rule::Context,
        "invalid bpf_context access off=4 size=8: misaligned access",
    );
    reject_msg(
        "ldxdw %r0, [%r1+168]\nexit",
        0,
        Rule::Context,
        "invalid bpf_context access off=168 size=8: struct pt_regs is 168 bytes",
    );
    reject_msg(
        "ldxdw %r0, [%r1-8]\nexit",
        0,
        Rule::Context,
        "invalid bpf_context access off=-8 size=8: struct pt_regs is 168 bytes",
    );
    // narrower aligned reads inside a field are fine
    accept("ldxw %r0, [%r1+116]\nldxh %r0, [%r1+118]\nldxb %r0, [%r1+119]\nexit");
}

#[test]
fn reject_control_flow() {
    reject_msg(
        "lddw %r0, 1\nja -2\nexit",
        2,
        Rule::ControlFlow,
        "jump into the middle of ldimm64 insn 0",
    );
    reject_msg(
        "mov %r0, 0\nja +5\nexit",
        1,
        Rule::ControlFlow,
        "jump out of range from insn 1 to 7",
    );
    reject_msg(
        "mov %r0, 0",
        0,
        Rule::ControlFlow,
        "last insn is not an exit or jmp: execution falls off the end of the program",
    );
    reject_msg(
        "mov %r0, 0\nexit\nmov %r0, 1\nexit",
        2,
        Rule::ControlFlow,
        "unreachable insn 2",
    );
    reject_msg(
        "mov %r0, 0\nja +1\nexit\nexit",
        2,
        Rule::ControlFlow,
        "unreachable insn 2",
    );
}

#[test]
fn reject_call_depth_and_recursion() {
    let mut src = String::from("call local f1\nmov %r0, 0\nexit\n");
    for i in 1..9 {
        src.push_str(&format!("f{i}:\ncall local f{}\nmov %r0, 0\nexit\n", i + 1));
    }
    src.push_str("f9:\nmov %r0, 0\nexit\n");
    reject_msg(
        &src,
        21,
        Rule::CallDepth,
        "the call stack of 10 frames is too deep (max 8)",
    );
    reject_msg(
        "call local f\nexit\nf:\ncall local f\nexit",
        2,
        Rule::CallDepth,
        "recursive call from insn 2 to 2: bpf-to-bpf recursion is not allowed",
    );
}

#[test]
fn reject_stack_out_of_bounds() {
    reject_msg(
        "stdw [%r10+8], 0\nmov %r0, 0\nexit",
        0,
        Rule::MemoryAccess,
        "invalid write to stack R10 off=8 size=8: the stack is fp-512..fp-1",
    );
    reject_msg(
        "stdw [%r10-520], 0\nmov %r0, 0\nexit",
        0,
        Rule::MemoryAccess,
        "invalid write to stack R10 off=-520 size=8: the stack is fp-512..fp-1",
    );
    reject_msg(
        "ldxdw %r0, [%r10-12]\nexit",
        0,
        Rule::MemoryAccess,
        "misaligned stack access off -12+0 size 8",
    );
}

#[test]
fn reject_pointer_arithmetic_and_comparisons() {
    reject_msg(
        "mul %r1, 2\nmov %r0, 0\nexit",
        0,
        Rule::PointerArithmetic,
        "R1 pointer arithmetic with *= operator prohibited",
    );
    reject_msg(
        "and %r1, 2\nmov %r0, 0\nexit",
        0,
        Rule::PointerArithmetic,
        "R1 bitwise operator &= on pointer prohibited",
    );
    reject_msg(
        "add32 %r1, 2\nmov %r0, 0\nexit",
        0,
        Rule::PointerArithmetic,
        "R1 32-bit pointer arithmetic prohibited",
    );
    reject_msg(
        "mov %r0, 0\njeq %r1, %r10, +0\nexit",
        1,
        Rule::PointerArithmetic,
        "R1 pointer comparison prohibited: comparing ctx with fp",
    );
    reject_msg(
        "mov %r0, 0\njgt %r1, 5, +0\nexit",
        1,
        Rule::PointerArithmetic,
        "R1 pointer comparison prohibited: ctx compared with a scalar (only == 0 / != 0 null checks are allowed)",
    );
    reject_msg(
        "lddw %r1, map_fd(0)\nadd %r1, 8\nmov %r0, 0\nexit",
        2,
        Rule::PointerArithmetic,
        "R1 pointer arithmetic on map_ptr prohibited",
    );
}

#[test]
fn division_by_possibly_zero_register_is_allowed_and_noted() {
    let r = accept("ldxdw %r2, [%r1+112]\nmov %r0, 100\ndiv %r0, %r2\nmod %r0, %r2\nexit");
    assert_eq!(r.stats.possibly_zero_divisions, 2);
    let r = accept("mov %r0, 100\ndiv %r0, 0\nexit");
    assert_eq!(r.stats.possibly_zero_divisions, 0);
}

#[test]
fn reject_unreleased_ringbuf_record() {
    reject_msg(
        "
        lddw %r1, map_fd(2)
        mov %r2, 16
        mov %r3, 0
        call 131
        jeq %r0, 0, out
        stdw [%r0], 1
        out:
        mov %r0, 0
        exit",
        8,
        Rule::Reference,
        "Unreleased reference id=1 alloc_insn=4: pass the record from bpf_ringbuf_reserve to bpf_ringbuf_submit or bpf_ringbuf_discard on every path",
    );
}

#[test]
fn reject_use_after_submit_and_record_overflow() {
    reject_msg(
        "
        lddw %r1, map_fd(2)
        mov %r2, 16
        mov %r3, 0
        call 131
        jeq %r0, 0, out
        mov %r6, %r0
        mov %r1, %r0
        mov %r2, 0
        call 132
        stdw [%r6], 1
        out:
        mov %r0, 0
        exit",
        10,
        Rule::UninitRegister,
        "R6 !read_ok: R6 is read before it is written on this path",
    );
    reject_msg(
        "
        lddw %r1, map_fd(2)
        mov %r2, 16
        mov %r3, 0
        call 131
        jeq %r0, 0, out
        stdw [%r0+16], 1
        mov %r1, %r0
        mov %r2, 0
        call 133
        out:
        mov %r0, 0
        exit",
        6,
        Rule::MemoryAccess,
        "invalid access to memory, mem_size=16 off=16 size=8",
    );
}

#[test]
fn reject_bad_map_references() {
    reject_msg(
        "lddw %r1, map_fd(42)\nmov %r0, 0\nexit",
        0,
        Rule::BadInput,
        "map fd 42 does not refer to a map of this program",
    );
    reject_msg(
        "lddw %r1, map_value(0, 0)\nmov %r0, 0\nexit",
        0,
        Rule::BadInput,
        "direct value access on map type 1 not supported (only array maps)",
    );
    accept("lddw %r1, map_value(1, 8)\nldxdw %r0, [%r1+0]\nexit");
    reject_msg(
        "lddw %r1, map_value(1, 60)\nldxdw %r0, [%r1+0]\nexit",
        2,
        Rule::MemoryAccess,
        "invalid access to map value, value_size=64 off=60 size=8",
    );
}

#[test]
fn reject_partial_pointer_spill_and_corruption() {
    reject_msg(
        "stxw [%r10-8], %r1\nmov %r0, 0\nexit",
        0,
        Rule::PointerLeak,
        "invalid size of register spill: storing 4 bytes of pointer R1",
    );
    reject_msg(
        "stxdw [%r10-8], %r1\nstw [%r10-8], 0\nmov %r0, 0\nexit",
        1,
        Rule::PointerLeak,
        "attempt to corrupt spilled pointer on stack at fp-8",
    );
    reject_msg(
        "stxdw [%r10-8], %r1\nldxw %r0, [%r10-8]\nexit",
        1,
        Rule::PointerLeak,
        "invalid size of register fill: reading 4 bytes of a spilled pointer at fp-8",
    );
}

#[test]
fn thirty_two_bit_bounds_check() {
    accept(
        "
        ldxw %r1, [%r1+112]
        mov %r0, 0
        jgt32 %r1, 31, out
        mov %r2, %r10
        add %r2, -32
        add %r2, %r1
        stb [%r2], 0
        out:
        exit",
    );
}

#[test]
fn privileged_mode_allows_pointer_leaks() {
    let cfg = Config {
        allow_ptr_leaks: true,
        ..Config::default()
    };
    run_with("mov %r0, %r1\nexit", &linux::kprobe(), &cfg).unwrap();
    let _ = helper::MAP_LOOKUP_ELEM;
}

#[test]
fn reject_misaligned_atomic() {
    reject_msg(
        "lddw %r1, map_value(1, 0)\nmov %r2, 1\nlock add32 [%r1+2], %r2\nmov %r0, 0\nexit",
        3,
        Rule::MemoryAccess,
        "misaligned atomic access off 2+0 size 4",
    );
    accept("lddw %r1, map_value(1, 8)\nmov %r2, 1\nlock add [%r1+0], %r2\nmov %r0, 0\nexit");
}

#[test]
fn reject_too_many_pending_branches() {
    // 9000 independent branches whose targets all lie at the end: every
    // fork stays pending until the fall-through path finishes.
    let mut src = String::new();
    for _ in 0..9000 {
        src.push_str("call 5\njgt %r0, 100, end\n");
    }
    src.push_str("end:\nexit\n");
    let e = reject(&src);
    assert_eq!(e.error.rule, Rule::Complexity);
    assert_eq!(
        e.error.message,
        "program too complex: the sequence of 8193 jumps is too complex"
    );
}

#[test]
fn log_level_two_shows_states() {
    let config = Config {
        log_level: 2,
        ..Config::default()
    };
    let r = run_with(
        "ldxdw %r2, [%r1+112]\nmov %r0, 0\njgt %r2, 7, out\nmov %r0, %r2\nout:\nexit",
        &linux::kprobe(),
        &config,
    )
    .unwrap();
    assert_eq!(
        r.log,
        "0: r2 = *(u64 *)(r1 + 112)\n\
         0: R1=ctx() R2=scalar() R10=fp0\n\
         1: r0 = 0\n\
         1: R0=0 R1=ctx() R2=scalar() R10=fp0\n\
         2: if r2 > 7 goto +1\n\
         2: R0=0 R1=ctx() R2=scalar(smin=0,smax=7,umax=7,var_off=(0x0; 0x7)) R10=fp0\n\
         3: r0 = r2\n\
         3: R0=scalar(smin=0,smax=7,umax=7,var_off=(0x0; 0x7)) R1=ctx() R2=scalar(smin=0,smax=7,umax=7,var_off=(0x0; 0x7)) R10=fp0\n\
         4: exit\n\
         4: R0=scalar(smin=0,smax=7,umax=7,var_off=(0x0; 0x7)) R1=ctx() R2=scalar(smin=0,smax=7,umax=7,var_off=(0x0; 0x7)) R10=fp0\n\
         from 2 to 4: R0=0 R1=ctx() R2=scalar(umin=8) R10=fp0\n\
         4: exit\n\
         4: R0=0 R1=ctx() R2=scalar(umin=8) R10=fp0\n\
         processed 6 insns, stored 0 states (peak 1), pruned 0\n"
    );
}

#[test]
fn variable_size_helper_write_initialises_only_the_sure_prefix() {
    // probe_read_kernel(fp-16, 4..=16 bytes): fp-16..fp-13 are surely
    // written, fp-8 may not be.
    let prog = "
        mov %r6, %r1
        ldxdw %r2, [%r6+112]
        and %r2, 15
        jlt %r2, 4, out
        mov %r1, %r10
        add %r1, -16
        ldxdw %r3, [%r6+104]
        call 113
        ldxw %r0, [%r10-16]
        ldxdw %r0, [%r10-8]
        out:
        mov %r0, 0
        exit";
    reject_msg(
        prog,
        9,
        Rule::UninitStack,
        "invalid read from stack R10 off -8+0 size 8: fp-8 is read before it is written",
    );
}

#[test]
fn state_limit_and_policies() {
    // A 64-iteration loop stores a state per iteration; allow only 10.
    let looped = "
        mov %r0, 0
        mov %r1, 0
        loop:
        add %r0, %r1
        add %r0, 3
        add %r0, 5
        add %r0, 7
        add %r0, 9
        add %r0, 11
        add %r0, 13
        add %r1, 1
        jlt %r1, 64, loop
        exit";
    let cfg = Config {
        max_states: 10,
        ..Config::default()
    };
    let e = run_with(looped, &linux::kprobe(), &cfg).unwrap_err();
    assert_eq!(e.error.rule, Rule::Complexity);
    assert_eq!(
        e.error.message,
        "program too complex: more than 10 states stored (processed 102 instructions)"
    );
    assert_eq!(e.stats.states_stored, 10);
    // Privileged policy: uninitialised stack reads are allowed.
    let cfg = Config {
        allow_uninit_stack: true,
        ..Config::default()
    };
    run_with("ldxdw %r0, [%r10-8]\nexit", &linux::kprobe(), &cfg).unwrap();
}

/// A write to r10 is refused under its own rule, naming the instruction,
/// whether it arrives as bytes (the decoder refuses it) or as a hand-built
/// instruction (the verifier does).
#[test]
fn reject_writes_to_the_frame_pointer() {
    use bpf_vm::insn::{AluOp, AtomicOp, Insn, Operand, Size, Width};
    use bpf_vm::verifier::verify_bytes;
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = maps();
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
    let msg = "frame pointer r10 is read-only: copy it (r1 = r10) and change the copy";
    // mov r10, 1 (bytes: 0xb7, dst 10), ldxdw r10, [r1], atomic fetch-add
    // into r10, then exit.
    let cases: [(&[u8], &str); 3] = [
        (&[0xb7, 0x0a, 0, 0, 1, 0, 0, 0], "r10 = 1"),
        (&[0x79, 0x1a, 0, 0, 0, 0, 0, 0], "r10 = *(u64 *)(r1 + 0)"),
        (
            &[0xdb, 0xa1, 0xf8, 0xff, 0x01, 0, 0, 0],
            "r10 = atomic_fetch_add((u64 *)(r1 - 8), r10)",
        ),
    ];
    for (insn, text) in cases {
        let mut bytes = vec![0xb7, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(insn);
        bytes.extend_from_slice(&[0x95, 0, 0, 0, 0, 0, 0, 0]);
        let e = verify_bytes(&bytes, &env, &Config::default()).unwrap_err();
        assert_eq!(e.error.rule, Rule::FramePointer, "{}", e.error);
        assert_eq!(e.error.insn_index, 1, "{}", e.error);
        assert_eq!(e.error.insn_text, text, "{}", e.error);
        assert_eq!(e.error.message, msg);
        assert_eq!(e.error.to_string(), format!("insn 1: {text}: {msg}"));
    }
    // Hand-built: the same rule and text.
    let prog = [
        Insn::Alu {
            width: Width::W64,
            op: AluOp::Mov,
            dst: 10,
            src: Operand::Imm(1),
        },
        Insn::Atomic {
            size: Size::DW,
            op: AtomicOp::Add,
            fetch: true,
            dst: 1,
            off: -8,
            src: 10,
        },
        Insn::Exit,
    ];
    let e = verify(&prog, &env, &Config::default()).unwrap_err();
    assert_eq!(e.error.to_string(), format!("insn 0: r10 = 1: {msg}"));
    assert_eq!(e.error.rule, Rule::FramePointer);
    // Other undecodable slots show their bytes.
    let e = verify_bytes(&[0xff, 0, 0, 0, 0, 0, 0, 0], &env, &Config::default()).unwrap_err();
    assert_eq!(e.error.rule, Rule::BadInput);
    assert_eq!(
        e.error.to_string(),
        "insn 0: raw bytes ff 00 00 00 00 00 00 00: unknown opcode 0xff"
    );
}

/// A lookup in an array map with `store` putting the key at fp-8, then a
/// store through the result without a NULL check.
fn array_lookup_unchecked(store: &str) -> String {
    format!(
        "
        {store}
        lddw %r1, map_fd(1)
        mov %r2, %r10
        add %r2, -8
        call 1
        stdw [%r0+8], 1
        mov %r0, 0
        exit"
    )
}

const UNCHECKED: &str = "R0 invalid mem access 'map_value_or_null': check the value returned by bpf_map_lookup_elem against NULL before dereferencing it";

/// Linux 6.13+: a lookup in an array with a constant key in range cannot
/// fail, so the value needs no NULL check.
#[test]
fn array_lookup_with_a_constant_key_in_range_is_not_null() {
    // Key 0 (zeroed bytes), key 15 (the last entry) stored as an immediate
    // or from a register, at a slot's start.
    for store in [
        "stw [%r10-8], 0",
        "stw [%r10-8], 15",
        "mov %r1, 15\nstxw [%r10-8], %r1",
    ] {
        let r = run(&array_lookup_unchecked(store));
        assert!(r.is_ok(), "{store}: {}", r.unwrap_err().error);
    }
    // The value is a map value pointer, not or-null, in the log.
    let src = array_lookup_unchecked("stw [%r10-8], 2");
    let prog = assemble(&src).unwrap();
    let helpers = linux::helpers();
    let (pt, maps) = (linux::kprobe(), maps());
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
    let config = Config {
        log_level: 2,
        ..Config::default()
    };
    let log = verify(prog.insns(), &env, &config).unwrap().log;
    let after_call = log
        .lines()
        .find(|l| l.starts_with("5: ") && l.contains("R0"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        after_call.contains("R0=map_value(id=1,map=1)"),
        "{after_call}"
    );
}

#[test]
fn array_lookup_with_a_key_out_of_range_or_unknown_needs_the_check() {
    for store in [
        // One past the end.
        "stw [%r10-8], 16",
        "mov %r1, 16\nstxw [%r10-8], %r1",
        // Not a constant: the first argument of the probed function.
        "ldxw %r6, [%r1+112]\nstxw [%r10-8], %r6",
        // A constant, but wider than the key, or not at a slot's start
        // (Linux tracks neither as a key).
        "stdw [%r10-8], 0",
        "mov %r1, 1\nstxdw [%r10-8], %r1",
        // The slot written again after the constant store.
        "mov %r1, 3\nstxw [%r10-8], %r1\nstw [%r10-4], 7",
    ] {
        let at = store.lines().count() + 5;
        reject_msg(
            &array_lookup_unchecked(store),
            at,
            Rule::NullCheck,
            UNCHECKED,
        );
    }
    // A hash map may miss whatever the key.
    reject_msg(
        "
        stw [%r10-8], 0
        lddw %r1, map_fd(0)
        mov %r2, %r10
        add %r2, -8
        call 1
        stdw [%r0+0], 1
        mov %r0, 0
        exit",
        6,
        Rule::NullCheck,
        UNCHECKED,
    );
}

/// Two paths meet before the lookup, one with key 1 and one with key 40:
/// whichever is explored first, the other must not be pruned as already
/// safe (the verdict depends on the key's value).
#[test]
fn constant_key_paths_are_not_pruned_together() {
    for (first, second) in [(1, 40), (40, 1)] {
        let src = format!(
            "
            ldxdw %r6, [%r1+112]
            stw [%r10-8], {first}
            jeq %r6, 0, lookup
            stw [%r10-8], {second}
            lookup:
            lddw %r1, map_fd(1)
            mov %r2, %r10
            add %r2, -8
            call 1
            stdw [%r0+8], 1
            mov %r0, 0
            exit"
        );
        reject_msg(&src, 9, Rule::NullCheck, UNCHECKED);
    }
}

/// Like Linux, which resolves every map reference before verifying, a
/// map that does not exist is refused even in code that never runs (the
/// branch around it is always taken).
#[test]
fn reject_a_missing_map_in_dead_code() {
    reject_msg(
        "
        mov %r0, 0
        mov %r1, 0
        jeq %r1, 0, out
        lddw %r1, map_fd(-7)
        out:
        exit",
        3,
        Rule::BadInput,
        "map fd -7 does not refer to a map of this program",
    );
}
