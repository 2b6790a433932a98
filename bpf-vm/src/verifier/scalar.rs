//! The numeric domain of a scalar register: a [`Tnum`] plus signed and
//! unsigned bounds on the 64-bit value and on its low 32 bits, kept
//! consistent with each other by [`Scalar::sync`].
//!
//! Every transfer function over-approximates: the result contains every value
//! the concrete operation (RFC 9669 semantics) can produce from members of the
//! operands. Conditional jumps refine both operands on both arms
//! ([`refine`]); an arm whose refinement is empty cannot be taken.

use super::tnum::Tnum;
use crate::insn::{AluOp, JmpCond, Width};
use core::cmp::{max, min};
use core::fmt;

/// Abstract value of a scalar: tnum and 64/32-bit signed/unsigned intervals.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scalar {
    /// Known bits.
    pub var_off: Tnum,
    /// Signed 64-bit minimum.
    pub smin: i64,
    /// Signed 64-bit maximum.
    pub smax: i64,
    /// Unsigned 64-bit minimum.
    pub umin: u64,
    /// Unsigned 64-bit maximum.
    pub umax: u64,
    /// Signed minimum of the low 32 bits.
    pub s32_min: i32,
    /// Signed maximum of the low 32 bits.
    pub s32_max: i32,
    /// Unsigned minimum of the low 32 bits.
    pub u32_min: u32,
    /// Unsigned maximum of the low 32 bits.
    pub u32_max: u32,
}

impl Default for Scalar {
    fn default() -> Scalar {
        Scalar::unknown()
    }
}

impl Scalar {
    /// Any 64-bit value.
    pub const fn unknown() -> Scalar {
        Scalar {
            var_off: Tnum::UNKNOWN,
            smin: i64::MIN,
            smax: i64::MAX,
            umin: 0,
            umax: u64::MAX,
            s32_min: i32::MIN,
            s32_max: i32::MAX,
            u32_min: 0,
            u32_max: u32::MAX,
        }
    }

    /// Exactly `v`.
    pub const fn constant(v: u64) -> Scalar {
        Scalar {
            var_off: Tnum::constant(v),
            smin: v as i64,
            smax: v as i64,
            umin: v,
            umax: v,
            s32_min: v as u32 as i32,
            s32_max: v as u32 as i32,
            u32_min: v as u32,
            u32_max: v as u32,
        }
    }

    /// Any value in `[lo, hi]` (unsigned).
    pub fn urange(lo: u64, hi: u64) -> Scalar {
        let mut s = Scalar::unknown();
        s.umin = lo;
        s.umax = hi;
        s.normalized()
    }

    /// Any value in `[lo, hi]` (signed).
    pub fn srange(lo: i64, hi: i64) -> Scalar {
        let mut s = Scalar::unknown();
        s.smin = lo;
        s.smax = hi;
        s.normalized()
    }

    /// A value whose tnum is `t` and bounds follow from it.
    pub fn from_tnum(t: Tnum) -> Scalar {
        let mut s = Scalar::unknown();
        s.var_off = t;
        s.normalized()
    }

    /// The constant, when there is exactly one value.
    pub fn as_const(&self) -> Option<u64> {
        if self.var_off.is_const() {
            Some(self.var_off.value)
        } else if self.umin == self.umax {
            Some(self.umin)
        } else {
            None
        }
    }

    /// The constant of the low 32 bits, when known.
    pub fn as_const32(&self) -> Option<u32> {
        let sub = self.var_off.subreg();
        if sub.is_const() {
            Some(sub.value as u32)
        } else if self.u32_min == self.u32_max {
            Some(self.u32_min)
        } else {
            None
        }
    }

    /// True when `v` may be a value of the scalar.
    pub fn may_be(&self, v: u64) -> bool {
        self.var_off.contains(v)
            && self.umin <= v
            && v <= self.umax
            && self.smin <= v as i64
            && v as i64 <= self.smax
            && self.u32_min <= v as u32
            && v as u32 <= self.u32_max
            && self.s32_min <= v as u32 as i32
            && v as u32 as i32 <= self.s32_max
    }

    /// True when the scalar has no value at all (contradictory facts).
    pub fn is_empty(&self) -> bool {
        self.umin > self.umax
            || self.smin > self.smax
            || self.u32_min > self.u32_max
            || self.s32_min > self.s32_max
            || self.var_off.value & self.var_off.mask != 0
            || self.var_off.umin() > self.umax
            || self.var_off.umax() < self.umin
    }

