//! The register block kprobe and perf event programs receive: Linux's
//! x86-64 `struct pt_regs`, and `struct bpf_perf_event_data` around it.
//!
//! The structs are the layout; the offsets below are computed from them
//! (`offset_of!`), so code generators, the verifier's context and the
//! probe crate's accessors cannot disagree.

use core::mem::{offset_of, size_of};

/// Linux's x86-64 `struct pt_regs`, in its field order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct PtRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// The syscall number on syscall entry, else -1 (ktrace: the error
    /// code of an exception that pushes one, else 0).
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Linux's `struct bpf_perf_event_data`: the sampled registers, the sample
/// period and the address (for events that record one).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerfEventData {
    /// Registers at the sampled instruction.
    pub regs: PtRegs,
    /// Events counted per sample.
    pub sample_period: u64,
    /// Data address, when the event has one.
    pub addr: u64,
}

/// Size of `struct pt_regs` (168).
pub const PT_REGS_SIZE: u32 = size_of::<PtRegs>() as u32;
/// Number of 8-byte fields of `struct pt_regs` (21).
pub const PT_REGS_FIELDS: u32 = PT_REGS_SIZE / 8;
/// Size of `struct bpf_perf_event_data` (184).
pub const PERF_EVENT_DATA_SIZE: u32 = size_of::<PerfEventData>() as u32;

