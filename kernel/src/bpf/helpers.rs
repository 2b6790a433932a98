//! BPF helpers, by Linux id, as the interpreter calls them.
//!
//! Every helper runs in probe context: no allocation, no blocking, locks
//! only with the program policy of `kmap` (fail on same-CPU recursion,
//! wait a bounded time for another CPU): `KMap::prog_lock` for stack trace
//! maps, a hash map's bucket locks for its updates and deletes. Array and
//! hash lookups, ring buffers and perf event arrays take no map lock. Failures a program can
//! handle come back as negative errnos in r0 (`-EFAULT` for an unreadable
//! address, `-EBUSY` when a map stays locked); only a malformed call the
//! verifier should have made impossible aborts the run (counted as a
//! fault).

use bpf_vm::interp::{HelperError, HelperMem};
use bpf_vm::verifier::linux::helper as id;
use bpf_vm::Helpers;
use ktrace_bpf_maps::{errno, walk_frame_pointers, Map, MapError, Waiter};

use super::kmap::{prog_wait, KMap};
use super::prog::{HitInfo, Program, MAP_HANDLE};
use crate::arch::trap::copy_from_kernel_nofault;

/// The state helpers see during one run.
pub struct RunEnv<'a> {
    pub prog: &'a Program,
    pub cpu: usize,
    pub hit: HitInfo,
}

fn neg(e: i32) -> u64 {
    (-(e as i64)) as u64
}

fn map_err(e: MapError) -> u64 {
    e.errno() as i64 as u64
}

/// Bytes copied per step by the probe-read helpers (a stack buffer).
const CHUNK: usize = 256;