    /// `sync` on a copy that cannot be empty (falls back to unknown if the
    /// facts contradict, which would be a bug of the caller).
    fn normalized(mut self) -> Scalar {
        if self.sync() {
            self
        } else {
            Scalar::unknown()
        }
    }

    /// Propagates facts between the tnum and the six intervals until they
    /// agree. Returns false when they describe no value.
    pub fn sync(&mut self) -> bool {
        // Each round only shrinks the intervals; three rounds reach the
        // fixpoint in practice, and stopping early is still sound.
        for _ in 0..4 {
            let before = *self;
            if !self.sync_round() {
                return false;
            }
            if *self == before {
                break;
            }
        }
        !self.is_empty()
    }

    fn sync_round(&mut self) -> bool {
        let t = self.var_off;
        // Tnum -> 64-bit bounds.
        self.umin = max(self.umin, t.umin());
        self.umax = min(self.umax, t.umax());
        self.smin = max(self.smin, t.smin());
        self.smax = min(self.smax, t.smax());
        // Tnum -> 32-bit bounds.
        let sub = t.subreg();
        self.u32_min = max(self.u32_min, sub.value as u32);
        self.u32_max = min(self.u32_max, (sub.value | sub.mask) as u32);
        self.s32_min = max(
            self.s32_min,
            (sub.value | (sub.mask & 0x8000_0000)) as u32 as i32,
        );
        self.s32_max = min(
            self.s32_max,
            (sub.value | (sub.mask & 0x7fff_ffff)) as u32 as i32,
        );
        // 32-bit signed <-> unsigned, where the interval does not wrap.
        if (self.u32_min as i32) <= (self.u32_max as i32) {
            self.s32_min = max(self.s32_min, self.u32_min as i32);
            self.s32_max = min(self.s32_max, self.u32_max as i32);
        }
        if self.s32_min >= 0 || self.s32_max < 0 {
            self.u32_min = max(self.u32_min, self.s32_min as u32);
            self.u32_max = min(self.u32_max, self.s32_max as u32);
        }
        // 64-bit signed <-> unsigned.
        if (self.umin as i64) <= (self.umax as i64) {
            self.smin = max(self.smin, self.umin as i64);
            self.smax = min(self.smax, self.umax as i64);
        }
        if self.smin >= 0 || self.smax < 0 {
            self.umin = max(self.umin, self.smin as u64);
            self.umax = min(self.umax, self.smax as u64);
        }
        if self.umin > self.umax || self.smin > self.smax {
            return false;
        }
        // 64 -> 32: within one 4 GiB block the low half is monotone.
        if self.umin >> 32 == self.umax >> 32 {
            self.narrow32(self.umin as u32, self.umax as u32);
        }
        if self.smin >> 32 == self.smax >> 32 {
            self.narrow32(self.smin as u32, self.smax as u32);
        }
        if self.u32_min > self.u32_max || self.s32_min > self.s32_max {
            return false;
        }
        // 32 -> 64: the same block argument backwards.
        if self.umin >> 32 == self.umax >> 32 {
            let hi = self.umin & !0xffff_ffff;
            self.umin = max(self.umin, hi | self.u32_min as u64);
            self.umax = min(self.umax, hi | self.u32_max as u64);
        }
        if self.smin >> 32 == self.smax >> 32 {
            let hi = self.smin as u64 & !0xffff_ffff;
            self.smin = max(self.smin, (hi | self.u32_min as u64) as i64);
            self.smax = min(self.smax, (hi | self.u32_max as u64) as i64);
        }
        if self.umin > self.umax || self.smin > self.smax {
            return false;
        }
        // Intervals -> tnum.
        let Some(t) = self.var_off.intersect(Tnum::range(self.umin, self.umax)) else {
            return false;
        };
        let Some(sub) = t
            .subreg()
            .intersect(Tnum::range(self.u32_min as u64, self.u32_max as u64))
        else {
            return false;
        };
        self.var_off = t.with_subreg(sub);
        true
    }

    fn narrow32(&mut self, lo: u32, hi: u32) {
        self.u32_min = max(self.u32_min, lo);
        self.u32_max = min(self.u32_max, hi);
        if (lo as i32) <= (hi as i32) {
            self.s32_min = max(self.s32_min, lo as i32);
            self.s32_max = min(self.s32_max, hi as i32);
        }
    }

