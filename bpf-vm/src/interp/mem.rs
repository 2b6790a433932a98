//! Guest memory: the stack, the context and embedder regions, and the two
//! access policies (checked and fast).
//!
//! BPF addresses are host addresses: `r10` points into a host buffer, `r1`
//! at the host context. In **checked** mode every access is looked up in the
//! list of legal regions (built from borrowed slices, so each one is valid
//! memory for the whole run) and reads of stack bytes never written in the
//! current frame are reported. In **fast** mode accesses go straight to the
//! address; the caller of [`super::Vm::run_fast`] promises the program was
//! verified, which is what makes that sound.
//!
//! This file and the run loop are the crate's only `unsafe` code.

use alloc::vec;
use alloc::vec::Vec;
use core::marker::PhantomData;

use super::{HelperError, RunErrorKind};
use crate::insn::STACK_SIZE;

/// Maximum bpf-to-bpf call depth, counting the entry frame (Linux's value).
pub const MAX_CALL_FRAMES: usize = 8;

/// A memory region the program may access in checked mode.
#[derive(Debug)]
pub struct MemRegion<'a> {
    start: u64,
    len: u64,
    writable: bool,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> MemRegion<'a> {
    /// A region the program may read but not write.
    pub fn readonly(mem: &'a [u8]) -> MemRegion<'a> {
        MemRegion {
            start: mem.as_ptr() as u64,
            len: mem.len() as u64,
            writable: false,
            _borrow: PhantomData,
        }
    }

    /// A region the program may read and write.
    pub fn writable(mem: &'a mut [u8]) -> MemRegion<'a> {
        MemRegion {
            start: mem.as_mut_ptr() as u64,
            len: mem.len() as u64,
            writable: true,
            _borrow: PhantomData,
        }
    }

    /// Start address, as the program sees it.
    pub fn addr(&self) -> u64 {
        self.start
    }

    /// Length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Whether the program may write it.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub start: u64,
    pub len: u64,
    pub writable: bool,
}

/// Guest memory state for one run.
pub(crate) struct Memory {
    /// Stack of all frames: frame `i` is `[base + i*512, base + (i+1)*512)`.
    /// Held as `u64`s so that it is 8-byte aligned (atomics need it).
    pub stack: Vec<u64>,
    /// Per stack byte: written since its frame was entered (checked mode only).
    pub init: Vec<bool>,
    /// Number of live frames (bytes above `depth * 512` are dead).
    pub depth: usize,
    /// Context, embedder and helper-provided regions (checked mode only).
    pub regions: Vec<Region>,
    pub checked: bool,
    /// Address of `stack[0]`, taken through a mutable borrow so that the
    /// program may write through it.
    base: u64,
}

impl Memory {
    pub fn new() -> Memory {
        let mut stack = vec![0u64; STACK_SIZE * MAX_CALL_FRAMES / 8];
        let base = stack.as_mut_ptr() as u64;
        Memory {
            base,
            stack,
            init: vec![false; STACK_SIZE * MAX_CALL_FRAMES],
            depth: 1,
            regions: Vec::new(),
            checked: false,
        }
    }

    pub fn stack_base(&self) -> u64 {
        self.base
    }

    /// Re-derives the stack address from a fresh mutable borrow (at the
    /// start of each run, so no shared borrow of the buffer precedes the
    /// program's writes).
    pub fn reset(&mut self) {
        self.base = self.stack.as_mut_ptr() as u64;
    }

    /// `r10` of frame `frame` (0-based).
    pub fn frame_pointer(&self, frame: usize) -> u64 {
        self.stack_base() + ((frame + 1) * STACK_SIZE) as u64
    }

    /// Marks the stack of frame `frame` as unwritten (on entry to it).
    pub fn enter_frame(&mut self, frame: usize) {
        self.depth = frame + 1;
        if self.checked {
            let s = frame * STACK_SIZE;
            self.init[s..s + STACK_SIZE].fill(false);
        }
    }

    /// Checks that `[addr, addr+len)` is legal to read (or write) in checked
    /// mode, updating or checking stack initialisation. Fast mode: no-op.
    #[inline(always)]
    pub fn check(&mut self, addr: u64, len: u64, write: bool) -> Result<(), RunErrorKind> {
        if !self.checked {
            return Ok(());
        }
        self.check_slow(addr, len, write)
    }

    fn check_slow(&mut self, addr: u64, len: u64, write: bool) -> Result<(), RunErrorKind> {
        let oob = RunErrorKind::OutOfBounds { addr, len, write };
        let end = addr.checked_add(len).ok_or(oob)?;
        let base = self.stack_base();
        let live_end = base + (self.depth * STACK_SIZE) as u64;
        if addr >= base && end <= live_end {
            let (s, e) = ((addr - base) as usize, (end - base) as usize);
            if write {
                self.init[s..e].fill(true);
            } else if let Some(i) = self.init[s..e].iter().position(|b| !b) {
                return Err(RunErrorKind::UninitStackRead {
                    addr: addr + i as u64,
                });
            }
            return Ok(());
        }
        for r in &self.regions {
            if addr >= r.start && end - r.start <= r.len {
                if write && !r.writable {
                    return Err(RunErrorKind::ReadOnly { addr, len });
                }
                return Ok(());
            }
        }
        Err(oob)
    }

    /// Reads `N` bytes at `addr` (after [`Memory::check`]).
    ///
    /// # Safety
    /// `addr..addr+N` must be readable host memory: guaranteed by a passed
    /// check in checked mode, by the verifier contract of `run_fast` otherwise.
    #[inline(always)]
    pub unsafe fn read<const N: usize>(addr: u64) -> [u8; N] {
        // SAFETY: the caller guarantees the range is valid; unaligned reads
        // are fine since BPF has no alignment requirement we enforce.
        unsafe { core::ptr::read_unaligned(addr as *const [u8; N]) }
    }

    /// Writes `N` bytes at `addr` (after [`Memory::check`]).
    ///
    /// # Safety
    /// As [`Memory::read`], for writing.
    #[inline(always)]
    pub unsafe fn write<const N: usize>(addr: u64, v: [u8; N]) {
        // SAFETY: the caller guarantees the range is valid and writable.
        unsafe { core::ptr::write_unaligned(addr as *mut [u8; N], v) }
    }
}

/// What a helper gets to reach guest memory: reads and writes go through the
/// same checks as the program's own accesses in checked mode.
pub struct HelperMem<'m> {
    /// The run's memory in checked mode; `None` in fast mode, where every
    /// check passes and `allow` records nothing, so nothing of the memory
    /// is needed (and a JIT trampoline builds none per helper call).
    mem: Option<&'m mut Memory>,
}