impl RunEnv<'_> {
    fn map(&self, handle: u64) -> Result<&KMap, HelperError> {
        if handle & !0xffff != MAP_HANDLE {
            return Err(HelperError::Failed("argument is not a map"));
        }
        self.prog
            .maps
            .get((handle & 0xffff) as usize)
            .map(|m| &**m)
            .ok_or(HelperError::Failed("no such map"))
    }

    /// `bpf_map_lookup_elem`: the value's address, or 0. It has no error
    /// to report (the platform table declares it never aborts a run, and
    /// the JIT leaves out the error test after it): an argument the
    /// verifier would have refused (not a map, an unreadable key) finds
    /// nothing.
    fn lookup(&self, mem: &mut HelperMem<'_>, a: [u64; 5]) -> u64 {
        let Ok(m) = self.map(a[0]) else {
            return 0;
        };
        let Ok(key) = mem.read(a[1], m.spec.key_size as usize) else {
            return 0;
        };
        if let Some(array) = m.array() {
            let Ok(index) = <[u8; 4]>::try_from(key) else {
                return 0;
            };
            return array
                .value_addr(u32::from_le_bytes(index), self.cpu)
                .unwrap_or(0);
        }
        if let Some(h) = m.hash() {
            let mut wait = prog_wait();
            let mut w = Waiter::on_cpu(self.cpu, &mut wait);
            return match h.value_addr_on(key, self.cpu, &mut w) {
                Ok(addr) => addr.unwrap_or(0),
                Err(e) => {
                    busy(m, e);
                    0
                }
            };
        }
        let Some(mut inner) = m.prog_lock(self.cpu) else {
            return 0;
        };
        inner.value_addr(key, self.cpu).unwrap_or(0)
    }

    fn update(&self, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
        let m = self.map(a[0])?;
        if m.read_only {
            return Ok(neg(errno::EINVAL));
        }
        // Both borrowed in place: a stack copy of the key would cost a
        // `MAX_KEY_SIZE` memset and a copy on every update.
        let (key, value) = mem.read_pair(
            (a[1], m.spec.key_size as usize),
            (a[2], m.spec.value_size as usize),
        )?;
        let r = if let Some(h) = m.hash() {
            let mut wait = prog_wait();
            let mut w = Waiter::on_cpu(self.cpu, &mut wait);
            h.update_on(key, value, a[3], Some(self.cpu), &mut w)
        } else {
            let Some(mut inner) = m.prog_lock(self.cpu) else {
                return Ok(neg(errno::EBUSY));
            };
            inner.prog_update(key, value, a[3], self.cpu)
        };
        Ok(match r {
            Ok(()) => 0,
            Err(e) => {
                busy(m, e);
                map_err(e)
            }
        })
    }

    fn delete(&self, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
        let m = self.map(a[0])?;
        let key = mem.read(a[1], m.spec.key_size as usize)?;
        let r = if let Some(h) = m.hash() {
            let mut wait = prog_wait();
            let mut w = Waiter::on_cpu(self.cpu, &mut wait);
            h.delete_on(key, &mut w)
        } else {
            let Some(mut inner) = m.prog_lock(self.cpu) else {
                return Ok(neg(errno::EBUSY));
            };
            inner.delete(key)
        };
        Ok(match r {
            Ok(()) => 0,
            Err(e) => {
                busy(m, e);
                map_err(e)
            }
        })
    }

    /// `probe_read_kernel(dst, size, src)`: on a fault the destination is
    /// zeroed and -EFAULT returned.
    fn probe_read(&self, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
        let (dst, size, src) = (a[0], a[1] as usize, a[2]);
        let mut buf = [0u8; CHUNK];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(CHUNK);
            if copy_from_kernel_nofault(&mut buf[..n], src.wrapping_add(off as u64)).is_err() {
                zero(mem, dst, size)?;
                return Ok(neg(errno::EFAULT));
            }
            mem.write(dst + off as u64, &buf[..n])?;
            off += n;
        }
        Ok(0)
    }

    /// `probe_read_kernel_str(dst, size, src)`: copies up to the NUL (kept)
    /// or `size - 1` bytes plus a NUL; returns the length with the NUL.
    fn probe_read_str(&self, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
        let (dst, size, src) = (a[0], a[1] as usize, a[2]);
        if size == 0 {
            return Ok(0);
        }
        let mut buf = [0u8; CHUNK];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(CHUNK);
            let chunk = &mut buf[..n];
            // A string may end just before an unmapped page: on a fault,
            // retry the chunk byte by byte and stop at the first bad byte.
            let got = match copy_from_kernel_nofault(chunk, src.wrapping_add(off as u64)) {
                Ok(()) => n,
                Err(()) => match bytewise_until_nul(chunk, src.wrapping_add(off as u64)) {
                    Some(k) => k,
                    None => {
                        zero(mem, dst, size)?;
                        return Ok(neg(errno::EFAULT));
                    }
                },
            };
            if let Some(z) = chunk[..got].iter().position(|&b| b == 0) {
                mem.write(dst + off as u64, &chunk[..=z])?;
                return Ok((off + z + 1) as u64);
            }
            if off + got >= size {
                // Truncate: the last byte becomes the NUL.
                chunk[got - 1] = 0;
                mem.write(dst + off as u64, &chunk[..got])?;
                return Ok(size as u64);
            }
            mem.write(dst + off as u64, &chunk[..got])?;
            off += got;
        }
        Ok(size as u64)
    }

    fn get_current_comm(&self, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
        let size = a[1] as usize;
        if size == 0 {
            return Ok(neg(errno::EINVAL));
        }
        let comm = crate::percpu::this_cpu().current_comm();
        let mut out = [0u8; 16];
        let n = size.min(16);
        out[..n].copy_from_slice(&comm[..n]);
        out[n - 1] = 0;
        zero(mem, a[0], size)?;
        mem.write(a[0], &out[..n])?;
        Ok(0)
    }

    fn perf_event_output(&self, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
        let m = self.map(a[1])?;
        let data = mem.read(a[3], a[4] as usize)?;
        let Some(p) = m.perf() else {
            return Ok(neg(errno::EINVAL));
        };
        let r = p.output(a[2], self.cpu, data);
        super::events::kick();
        Ok(match r {
            Ok(()) => 0,
            Err(e) => map_err(e),
        })
    }

    fn ringbuf_output(&self, mem: &mut HelperMem<'_>, a: [u64; 5]) -> Result<u64, HelperError> {
        let m = self.map(a[0])?;
        let data = mem.read(a[1], a[2] as usize)?;
        let Some(r) = m.ring() else {
            return Ok(neg(errno::EINVAL));
        };
        let res = r.output(data, a[3], self.cpu);
        super::events::kick();
        Ok(match res {
            Ok(()) => 0,
            Err(e) => map_err(e),
        })
    }

    fn ringbuf_reserve(&self, a: [u64; 5]) -> Result<u64, HelperError> {
        let m = self.map(a[0])?;
        if a[2] != 0 {
            return Ok(0);
        }
        let Some(r) = m.ring() else {
            return Ok(0);
        };
        Ok(r.reserve(a[1] as usize, self.cpu).unwrap_or(0))
    }

    /// Submit or discard: the record is in one of the program's ring
    /// buffers. Lock-free (the ring's commit is one compare-exchange of the
    /// record's header).
    fn ringbuf_commit(&self, a: [u64; 5], discard: bool) -> Result<u64, HelperError> {
        for r in self.prog.maps.iter().filter_map(|m| m.ring()) {
            if r.commit(a[0], discard, a[1]).is_ok() {
                if !discard {
                    super::events::kick();
                }
                return Ok(0);
            }
        }
        Err(HelperError::Failed(
            "pointer is not a reserved ring buffer record",
        ))
    }

    fn get_stackid(&self, a: [u64; 5]) -> Result<u64, HelperError> {
        let m = self.map(a[1])?;
        let mut ips = [0u64; ktrace_bpf_maps::MAX_STACK_DEPTH as usize];
        let n = walk_frame_pointers(self.hit.rip, self.hit.rbp, &mut ips, |addr| {
            let mut b = [0u8; 8];
            copy_from_kernel_nofault(&mut b, addr)
                .ok()
                .map(|()| u64::from_le_bytes(b))
        });
        let Some(mut inner) = m.prog_lock(self.cpu) else {
            return Ok(neg(errno::EBUSY));
        };
        let Map::StackTrace(s) = &mut *inner else {
            return Ok(neg(errno::EINVAL));
        };
        Ok(match s.get_stackid(&ips[..n], a[2]) {
            Ok(id) => u64::from(id),
            Err(e) => map_err(e),
        })
    }
}