    /// The low 32 bits, zero-extended (the result of every 32-bit ALU op).
    pub fn zext32(&self) -> Scalar {
        let mut s = Scalar::unknown();
        s.var_off = self.var_off.subreg();
        s.umin = self.u32_min as u64;
        s.umax = self.u32_max as u64;
        s.u32_min = self.u32_min;
        s.u32_max = self.u32_max;
        s.s32_min = self.s32_min;
        s.s32_max = self.s32_max;
        s.normalized()
    }

    /// The low 32 bits sign-extended to 64 bits.
    pub fn sext32(&self) -> Scalar {
        let mut s = Scalar::unknown();
        s.var_off = self.var_off.sext(4);
        s.smin = self.s32_min as i64;
        s.smax = self.s32_max as i64;
        s.normalized()
    }

    /// Sign-extends the low `bits` (8, 16 or 32) to 64 bits.
    pub fn sext_bits(&self, bits: u32) -> Scalar {
        if bits >= 64 {
            return *self;
        }
        if bits == 32 {
            return self.sext32();
        }
        if bits == 0 {
            return Scalar::constant(0);
        }
        let half = 1u64 << (bits - 1);
        if self.umax < half {
            // Already a small non-negative value: sign extension keeps it.
            return *self;
        }
        let mut s = Scalar::from_tnum(self.var_off.cast(bits / 8).sext(bits / 8));
        s.smin = max(s.smin, -(half as i64));
        s.smax = min(s.smax, half as i64 - 1);
        s.normalized()
    }

    /// Truncates to the low `size` bytes (zero-extended).
    pub fn truncate(&self, size: u32) -> Scalar {
        match size {
            8.. => *self,
            4 => self.zext32(),
            _ => {
                let limit = (1u64 << (size * 8)) - 1;
                if self.umax <= limit {
                    return *self;
                }
                let mut s = Scalar::from_tnum(self.var_off.cast(size));
                s.umax = min(s.umax, limit);
                s.normalized()
            }
        }
    }

    /// True when every value of `other` is a value of `self`.
    pub fn includes(&self, other: &Scalar) -> bool {
        self.var_off.includes(other.var_off)
            && self.umin <= other.umin
            && other.umax <= self.umax
            && self.smin <= other.smin
            && other.smax <= self.smax
            && self.u32_min <= other.u32_min
            && other.u32_max <= self.u32_max
            && self.s32_min <= other.s32_min
            && other.s32_max <= self.s32_max
    }
}

impl fmt::Debug for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Scalar {
    /// Linux-like: a constant prints as its value, otherwise only the facts
    /// that say more than "unknown".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.as_const() {
            return write!(f, "{}", c as i64);
        }
        let mut sep = "";
        let mut item = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>| {
            let r = write!(f, "{sep}{args}");
            sep = ",";
            r
        };
        write!(f, "(")?;
        if self.smin != i64::MIN {
            item(f, format_args!("smin={}", self.smin))?;
        }
        if self.smax != i64::MAX {
            item(f, format_args!("smax={}", self.smax))?;
        }
        if self.umin != 0 {
            item(f, format_args!("umin={}", self.umin))?;
        }
        if self.umax != u64::MAX {
            item(f, format_args!("umax={}", self.umax))?;
        }
        if self.s32_min != i32::MIN && self.s32_min as i64 != self.smin {
            item(f, format_args!("smin32={}", self.s32_min))?;
        }
        if self.s32_max != i32::MAX && self.s32_max as i64 != self.smax {
            item(f, format_args!("smax32={}", self.s32_max))?;
        }
        if self.u32_min != 0 && self.u32_min as u64 != self.umin {
            item(f, format_args!("umin32={}", self.u32_min))?;
        }
        if self.u32_max != u32::MAX && self.u32_max as u64 != self.umax {
            item(f, format_args!("umax32={}", self.u32_max))?;
        }
        if !self.var_off.is_unknown() {
            item(
                f,
                format_args!(
                    "var_off=({:#x}; {:#x})",
                    self.var_off.value, self.var_off.mask
                ),
            )?;
        }
        write!(f, ")")
    }
}