impl PtRegs {
    /// The fields as words, in Linux's order.
    pub fn to_words(&self) -> [u64; PT_REGS_FIELDS as usize] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
        ]
    }

    /// The registers [`PtRegs::to_words`] gave.
    pub fn from_words(w: &[u64; PT_REGS_FIELDS as usize]) -> PtRegs {
        let [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss] =
            *w;
        PtRegs {
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            eflags,
            rsp,
            ss,
        }
    }

    /// The context bytes a program reads: every field little-endian, in
    /// Linux's order.
    pub fn to_bytes(&self) -> [u8; PT_REGS_SIZE as usize] {
        let mut out = [0u8; PT_REGS_SIZE as usize];
        for (chunk, w) in out.chunks_exact_mut(8).zip(self.to_words()) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

impl PerfEventData {
    /// The context bytes a perf event program reads.
    pub fn to_bytes(&self) -> [u8; PERF_EVENT_DATA_SIZE as usize] {
        let mut out = [0u8; PERF_EVENT_DATA_SIZE as usize];
        let regs = PT_REGS_SIZE as usize;
        out[..regs].copy_from_slice(&self.regs.to_bytes());
        out[regs..regs + 8].copy_from_slice(&self.sample_period.to_le_bytes());
        out[regs + 8..].copy_from_slice(&self.addr.to_le_bytes());
        out
    }
}

/// Byte offsets of `struct pt_regs` fields in the context.
pub mod pt_regs {
    #![allow(missing_docs)]
    use super::{offset_of, PtRegs};

    pub const R15: u32 = offset_of!(PtRegs, r15) as u32;
    pub const R14: u32 = offset_of!(PtRegs, r14) as u32;
    pub const R13: u32 = offset_of!(PtRegs, r13) as u32;
    pub const R12: u32 = offset_of!(PtRegs, r12) as u32;
    pub const RBP: u32 = offset_of!(PtRegs, rbp) as u32;
    pub const RBX: u32 = offset_of!(PtRegs, rbx) as u32;
    pub const R11: u32 = offset_of!(PtRegs, r11) as u32;
    pub const R10: u32 = offset_of!(PtRegs, r10) as u32;
    pub const R9: u32 = offset_of!(PtRegs, r9) as u32;
    pub const R8: u32 = offset_of!(PtRegs, r8) as u32;
    pub const RAX: u32 = offset_of!(PtRegs, rax) as u32;
    pub const RCX: u32 = offset_of!(PtRegs, rcx) as u32;
    pub const RDX: u32 = offset_of!(PtRegs, rdx) as u32;
    pub const RSI: u32 = offset_of!(PtRegs, rsi) as u32;
    pub const RDI: u32 = offset_of!(PtRegs, rdi) as u32;
    pub const ORIG_RAX: u32 = offset_of!(PtRegs, orig_rax) as u32;
    pub const RIP: u32 = offset_of!(PtRegs, rip) as u32;
    pub const CS: u32 = offset_of!(PtRegs, cs) as u32;
    pub const EFLAGS: u32 = offset_of!(PtRegs, eflags) as u32;
    pub const RSP: u32 = offset_of!(PtRegs, rsp) as u32;
    pub const SS: u32 = offset_of!(PtRegs, ss) as u32;

    /// Where the System V x86-64 calling convention passes a function's
    /// first six integer arguments: `rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`.
    pub const ARGS: [u32; 6] = [RDI, RSI, RDX, RCX, R8, R9];

    /// Every field as Linux's user-space header (`asm/ptrace.h`) names it,
    /// with its offset, in order.
    pub const NAMES: [(&str, u32); 21] = [
        ("r15", R15),
        ("r14", R14),
        ("r13", R13),
        ("r12", R12),
        ("rbp", RBP),
        ("rbx", RBX),
        ("r11", R11),
        ("r10", R10),
        ("r9", R9),
        ("r8", R8),
        ("rax", RAX),
        ("rcx", RCX),
        ("rdx", RDX),
        ("rsi", RSI),
        ("rdi", RDI),
        ("orig_rax", ORIG_RAX),
        ("rip", RIP),
        ("cs", CS),
        ("eflags", EFLAGS),
        ("rsp", RSP),
        ("ss", SS),
    ];

    /// The name of the field at `offset` ([`NAMES`]).
    pub fn name_at(offset: u32) -> Option<&'static str> {
        NAMES.iter().find(|(_, o)| *o == offset).map(|(n, _)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_linux_x86_64() {
        assert_eq!(PT_REGS_SIZE, 168);
        assert_eq!(PT_REGS_FIELDS, 21);
        assert_eq!(PERF_EVENT_DATA_SIZE, 184);
        assert_eq!(pt_regs::RAX, 80);
        assert_eq!(pt_regs::RSI, 104);
        assert_eq!(pt_regs::RDI, 112);
        assert_eq!(pt_regs::RIP, 128);
        assert_eq!(pt_regs::RSP, 152);
        assert_eq!(pt_regs::SS, 160);
        assert_eq!(offset_of!(PerfEventData, sample_period), 168);
        assert_eq!(offset_of!(PerfEventData, addr), 176);
        for (i, (_, offset)) in pt_regs::NAMES.iter().enumerate() {
            assert_eq!(*offset, 8 * i as u32);
        }
        assert_eq!(pt_regs::name_at(pt_regs::ARGS[0]), Some("rdi"));
    }

    #[test]
    fn bytes_follow_the_field_offsets() {
        let regs = PtRegs {
            rdi: 0x1122_3344_5566_7788,
            rip: 7,
            ss: 9,
            ..PtRegs::default()
        };
        let b = regs.to_bytes();
        let at =
            |off: u32| u64::from_le_bytes(b[off as usize..off as usize + 8].try_into().unwrap());
        assert_eq!(at(pt_regs::RDI), 0x1122_3344_5566_7788);
        assert_eq!(at(pt_regs::RIP), 7);
        assert_eq!(at(pt_regs::SS), 9);
        assert_eq!(at(pt_regs::RAX), 0);
        let data = PerfEventData {
            regs,
            sample_period: 1000,
            addr: 3,
        };
        let d = data.to_bytes();
        assert_eq!(&d[..168], &b[..]);
        assert_eq!(u64::from_le_bytes(d[168..176].try_into().unwrap()), 1000);
        assert_eq!(u64::from_le_bytes(d[176..].try_into().unwrap()), 3);
        assert_eq!(PtRegs::from_words(&regs.to_words()), regs);
        assert_eq!(regs.to_words()[(pt_regs::RIP / 8) as usize], 7);
    }
}
