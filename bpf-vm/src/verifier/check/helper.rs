//! Helper calls: the helper exists and the program type may call it, each
//! argument has the kind its prototype lists (maps, keys and values, memory
//! with its size, the context, ring buffer records), references are
//! acquired and released, and r0 gets the type the prototype returns.

use super::{Checker, Dir, R};
use crate::verifier::error::Rule;
use crate::verifier::linux::map_type;
use crate::verifier::platform::{ArgKind, HelperProto, RetKind};
use crate::verifier::scalar::Scalar;
use crate::verifier::state::{ByteState, PtrKind, RefState, Reg, RegType, Slot, State};
use alloc::format;
use alloc::string::String;

/// Largest size a helper memory argument may have.
const MAX_MEM_SIZE: u64 = 1 << 29;

/// What the arguments checked so far tell the later ones and the return
/// value.
#[derive(Default)]
struct Args {
    /// The map of a `ConstMapPtr` argument.
    map: Option<u32>,
    /// A memory argument waiting for its size argument.
    mem: Option<(u8, Reg, Dir)>,
    /// The size of a `ConstAllocSize` argument.
    alloc_size: u32,
    /// The reference a release helper gives back.
    release: Option<u32>,
    /// The `PtrToMapKey` argument.
    key: Option<Reg>,
}