/// The concrete result of `a op b` with RFC 9669 semantics (used for
/// constants, and by tests as the reference).
pub fn eval_alu(op: AluOp, width: Width, a: u64, b: u64) -> u64 {
    match width {
        Width::W64 => match op {
            AluOp::Add => a.wrapping_add(b),
            AluOp::Sub => a.wrapping_sub(b),
            AluOp::Mul => a.wrapping_mul(b),
            AluOp::Div => a.checked_div(b).unwrap_or(0),
            AluOp::SDiv => {
                if b == 0 {
                    0
                } else {
                    (a as i64).wrapping_div(b as i64) as u64
                }
            }
            AluOp::Mod => {
                if b == 0 {
                    a
                } else {
                    a % b
                }
            }
            AluOp::SMod => {
                if b == 0 {
                    a
                } else {
                    (a as i64).wrapping_rem(b as i64) as u64
                }
            }
            AluOp::Or => a | b,
            AluOp::And => a & b,
            AluOp::Xor => a ^ b,
            AluOp::Lsh => a << (b & 63),
            AluOp::Rsh => a >> (b & 63),
            AluOp::Arsh => ((a as i64) >> (b & 63)) as u64,
            AluOp::Mov => b,
        },
        Width::W32 => {
            let (x, y) = (a as u32, b as u32);
            let r = match op {
                AluOp::Add => x.wrapping_add(y),
                AluOp::Sub => x.wrapping_sub(y),
                AluOp::Mul => x.wrapping_mul(y),
                AluOp::Div => x.checked_div(y).unwrap_or(0),
                AluOp::SDiv => {
                    if y == 0 {
                        0
                    } else {
                        (x as i32).wrapping_div(y as i32) as u32
                    }
                }
                AluOp::Mod => {
                    if y == 0 {
                        x
                    } else {
                        x % y
                    }
                }
                AluOp::SMod => {
                    if y == 0 {
                        x
                    } else {
                        (x as i32).wrapping_rem(y as i32) as u32
                    }
                }
                AluOp::Or => x | y,
                AluOp::And => x & y,
                AluOp::Xor => x ^ y,
                AluOp::Lsh => x << (y & 31),
                AluOp::Rsh => x >> (y & 31),
                AluOp::Arsh => ((x as i32) >> (y & 31)) as u32,
                AluOp::Mov => y,
            };
            r as u64
        }
    }
}

/// Abstract `a op b`.
pub fn alu(op: AluOp, width: Width, a: &Scalar, b: &Scalar) -> Scalar {
    if let (Some(x), Some(y)) = (a.as_const(), b.as_const()) {
        return Scalar::constant(eval_alu(op, width, x, y));
    }
    match width {
        Width::W64 => alu64(op, a, b, 63),
        Width::W32 => {
            if let (Some(x), Some(y)) = (a.as_const32(), b.as_const32()) {
                return Scalar::constant(eval_alu(op, width, x as u64, y as u64));
            }
            // Compute on the zero-extended (or, for signed ops, sign-extended)
            // low halves with 64-bit arithmetic, then keep the low half.
            let (x, y) = match op {
                AluOp::Arsh => (a.sext32(), b.zext32()),
                AluOp::SDiv | AluOp::SMod => return Scalar::urange(0, u32::MAX as u64),
                _ => (a.zext32(), b.zext32()),
            };
            alu64(op, &x, &y, 31).zext32()
        }
    }
}