impl<'m> HelperMem<'m> {
    /// The helpers' view of an interpreter run's memory.
    #[inline]
    pub(crate) fn of(mem: &'m mut Memory) -> HelperMem<'m> {
        HelperMem {
            mem: if mem.checked { Some(mem) } else { None },
        }
    }

    /// Checks a helper's access in checked mode.
    #[inline]
    fn check(&mut self, addr: u64, len: u64, write: bool) -> Result<(), RunErrorKind> {
        match self.mem.as_deref_mut() {
            Some(m) => m.check(addr, len, write),
            None => Ok(()),
        }
    }
}

impl HelperMem<'_> {
    /// Calls `f` with a fast-mode [`HelperMem`] (no checks, [`HelperMem::allow`]
    /// does nothing), so that [`crate::interp::Helpers`] implementations can
    /// serve programs running outside the interpreter, i.e. JIT-compiled code.
    ///
    /// # Safety
    /// Only on behalf of a program the verifier accepted, running under the
    /// contract of [`crate::interp::Vm::run_fast`]: its helper pointer
    /// arguments point at the bytes the helper reads or writes.
    #[inline]
    pub unsafe fn with_unchecked<R>(f: impl FnOnce(&mut HelperMem<'_>) -> R) -> R {
        f(&mut HelperMem { mem: None })
    }

    /// Whether the run is in checked mode.
    pub fn is_checked(&self) -> bool {
        self.mem.is_some()
    }

    /// Borrows `len` guest bytes at `addr` (e.g. a map key on the stack).
    #[inline]
    pub fn read(&mut self, addr: u64, len: usize) -> Result<&[u8], HelperError> {
        self.check(addr, len as u64, false)
            .map_err(|_| HelperError::BadPointer { addr, len })?;
        if len == 0 {
            return Ok(&[]);
        }
        // SAFETY: in checked mode the range lies inside the live stack or a
        // region built from a borrowed slice that outlives the run; in fast
        // mode the verifier contract of `run_fast` guarantees helper
        // arguments point at `len` valid bytes. The borrow of `self` keeps
        // the interpreter from writing while the slice lives.
        Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }

    /// Borrows two guest ranges at once, e.g. the key and the value of a
    /// map update, so a helper need not copy one aside first.
    #[inline]
    pub fn read_pair(
        &mut self,
        a: (u64, usize),
        b: (u64, usize),
    ) -> Result<(&[u8], &[u8]), HelperError> {
        for (addr, len) in [a, b] {
            self.check(addr, len as u64, false)
                .map_err(|_| HelperError::BadPointer { addr, len })?;
        }
        let (ra, rb) = self.read_unchecked_pair(a, b);
        Ok((ra, rb))
    }

    fn read_unchecked_pair(&self, a: (u64, usize), b: (u64, usize)) -> (&[u8], &[u8]) {
        let slice = |(addr, len): (u64, usize)| {
            if len == 0 {
                return &[][..];
            }
            // SAFETY: as in `read` (the caller checked both ranges); both
            // are only read, so two shared borrows under the one borrow of
            // `self` are fine.
            unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
        };
        (slice(a), slice(b))
    }

    /// Copies `data` into guest memory at `addr`.
    #[inline]
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), HelperError> {
        self.check(addr, data.len() as u64, true)
            .map_err(|_| HelperError::BadPointer {
                addr,
                len: data.len(),
            })?;
        // SAFETY: as in `read`, for a writable range; `data` is host memory
        // the helper owns, so the ranges cannot overlap a live `&mut`.
        unsafe { core::ptr::copy(data.as_ptr(), addr as *mut u8, data.len()) };
        Ok(())
    }

    /// Declares `[addr, addr+len)` legal for the rest of the run (checked mode),
    /// e.g. a map value whose address a helper returns. No-op in fast mode.
    ///
    /// # Safety
    /// The range must be valid host memory (writable if `writable`) for the
    /// rest of the run and not otherwise accessed through a Rust reference
    /// while the program may touch it.
    #[inline]
    pub unsafe fn allow(&mut self, addr: u64, len: u64, writable: bool) {
        if let Some(mem) = self.mem.as_deref_mut() {
            let r = Region {
                start: addr,
                len,
                writable,
            };
            // Helpers typically allow the same map value again and again.
            let known = mem
                .regions
                .iter()
                .any(|k| k.start == r.start && k.len == r.len && k.writable == r.writable);
            if !known {
                mem.regions.push(r);
            }
        }
    }
}