/// Counts a hash operation that gave up on a lock (`MapInfo::busy`).
fn busy(m: &KMap, e: MapError) {
    if e == MapError::Busy {
        m.count_busy();
    }
}

/// After a chunk read faulted: reads byte by byte, as a string may end
/// just before an unmapped page. Returns the bytes read up to and including
/// a NUL, or `None` if a byte faulted before any NUL.
fn bytewise_until_nul(chunk: &mut [u8], src: u64) -> Option<usize> {
    for k in 0..chunk.len() {
        copy_from_kernel_nofault(&mut chunk[k..k + 1], src.wrapping_add(k as u64)).ok()?;
        if chunk[k] == 0 {
            return Some(k + 1);
        }
    }
    Some(chunk.len())
}

fn zero(mem: &mut HelperMem<'_>, dst: u64, size: usize) -> Result<(), HelperError> {
    let z = [0u8; CHUNK];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(CHUNK);
        mem.write(dst + off as u64, &z[..n])?;
        off += n;
    }
    Ok(())
}

impl Helpers for RunEnv<'_> {
    // Inlined into each caller: the JIT's trampolines pass a constant id
    // (one trampoline per helper), so each keeps only its own arm instead
    // of dispatching on the id at every call; the interpreter's one call
    // site keeps the match.
    #[inline(always)]
    fn call(
        &mut self,
        helper: u32,
        a: [u64; 5],
        mem: &mut HelperMem<'_>,
    ) -> Result<u64, HelperError> {
        match helper as i32 {
            // The helpers the platform table declares never abort
            // (`Helper::aborts`) are `Ok` here with no error path.
            id::MAP_LOOKUP_ELEM => Ok(self.lookup(mem, a)),
            id::MAP_UPDATE_ELEM => self.update(mem, a),
            id::MAP_DELETE_ELEM => self.delete(mem, a),
            id::PROBE_READ | id::PROBE_READ_KERNEL => self.probe_read(mem, a),
            id::PROBE_READ_STR | id::PROBE_READ_KERNEL_STR => self.probe_read_str(mem, a),
            id::KTIME_GET_NS => Ok(crate::time::now_ns()),
            id::TRACE_PRINTK => super::printk::trace_printk(self.prog.id, mem, a),
            id::GET_SMP_PROCESSOR_ID => Ok(self.cpu as u64),
            id::GET_CURRENT_PID_TGID => {
                // Kernel tasks are their own thread group.
                let pid = u64::from(
                    crate::percpu::this_cpu()
                        .current_pid
                        .load(core::sync::atomic::Ordering::Relaxed),
                );
                Ok(pid << 32 | pid)
            }
            id::GET_CURRENT_COMM => self.get_current_comm(mem, a),
            id::PERF_EVENT_OUTPUT => self.perf_event_output(mem, a),
            id::GET_STACKID => self.get_stackid(a),
            id::RINGBUF_OUTPUT => self.ringbuf_output(mem, a),
            id::RINGBUF_RESERVE => self.ringbuf_reserve(a),
            id::RINGBUF_SUBMIT => self.ringbuf_commit(a, false),
            id::RINGBUF_DISCARD => self.ringbuf_commit(a, true),
            id::GET_FUNC_IP => Ok(self.hit.func_ip),
            _ => Err(HelperError::Unknown(helper)),
        }
    }
}