/// 64-bit transfer functions; `shift_mask` is 63, or 31 when computing a
/// 32-bit shift on extended operands.
fn alu64(op: AluOp, a: &Scalar, b: &Scalar, shift_mask: u64) -> Scalar {
    let mut r = Scalar::unknown();
    match op {
        AluOp::Mov => return *b,
        AluOp::Add => {
            r.var_off = a.var_off.add(b.var_off);
            if let (Some(lo), Some(hi)) = (a.umin.checked_add(b.umin), a.umax.checked_add(b.umax)) {
                r.umin = lo;
                r.umax = hi;
            }
            if let (Some(lo), Some(hi)) = (a.smin.checked_add(b.smin), a.smax.checked_add(b.smax)) {
                r.smin = lo;
                r.smax = hi;
            }
        }
        AluOp::Sub => {
            r.var_off = a.var_off.sub(b.var_off);
            if a.umin >= b.umax {
                r.umin = a.umin - b.umax;
                r.umax = a.umax - b.umin;
            }
            if let (Some(lo), Some(hi)) = (a.smin.checked_sub(b.smax), a.smax.checked_sub(b.smin)) {
                r.smin = lo;
                r.smax = hi;
            }
        }
        AluOp::Mul => {
            r.var_off = a.var_off.mul(b.var_off);
            if let Some(hi) = a.umax.checked_mul(b.umax) {
                r.umin = a.umin * b.umin;
                r.umax = hi;
            }
        }
        AluOp::And => {
            r.var_off = a.var_off.and(b.var_off);
            r.umax = min(a.umax, b.umax);
        }
        AluOp::Or => {
            r.var_off = a.var_off.or(b.var_off);
            r.umin = max(a.umin, b.umin);
        }
        AluOp::Xor => {
            r.var_off = a.var_off.xor(b.var_off);
        }
        AluOp::Lsh | AluOp::Rsh | AluOp::Arsh => {
            // The amount is masked by the width, so only its low bits count.
            let amount = alu64(AluOp::And, b, &Scalar::constant(shift_mask), shift_mask);
            let (kmin, kmax) = (amount.umin as u32, amount.umax as u32);
            let k_const = amount.as_const().map(|k| k as u32);
            match op {
                AluOp::Lsh => {
                    if let Some(k) = k_const {
                        r.var_off = a.var_off.lshift(k);
                    }
                    if a.umax.leading_zeros() >= kmax {
                        r.umin = a.umin << kmin;
                        r.umax = a.umax << kmax;
                    }
                }
                AluOp::Rsh => {
                    if let Some(k) = k_const {
                        r.var_off = a.var_off.rshift(k);
                    }
                    r.umin = a.umin >> kmax;
                    r.umax = a.umax >> kmin;
                }
                _ => {
                    if let Some(k) = k_const {
                        r.var_off = a.var_off.arshift(k, 64);
                    }
                    r.smin = min(a.smin >> kmin, a.smin >> kmax);
                    r.smax = max(a.smax >> kmin, a.smax >> kmax);
                }
            }
        }
        AluOp::Div => {
            // x / 0 == 0 and x / y <= x: the result never exceeds a.umax.
            match a.umax.checked_div(b.umin) {
                Some(hi) => {
                    // b.umax >= b.umin > 0.
                    r.umin = a.umin / b.umax;
                    r.umax = hi;
                }
                None => r.umax = a.umax,
            }
        }
        AluOp::Mod => {
            // x % 0 == x and x % y < y.
            if b.umin > 0 {
                if a.umax < b.umin {
                    return *a;
                }
                r.umax = min(a.umax, b.umax - 1);
            } else {
                r.umax = a.umax;
            }
        }
        AluOp::SDiv | AluOp::SMod => {}
    }
    r.normalized()
}

/// `-a` (64 or 32 bits).
pub fn neg(width: Width, a: &Scalar) -> Scalar {
    alu(AluOp::Sub, width, &Scalar::constant(0), a)
}

/// A refinement view over either the 64-bit value or its low 32 bits.
#[derive(Clone, Copy)]
struct View {
    umin: u64,
    umax: u64,
    smin: i64,
    smax: i64,
    t: Tnum,
    /// Largest unsigned value of the width.
    top: u64,
}

impl View {
    fn of(s: &Scalar, width: Width) -> View {
        match width {
            Width::W64 => View {
                umin: s.umin,
                umax: s.umax,
                smin: s.smin,
                smax: s.smax,
                t: s.var_off,
                top: u64::MAX,
            },
            Width::W32 => View {
                umin: s.u32_min as u64,
                umax: s.u32_max as u64,
                smin: s.s32_min as i64,
                smax: s.s32_max as i64,
                t: s.var_off.subreg(),
                top: u32::MAX as u64,
            },
        }
    }

    fn store(&self, s: &mut Scalar, width: Width) -> bool {
        if self.umin > self.umax || self.smin > self.smax {
            return false;
        }
        match width {
            Width::W64 => {
                s.umin = self.umin;
                s.umax = self.umax;
                s.smin = self.smin;
                s.smax = self.smax;
                s.var_off = self.t;
            }
            Width::W32 => {
                s.u32_min = self.umin as u32;
                s.u32_max = self.umax as u32;
                s.s32_min = self.smin as i32;
                s.s32_max = self.smax as i32;
                s.var_off = s.var_off.with_subreg(self.t);
            }
        }
        s.sync()
    }

    /// The value when the view is a single constant.
    fn konst(&self) -> Option<u64> {
        if self.t.is_const() {
            Some(self.t.value)
        } else if self.umin == self.umax {
            Some(self.umin)
        } else {
            None
        }
    }