impl Checker<'_> {
    pub(super) fn call_helper(&mut self, st: &mut State, pc: usize, id: i32) -> R<()> {
        let Some(proto) = self.env.helpers.get(id) else {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::HelperNotAllowed,
                format!("invalid func unknown#{id}"),
            ));
        };
        let name = proto.name.as_str();
        if !self.env.prog_type.allowed_helpers.contains(&id) {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::HelperNotAllowed,
                format!(
                    "program of this type ({}) cannot use helper {name}#{id}",
                    self.env.prog_type.name
                ),
            ));
        }
        let mut args = Args::default();
        for i in 0..proto.args.len().min(5) {
            self.helper_arg(st, pc, proto, i, &mut args)?;
        }
        if let Some((mregno, ..)) = args.mem {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Internal,
                format!(
                    "helper prototype of {name}: memory argument R{mregno} has no size argument"
                ),
            ));
        }
        if let Some(rid) = args.release {
            self.release_ref(st, pc, rid)?;
        }
        let cur = st.cur_mut();
        for r in &mut cur.regs[1..6] {
            *r = Reg::NOT_INIT;
        }
        let r0 = self.helper_return(st, pc, proto, &args)?;
        Self::set(st, 0, r0);
        Ok(())
    }

    /// Checks argument `i` (register `i + 1`) against the kind the
    /// prototype lists, noting in `args` what later arguments and the
    /// return value need.
    fn helper_arg(
        &mut self,
        st: &mut State,
        pc: usize,
        proto: &HelperProto,
        i: usize,
        args: &mut Args,
    ) -> R<()> {
        let (id, name, kind) = (proto.id, proto.name.as_str(), proto.args[i]);
        let leaks = self.cfg.allow_ptr_leaks;
        let regno = (i + 1) as u8;
        let reg = st.cur().regs[regno as usize];
        let e = |this: &Self, st: &State, rule: Rule, msg: String| {
            Err(this.err_at(pc, Some(st), rule, msg))
        };
        if kind == ArgKind::ScalarOrUninit {
            if reg.is_ptr() && !leaks {
                return e(
                    self,
                    st,
                    Rule::PointerLeak,
                    format!("R{regno} leaks addr into helper function {name}"),
                );
            }
            return Ok(());
        }
        if !reg.is_init() {
            return e(
                self,
                st,
                Rule::UninitRegister,
                format!("R{regno} !read_ok: argument {} of {name} is not set", i + 1),
            );
        }
        let expect = |this: &Self, st: &State, want: &str| {
            e(
                this,
                st,
                Rule::HelperArgument,
                format!(
                    "R{regno} type={} expected={want} (argument {} of {name})",
                    reg.type_name(),
                    i + 1
                ),
            )
        };
        match kind {
            ArgKind::ScalarOrUninit | ArgKind::UnsafePtr => {}
            ArgKind::Anything => {
                if reg.is_ptr() && !leaks {
                    return e(
                        self,
                        st,
                        Rule::PointerLeak,
                        format!("R{regno} leaks addr into helper function {name}"),
                    );
                }
            }
            ArgKind::ConstMapPtr => {
                let Some((PtrKind::MapPtr { map: m }, _)) = reg.ptr_kind() else {
                    return expect(self, st, "map_ptr");
                };
                let mt = self.env.maps.get(m as usize).map_or(0, |d| d.map_type);
                if !proto.map_types.is_empty() && !proto.map_types.contains(&mt) {
                    return e(
                        self,
                        st,
                        Rule::HelperArgument,
                        format!("cannot pass map_type {mt} into func {name}#{id}"),
                    );
                }
                args.map = Some(m);
                let seen = &mut self.call_map[pc];
                *seen = match *seen {
                    super::CALL_MAP_NONE => m,
                    s if s == m => m,
                    _ => super::CALL_MAP_MANY,
                };
            }
            ArgKind::PtrToMapKey | ArgKind::PtrToMapValue => {
                let Some(m) = args.map.and_then(|m| self.env.maps.get(m as usize)) else {
                    return e(self, st, Rule::Internal, format!("helper prototype of {name}: map key/value argument without a map argument before it"));
                };
                let n = if kind == ArgKind::PtrToMapKey {
                    args.key = Some(reg);
                    m.key_size
                } else {
                    m.value_size
                } as u64;
                self.helper_mem(st, pc, regno, &reg, n, n, Dir::Read, name)?;
            }
            ArgKind::PtrToMem => args.mem = Some((regno, reg, Dir::Read)),
            ArgKind::PtrToUninitMem => args.mem = Some((regno, reg, Dir::Write)),
            ArgKind::ConstSize | ArgKind::ConstSizeOrZero => {
                let Some((mregno, mreg, dir)) = args.mem.take() else {
                    return e(self, st, Rule::Internal, format!("helper prototype of {name}: size argument without a memory argument before it"));
                };
                if !reg.is_scalar() {
                    return expect(self, st, "scalar");
                }
                let s = reg.val;
                self.need_precise = true;
                if s.smin < 0 {
                    return e(
                        self,
                        st,
                        Rule::HelperArgument,
                        format!(
                            "R{regno} min value is negative, either use unsigned or 'var &= const'"
                        ),
                    );
                }
                if s.umax > MAX_MEM_SIZE {
                    return e(self, st, Rule::HelperArgument, format!("R{regno} unbounded memory access, use 'var &= const' or 'if (var < const)'"));
                }
                if s.umin == 0 && kind == ArgKind::ConstSize {
                    return e(
                        self,
                        st,
                        Rule::HelperArgument,
                        format!(
                            "R{regno} invalid zero-sized read: the size passed to {name} may be 0"
                        ),
                    );
                }
                if s.umax > 0 {
                    self.helper_mem(st, pc, mregno, &mreg, s.umax, s.umin, dir, name)?;
                }
            }
            ArgKind::PtrToCtx => {
                let Some((PtrKind::Ctx, _)) = reg.ptr_kind() else {
                    return expect(self, st, "ctx");
                };
                if reg.off != 0 || reg.val.as_const() != Some(0) {
                    return e(self, st, Rule::HelperArgument, format!("dereference of modified ctx ptr R{regno} off={} disallowed: pass the context unchanged", reg.off));
                }
            }
            ArgKind::ConstAllocSize => {
                self.need_precise = true;
                let c = reg.val.as_const().filter(|_| reg.is_scalar());
                match c {
                    Some(c) if c > 0 && c <= MAX_MEM_SIZE => args.alloc_size = c as u32,
                    Some(c) => return e(self, st, Rule::HelperArgument, format!("R{regno} size {c} for {name} must be between 1 and {MAX_MEM_SIZE}")),
                    None => return e(self, st, Rule::HelperArgument, format!("R{regno} is not a known constant: the size passed to {name} must be a constant")),
                }
            }
            ArgKind::PtrToAllocMem => {
                let (PtrKind::Mem { ref_id, .. }, false) =
                    reg.ptr_kind().unwrap_or((PtrKind::Ctx, true))
                else {
                    let want = if reg.ptr_kind().is_some_and(|(_, n)| n) {
                        "non-NULL ringbuf record (check the result of bpf_ringbuf_reserve against NULL first)"
                    } else {
                        "ringbuf record from bpf_ringbuf_reserve"
                    };
                    return expect(self, st, want);
                };
                if ref_id == 0 {
                    return expect(self, st, "ringbuf record from bpf_ringbuf_reserve");
                }
                if reg.off != 0 || reg.val.as_const() != Some(0) {
                    return e(
                        self,
                        st,
                        Rule::Reference,
                        format!(
                            "R{regno} must have zero offset when passed to release func {name}"
                        ),
                    );
                }
                args.release = Some(ref_id);
            }
        }
        Ok(())
    }

    /// Releases reference `rid`: every copy of the record, in registers or
    /// spilled, becomes unreadable.
    fn release_ref(&self, st: &mut State, pc: usize, rid: u32) -> R<()> {
        let Some(pos) = st.refs.iter().position(|r| r.id == rid) else {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Reference,
                format!("release of unacquired reference id={rid}"),
            ));
        };
        st.refs.remove(pos);
        st.for_each_reg(|r| {
            if let Some((PtrKind::Mem { ref_id, .. }, _)) = r.ptr_kind() {
                if ref_id == rid {
                    *r = Reg::NOT_INIT;
                }
            }
        });
        // Spilled copies of the record become unreadable.
        for f in &mut st.frames {
            for s in &mut f.stack {
                if s.is_spill() && !s.spill.is_init() {
                    *s = Slot::INVALID;
                }
            }
        }
        Ok(())
    }

    /// The register r0 holds after the call, as the prototype returns it.
    fn helper_return(
        &mut self,
        st: &mut State,
        pc: usize,
        proto: &HelperProto,
        args: &Args,
    ) -> R<Reg> {
        let name = proto.name.as_str();
        let r0 = match proto.ret {
            RetKind::Integer | RetKind::Void => Reg::unknown(),
            RetKind::MapValueOrNull => {
                let Some(m) = args.map else {
                    return Err(self.err_at(pc, Some(st), Rule::Internal, format!("helper prototype of {name}: returns a map value but has no map argument")));
                };
                // Like Linux (6.13+), a lookup in an array with a constant
                // key in range cannot fail: its value pointer is not NULL.
                let def = self.env.maps.get(m as usize).copied();
                let in_range = match (def, args.key) {
                    (Some(d), Some(k))
                        if matches!(d.map_type, map_type::ARRAY | map_type::PERCPU_ARRAY) =>
                    {
                        let c = constant_key(st, &k, d.key_size);
                        if c.is_some() {
                            // The verdict now depends on the key's value.
                            self.need_precise = true;
                        }
                        c.is_some_and(|c| c < u64::from(d.max_entries))
                    }
                    _ => false,
                };
                let id = st.new_id();
                Reg {
                    ty: RegType::Ptr {
                        kind: PtrKind::MapValue { map: m },
                        nullable: !in_range,
                    },
                    off: 0,
                    id,
                    val: Scalar::constant(0),
                }
            }
            RetKind::AllocMemOrNull => {
                let id = st.new_id();
                st.refs.push(RefState { id, insn: pc });
                Reg {
                    ty: RegType::Ptr {
                        kind: PtrKind::Mem {
                            size: args.alloc_size,
                            ref_id: id,
                        },
                        nullable: true,
                    },
                    off: 0,
                    id,
                    val: Scalar::constant(0),
                }
            }
        };
        Ok(r0)
    }

    /// Checks a helper's memory argument of up to `size` bytes; for writes
    /// into the stack, marks the first `min_size` bytes (those the helper
    /// surely writes) initialised.
    #[allow(clippy::too_many_arguments)]
    fn helper_mem(
        &mut self,
        st: &mut State,
        pc: usize,
        regno: u8,
        reg: &Reg,
        size: u64,
        min_size: u64,
        dir: Dir,
        name: &str,
    ) -> R<()> {
        match reg.ptr_kind() {
            Some((PtrKind::Stack { .. } | PtrKind::MapValue { .. } | PtrKind::Mem { .. }, _)) => {}
            _ => {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::HelperArgument,
                    format!(
                    "R{regno} type={} expected=fp, map_value, mem (a pointer to memory for {name})",
                    reg.type_name()
                ),
                ))
            }
        }
        let (kind, lo, hi) = self.check_access_bytes(st, pc, regno, reg, size, dir)?;
        let PtrKind::Stack { frame } = kind else {
            return Ok(());
        };
        let frame = frame as usize;
        let leaks = self.cfg.allow_ptr_leaks;
        let end = hi + size as i64;
        let sure = lo + min_size.min(size) as i64;
        match dir {
            Dir::Read => {
                for o in lo..end {
                    let (s, b) = st.frames[frame].byte(o);
                    if s.is_ptr_spill() && !leaks {
                        return Err(self.err_at(
                            pc,
                            Some(st),
                            Rule::PointerLeak,
                            format!("invalid indirect read from stack R{regno} off {lo}+{} size {size}: the pointer spilled at fp{} would leak through {name}", o - lo, o - b as i64),
                        ));
                    }
                    if s.bytes[b] == ByteState::Invalid && !self.cfg.allow_uninit_stack {
                        return Err(self.err_at(
                            pc,
                            Some(st),
                            Rule::UninitStack,
                            format!("invalid indirect read from stack R{regno} off {lo}+{} size {size}: fp{o} is not initialised before the call to {name}", o - lo),
                        ));
                    }
                }
            }
            Dir::Write => {
                if lo != hi {
                    // Which bytes get written is unknown: nothing becomes
                    // initialised, but spilled pointers could be corrupted.
                    for o in lo..end {
                        let (s, b) = st.frames[frame].byte(o);
                        if s.is_ptr_spill() && !leaks {
                            return Err(self.err_at(pc, Some(st), Rule::PointerLeak, format!("variable-offset stack write may corrupt the pointer spilled at fp{}", o - b as i64)));
                        }
                    }
                    return Ok(());
                }
                for o in lo..end {
                    let (s, b) = st.frames[frame].byte(o);
                    // A size known only as a range writes a prefix of
                    // unknown length: only [lo, sure) is surely written.
                    let slot_start = o - b as i64;
                    let partial = slot_start < lo || slot_start + 8 > sure;
                    if s.is_ptr_spill() && !leaks && partial {
                        return Err(self.err_at(
                            pc,
                            Some(st),
                            Rule::PointerLeak,
                            format!(
                                "attempt to corrupt spilled pointer on stack at fp{}",
                                o - b as i64
                            ),
                        ));
                    }
                }
                for o in lo..end {
                    let (slot, b) = st.frames[frame].byte_mut(o);
                    if slot.is_spill() {
                        *slot = Slot {
                            bytes: [ByteState::Misc; 8],
                            spill: Reg::NOT_INIT,
                            narrow_const: None,
                        };
                    }
                    if o < sure || slot.bytes[b] == ByteState::Zero {
                        slot.bytes[b] = ByteState::Misc;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The value of the map key `key` points to, when the stack holds a known
/// constant there: bytes all known zero, or a narrow store of a constant
/// of exactly the key's size at a slot's start (what Linux's
/// `get_constant_map_key` accepts). `None` otherwise.
fn constant_key(st: &State, key: &Reg, key_size: u32) -> Option<u64> {
    let Some((PtrKind::Stack { frame }, false)) = key.ptr_kind() else {
        return None;
    };
    let off = (key.off as i64).checked_add(key.val.as_const()? as i64)?;
    let (slot, b) = st.frames.get(frame as usize)?.byte(off);
    let n = key_size as usize;
    if n == 0 || b + n > 8 {
        return None;
    }
    if slot.bytes[b..b + n].iter().all(|&x| x == ByteState::Zero) {
        return Some(0);
    }
    match slot.narrow_const {
        Some((size, c)) if b == 0 && size as usize == n => Some(c),
        _ => None,
    }
}
