//! The benchmark programs (`benches/interp.rs`), shared with the JIT's
//! disassembly example (`examples/jit_disasm.rs`) and its tests
//! (`tests/jit.rs`).

pub const ALU: &str = "
    mov %r0, 0
    mov %r5, 0
    mov %r2, 10000
    mov %r3, 0x5bd1e995
loop:
    mul %r0, %r3
    xor %r0, %r2
    mov %r4, %r0
    rsh %r4, 13
    xor %r0, %r4
    add32 %r5, %r2
    sub %r2, 1
    jne %r2, 0, loop
    add %r0, %r5
    exit
";

pub const STACK: &str = "
    mov %r0, 0
    mov %r2, 10000
    stdw [%r10-8], 0
    stdw [%r10-16], 0
loop:
    ldxdw %r3, [%r10-8]
    add %r3, %r2
    stxdw [%r10-8], %r3
    ldxw %r4, [%r10-16]
    xor %r4, %r3
    stxw [%r10-16], %r4
    stxb [%r10-17], %r4
    ldxb %r5, [%r10-17]
    add %r0, %r5
    sub %r2, 1
    jne %r2, 0, loop
    ldxdw %r1, [%r10-8]
    add %r0, %r1
    exit
";

pub const HELPER: &str = "
    mov %r6, 10000
    mov %r7, 0
loop:
    mov %r1, %r7
    mov %r2, %r6
    call 2
    mov %r7, %r0
    sub %r6, 1
    jne %r6, 0, loop
    mov %r0, %r7
    exit
";

pub const HASHMAP: &str = "
    mov %r6, 10000
loop:
    mov %r1, %r6
    and %r1, 1023
    stxdw [%r10-8], %r1
    mov %r1, 0
    mov %r2, %r10
    add %r2, -8
    call 1
    jeq %r0, 0, skip
    ldxdw %r1, [%r0]
    add %r1, 1
    stxdw [%r0], %r1
skip:
    sub %r6, 1
    jne %r6, 0, loop
    mov %r0, 0
    exit
";

/// r1 = a 64-slot u64 histogram.
pub const LOG2HIST: &str = "
    mov %r6, %r1
    mov %r7, 5000
    lddw %r8, 0x853c49e6748fea9b
    lddw %r9, 0xffffffff
loop:
    lddw %r2, 6364136223846793005
    mul %r8, %r2
    lddw %r2, 1442695040888963407
    add %r8, %r2
    mov %r1, %r8
    rsh %r1, 40
    mov %r0, 0
    mov %r2, 1
    jgt %r1, %r9, +1
    mov %r2, 0
    lsh %r2, 5
    rsh %r1, %r2
    or %r0, %r2
    mov %r2, 1
    jgt %r1, 0xffff, +1
    mov %r2, 0
    lsh %r2, 4
    rsh %r1, %r2
    or %r0, %r2
    mov %r2, 1
    jgt %r1, 0xff, +1
    mov %r2, 0
    lsh %r2, 3
    rsh %r1, %r2
    or %r0, %r2
    mov %r2, 1
    jgt %r1, 0xf, +1
    mov %r2, 0
    lsh %r2, 2
    rsh %r1, %r2
    or %r0, %r2
    mov %r2, 1
    jgt %r1, 0x3, +1
    mov %r2, 0
    lsh %r2, 1
    rsh %r1, %r2
    or %r0, %r2
    rsh %r1, 1
    or %r0, %r1
    jgt %r0, 63, next
    lsh %r0, 3
    mov %r2, %r6
    add %r2, %r0
    ldxdw %r3, [%r2]
    add %r3, 1
    stxdw [%r2], %r3
next:
    sub %r7, 1
    jne %r7, 0, loop
    mov %r0, 0
    exit
";

pub const CALLS: &str = "
    mov %r6, 10000
    mov %r7, 0
loop:
    mov %r1, %r7
    mov %r2, %r6
    call local f
    mov %r7, %r0
    sub %r6, 1
    jne %r6, 0, loop
    mov %r0, %r7
    exit
f:
    stxdw [%r10-8], %r1
    mov %r0, %r2
    mul %r0, 3
    ldxdw %r3, [%r10-8]
    xor %r0, %r3
    exit
";

/// Every program by name, in the order the benchmark runs them.
pub const ALL: [(&str, &str); 6] = [
    ("alu", ALU),
    ("stack", STACK),
    ("helper", HELPER),
    ("hashmap", HASHMAP),
    ("log2hist", LOG2HIST),
    ("calls", CALLS),
];