    fn smin_of_width(&self) -> i64 {
        if self.top == u64::MAX {
            i64::MIN
        } else {
            i32::MIN as i64
        }
    }

    fn smax_of_width(&self) -> i64 {
        if self.top == u64::MAX {
            i64::MAX
        } else {
            i32::MAX as i64
        }
    }

    /// The value `v` as a signed number of the view's width.
    fn signed(&self, v: u64) -> i64 {
        if self.top == u64::MAX {
            v as i64
        } else {
            v as u32 as i32 as i64
        }
    }
}

/// Refines `a` and `b` assuming `a cond b` is `taken` (true) or not.
/// Returns `None` when that outcome is impossible.
pub fn refine(
    cond: JmpCond,
    width: Width,
    a: &Scalar,
    b: &Scalar,
    taken: bool,
) -> Option<(Scalar, Scalar)> {
    use JmpCond::*;
    // Normalise to a condition that holds on this arm.
    let (cond, swap) = match (cond, taken) {
        (Eq, true) | (Ne, false) => (Eq, false),
        (Ne, true) | (Eq, false) => (Ne, false),
        (Set, t) => return refine_set(width, a, b, t),
        (Gt, true) | (Le, false) => (Gt, false),
        (Ge, true) | (Lt, false) => (Ge, false),
        (Lt, true) | (Ge, false) => (Gt, true),
        (Le, true) | (Gt, false) => (Ge, true),
        (Sgt, true) | (Sle, false) => (Sgt, false),
        (Sge, true) | (Slt, false) => (Sge, false),
        (Slt, true) | (Sge, false) => (Sgt, true),
        (Sle, true) | (Sgt, false) => (Sge, true),
    };
    let (mut x, mut y) = if swap { (*b, *a) } else { (*a, *b) };
    let mut vx = View::of(&x, width);
    let mut vy = View::of(&y, width);
    match cond {
        Eq => {
            let t = vx.t.intersect(vy.t)?;
            vx.t = t;
            vy.t = t;
            vx.umin = max(vx.umin, vy.umin);
            vx.umax = min(vx.umax, vy.umax);
            vx.smin = max(vx.smin, vy.smin);
            vx.smax = min(vx.smax, vy.smax);
            vy.umin = vx.umin;
            vy.umax = vx.umax;
            vy.smin = vx.smin;
            vy.smax = vx.smax;
        }
        Ne => {
            if let (Some(p), Some(q)) = (vx.konst(), vy.konst()) {
                if p == q {
                    return None;
                }
            }
            // Excluding a constant only helps at the interval ends.
            let (cx, cy) = (vx.konst(), vy.konst());
            for (v, c) in [(&mut vx, cy), (&mut vy, cx)] {
                if let Some(c) = c {
                    let sc = v.signed(c);
                    if v.umin == c {
                        v.umin = c.checked_add(1)?;
                    } else if v.umax == c {
                        v.umax = c.checked_sub(1)?;
                    }
                    if v.smin == sc {
                        v.smin = sc.checked_add(1)?;
                    } else if v.smax == sc {
                        v.smax = sc.checked_sub(1)?;
                    }
                }
            }
        }
        Gt => {
            // x > y
            if vy.umin >= vx.top || vx.umax == 0 {
                return None;
            }
            vx.umin = max(vx.umin, vy.umin + 1);
            vy.umax = min(vy.umax, vx.umax - 1);
        }
        Ge => {
            vx.umin = max(vx.umin, vy.umin);
            vy.umax = min(vy.umax, vx.umax);
        }
        Sgt => {
            if vy.smin >= vx.smax_of_width() || vx.smax <= vx.smin_of_width() {
                return None;
            }
            vx.smin = max(vx.smin, vy.smin + 1);
            vy.smax = min(vy.smax, vx.smax - 1);
        }
        Sge => {
            vx.smin = max(vx.smin, vy.smin);
            vy.smax = min(vy.smax, vx.smax);
        }
        _ => {}
    }
    if !vx.store(&mut x, width) || !vy.store(&mut y, width) {
        return None;
    }
    Some(if swap { (y, x) } else { (x, y) })
}

fn refine_set(width: Width, a: &Scalar, b: &Scalar, taken: bool) -> Option<(Scalar, Scalar)> {
    let mut x = *a;
    let mut vx = View::of(&x, width);
    let vy = View::of(b, width);
    // Bits that may be one in both.
    let may = vx.t.umax() & vy.t.umax();
    // Bits known one in both.
    let must = vx.t.value & vy.t.value;
    if taken {
        if may == 0 {
            return None;
        }
        if let Some(c) = vy.konst() {
            if c.is_power_of_two() {
                vx.t = vx.t.intersect(Tnum::new(c, !c))?;
            }
        }
    } else {
        if must != 0 {
            return None;
        }
        if let Some(c) = vy.konst() {
            vx.t = vx.t.intersect(Tnum::new(0, !c & vx.top))?;
        }
    }
    if !vx.store(&mut x, width) {
        return None;
    }
    Some((x, *b))
}

/// The concrete outcome of `a cond b` (reference semantics).
pub fn eval_cond(cond: JmpCond, width: Width, a: u64, b: u64) -> bool {
    let (a, b, sa, sb) = match width {
        Width::W64 => (a, b, a as i64, b as i64),
        Width::W32 => (
            a as u32 as u64,
            b as u32 as u64,
            a as u32 as i32 as i64,
            b as u32 as i32 as i64,
        ),
    };
    match cond {
        JmpCond::Eq => a == b,
        JmpCond::Ne => a != b,
        JmpCond::Gt => a > b,
        JmpCond::Ge => a >= b,
        JmpCond::Lt => a < b,
        JmpCond::Le => a <= b,
        JmpCond::Set => a & b != 0,
        JmpCond::Sgt => sa > sb,
        JmpCond::Sge => sa >= sb,
        JmpCond::Slt => sa < sb,
        JmpCond::Sle => sa <= sb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn sync_derives_across_views() {
        let mut s = Scalar::unknown();
        s.umax = 63;
        assert!(s.sync());
        assert_eq!((s.smin, s.smax), (0, 63));
        assert_eq!((s.u32_min, s.u32_max), (0, 63));
        assert_eq!(s.var_off, Tnum::new(0, 63));

        let mut s = Scalar::unknown();
        s.var_off = Tnum::new(0x10, 0x0f);
        assert!(s.sync());
        assert_eq!((s.umin, s.umax, s.smin, s.smax), (16, 31, 16, 31));

        let mut s = Scalar::unknown();
        s.umin = 10;
        s.umax = 5;
        assert!(!s.sync());
    }

    #[test]
    fn bounds_check_then_add() {
        let x = Scalar::unknown();
        // if x > 63 goto out  => fall-through: x <= 63
        let (x, _) = refine(JmpCond::Gt, Width::W64, &x, &Scalar::constant(63), false).unwrap();
        assert_eq!((x.umin, x.umax), (0, 63));
        let y = alu(AluOp::Add, Width::W64, &x, &Scalar::constant(8));
        assert_eq!((y.umin, y.umax, y.smin, y.smax), (8, 71, 8, 71));
        // taken arm: x > 63
        let (x2, _) = refine(
            JmpCond::Gt,
            Width::W64,
            &Scalar::unknown(),
            &Scalar::constant(63),
            true,
        )
        .unwrap();
        assert_eq!(x2.umin, 64);
        // a constant cannot be both > 5 and 3
        assert!(refine(
            JmpCond::Gt,
            Width::W64,
            &Scalar::constant(3),
            &Scalar::constant(5),
            true
        )
        .is_none());
    }

    #[test]
    fn thirty_two_bit_compare_refines_sixty_four() {
        // w1 = unknown 32-bit (zero-extended); if w1 < 10
        let x = Scalar::urange(0, u32::MAX as u64);
        let (x, _) = refine(JmpCond::Lt, Width::W32, &x, &Scalar::constant(10), true).unwrap();
        assert_eq!((x.umin, x.umax), (0, 9));
    }

    #[test]
    fn jset_and_ne() {
        let x = Scalar::urange(0, 15);
        let (x0, _) = refine(JmpCond::Set, Width::W64, &x, &Scalar::constant(8), false).unwrap();
        assert_eq!(x0.umax, 7);
        let (x1, _) = refine(JmpCond::Set, Width::W64, &x, &Scalar::constant(8), true).unwrap();
        assert_eq!(x1.umin, 8);
        let (n, _) = refine(JmpCond::Ne, Width::W64, &x, &Scalar::constant(0), true).unwrap();
        assert_eq!(n.umin, 1);
        let (e, _) = refine(JmpCond::Eq, Width::W64, &x, &Scalar::constant(3), true).unwrap();
        assert_eq!(e.as_const(), Some(3));
    }

    #[test]
    fn div_mod_shift() {
        let x = Scalar::urange(0, 1000);
        assert_eq!(
            alu(AluOp::Div, Width::W64, &x, &Scalar::constant(10)).umax,
            100
        );
        assert_eq!(
            alu(AluOp::Mod, Width::W64, &x, &Scalar::constant(64)).umax,
            63
        );
        assert_eq!(
            alu(AluOp::Div, Width::W64, &x, &Scalar::unknown()).umax,
            1000
        );
        assert_eq!(
            alu(AluOp::Rsh, Width::W64, &x, &Scalar::constant(3)).umax,
            125
        );
        assert_eq!(
            alu(AluOp::Lsh, Width::W64, &x, &Scalar::constant(3)).umax,
            8000
        );
        assert_eq!(eval_alu(AluOp::Mod, Width::W32, 0x1_0000_0005, 0), 5);
        assert_eq!(
            eval_alu(AluOp::SDiv, Width::W64, i64::MIN as u64, u64::MAX),
            i64::MIN as u64
        );
    }

    #[test]
    fn display_is_compact() {
        assert_eq!(format!("{}", Scalar::constant(5)), "5");
        assert_eq!(
            format!("{}", Scalar::urange(0, 63)),
            "(smin=0,smax=63,umax=63,var_off=(0x0; 0x3f))"
        );
    }

    /// Randomised soundness check of every transfer function and every
    /// refinement against the concrete semantics.
    #[test]
    fn transfer_functions_are_sound() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pick = |r: u64| -> u64 {
            match r % 6 {
                0 => r >> 60,
                1 => (r >> 32) as u32 as u64,
                2 => r,
                3 => (r >> 40).wrapping_neg(),
                4 => 1 << (r % 64),
                _ => (r >> 8) & 0xffff,
            }
        };
        let ops = [
            AluOp::Add,
            AluOp::Sub,
            AluOp::Mul,
            AluOp::Div,
            AluOp::SDiv,
            AluOp::Mod,
            AluOp::SMod,
            AluOp::Or,
            AluOp::And,
            AluOp::Xor,
            AluOp::Lsh,
            AluOp::Rsh,
            AluOp::Arsh,
            AluOp::Mov,
        ];
        let conds = [
            JmpCond::Eq,
            JmpCond::Ne,
            JmpCond::Gt,
            JmpCond::Ge,
            JmpCond::Lt,
            JmpCond::Le,
            JmpCond::Set,
            JmpCond::Sgt,
            JmpCond::Sge,
            JmpCond::Slt,
            JmpCond::Sle,
        ];
        for _ in 0..5000 {
            let (a0, a1, b0, b1) = (pick(next()), pick(next()), pick(next()), pick(next()));
            let sa = if next() % 2 == 0 {
                Scalar::urange(min(a0, a1), max(a0, a1))
            } else {
                Scalar::srange(min(a0 as i64, a1 as i64), max(a0 as i64, a1 as i64))
            };
            let sb = Scalar::urange(min(b0, b1), max(b0, b1));
            // Concrete members: the endpoints, a midpoint.
            let xs = [a0, a1, min(a0, a1) / 2 + max(a0, a1) / 2];
            let ys = [b0, b1, min(b0, b1) / 2 + max(b0, b1) / 2];
            for &w in &[Width::W64, Width::W32] {
                for &op in &ops {
                    let r = alu(op, w, &sa, &sb);
                    for &x in &xs {
                        for &y in &ys {
                            if sa.may_be(x) && sb.may_be(y) {
                                let v = eval_alu(op, w, x, y);
                                assert!(r.may_be(v), "{op:?} {w:?} {x:#x} {y:#x} = {v:#x} not in {r} (from {sa} {sb})");
                            }
                        }
                    }
                }
                for &c in &conds {
                    for taken in [true, false] {
                        let r = refine(c, w, &sa, &sb, taken);
                        for &x in &xs {
                            for &y in &ys {
                                if sa.may_be(x) && sb.may_be(y) && eval_cond(c, w, x, y) == taken {
                                    let (ra, rb) = r.unwrap_or_else(|| panic!("{c:?} {w:?} {taken} {x:#x} {y:#x} pruned (from {sa} {sb})"));
                                    assert!(
                                        ra.may_be(x) && rb.may_be(y),
                                        "{c:?} {w:?} {taken} {x:#x} {y:#x}: {ra} {rb}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
