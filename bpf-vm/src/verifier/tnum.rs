//! Tristate numbers ("tnums"): a 64-bit value where every bit is known 0,
//! known 1, or unknown.
//!
//! A tnum is a pair `(value, mask)`: bits set in `mask` are unknown, the
//! other bits equal the corresponding bit of `value` (and `value & mask == 0`).
//! It describes the set of integers `{ x | x & !mask == value }`. The
//! operations below are over-approximations: the result contains every
//! value the concrete operation can produce from members of the operands.
//! This is the domain the Linux verifier uses next to its intervals; the
//! arithmetic follows the published algorithms (Vishwanathan et al.,
//! "Sound, precise and fast abstract interpretation with tristate numbers").

use core::fmt;

/// A tristate number. See the module documentation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tnum {
    /// Known bit values (unknown bits are 0 here).
    pub value: u64,
    /// Unknown bits.
    pub mask: u64,
}

impl Tnum {
    /// Every value.
    pub const UNKNOWN: Tnum = Tnum {
        value: 0,
        mask: u64::MAX,
    };

    /// Builds a tnum, clearing value bits that the mask says are unknown.
    pub const fn new(value: u64, mask: u64) -> Tnum {
        Tnum {
            value: value & !mask,
            mask,
        }
    }

    /// The single value `v`.
    pub const fn constant(v: u64) -> Tnum {
        Tnum { value: v, mask: 0 }
    }

    /// The smallest tnum containing every value of `[min, max]` (unsigned).
    pub fn range(min: u64, max: u64) -> Tnum {
        if min > max {
            return Tnum::UNKNOWN;
        }
        let chi = min ^ max;
        // Bits at and below the highest differing bit are unknown.
        let bits = 64 - chi.leading_zeros();
        if bits > 63 {
            return Tnum::UNKNOWN;
        }
        let delta = (1u64 << bits) - 1;
        Tnum::new(min & !delta, delta)
    }

    /// True when every bit is known.
    pub const fn is_const(self) -> bool {
        self.mask == 0
    }

    /// True when the tnum is the value `v` exactly.
    pub const fn equals_const(self, v: u64) -> bool {
        self.mask == 0 && self.value == v
    }

    /// True when every bit is unknown.
    pub const fn is_unknown(self) -> bool {
        self.mask == u64::MAX
    }

    /// Smallest member (unsigned).
    pub const fn umin(self) -> u64 {
        self.value
    }

    /// Largest member (unsigned).
    pub const fn umax(self) -> u64 {
        self.value | self.mask
    }

    /// Smallest member (signed): sign bit set when it may be.
    pub const fn smin(self) -> i64 {
        (self.value | (self.mask & (1 << 63))) as i64
    }

    /// Largest member (signed): sign bit clear when it may be.
    pub const fn smax(self) -> i64 {
        (self.value | (self.mask & !(1 << 63))) as i64
    }

    /// True when `v` is a member.
    pub const fn contains(self, v: u64) -> bool {
        v & !self.mask == self.value
    }

    /// True when every member of `other` is a member of `self`.
    pub const fn includes(self, other: Tnum) -> bool {
        // Bits we know must be known in `other` with the same value.
        if other.mask & !self.mask != 0 {
            return false;
        }
        other.value & !self.mask == self.value
    }

    /// Left shift by a known amount (0..=63).
    pub const fn lshift(self, shift: u32) -> Tnum {
        let s = shift & 63;
        Tnum::new(self.value << s, self.mask << s)
    }

    /// Logical right shift by a known amount (0..=63).
    pub const fn rshift(self, shift: u32) -> Tnum {
        let s = shift & 63;
        Tnum::new(self.value >> s, self.mask >> s)
    }

    /// Arithmetic right shift by a known amount, on a 32- or 64-bit value.
    /// For 32 bits, the operand is taken as its low half sign-extended and
    /// the result is the low half of the shifted value, zero-extended.
    pub const fn arshift(self, shift: u32, bits: u32) -> Tnum {
        if bits == 32 {
            let s = shift & 31;
            let v = ((self.value as u32 as i32) >> s) as u32 as u64;
            let m = ((self.mask as u32 as i32) >> s) as u32 as u64;
            Tnum::new(v, m)
        } else {
            let s = shift & 63;
            Tnum::new(
                ((self.value as i64) >> s) as u64,
                ((self.mask as i64) >> s) as u64,
            )
        }
    }

    /// Addition (wrapping).
    pub const fn add(self, other: Tnum) -> Tnum {
        let sm = self.mask.wrapping_add(other.mask);
        let sv = self.value.wrapping_add(other.value);
        let sigma = sm.wrapping_add(sv);
        let chi = sigma ^ sv;
        let mu = chi | self.mask | other.mask;
        Tnum::new(sv & !mu, mu)
    }

    /// Subtraction (wrapping).
    pub const fn sub(self, other: Tnum) -> Tnum {
        let dv = self.value.wrapping_sub(other.value);
        let alpha = dv.wrapping_add(self.mask);
        let beta = dv.wrapping_sub(other.mask);
        let chi = alpha ^ beta;
        let mu = chi | self.mask | other.mask;
        Tnum::new(dv & !mu, mu)
    }

    /// Two's complement negation.
    pub const fn neg(self) -> Tnum {
        Tnum::constant(0).sub(self)
    }

    /// Bitwise and.
    pub const fn and(self, other: Tnum) -> Tnum {
        let alpha = self.value | self.mask;
        let beta = other.value | other.mask;
        let v = self.value & other.value;
        Tnum::new(v, alpha & beta & !v)
    }

    /// Bitwise or.
    pub const fn or(self, other: Tnum) -> Tnum {
        let v = self.value | other.value;
        let mu = self.mask | other.mask;
        Tnum::new(v, mu & !v)
    }

    /// Bitwise exclusive or.
    pub const fn xor(self, other: Tnum) -> Tnum {
        let v = self.value ^ other.value;
        let mu = self.mask | other.mask;
        Tnum::new(v & !mu, mu)
    }

    /// Multiplication (wrapping), by shift-and-add over the bits of `self`.
    pub const fn mul(self, other: Tnum) -> Tnum {
        let mut a = self;
        let mut b = other;
        let acc_v = a.value.wrapping_mul(b.value);
        let mut acc_m = Tnum::constant(0);
        // At most 64 rounds: `a` loses one bit per round.
        while a.value != 0 || a.mask != 0 {
            if a.value & 1 != 0 {
                acc_m = acc_m.add(Tnum::new(0, b.mask));
            } else if a.mask & 1 != 0 {
                acc_m = acc_m.add(Tnum::new(0, b.value | b.mask));
            }
            a = a.rshift(1);
            b = b.lshift(1);
        }
        Tnum::constant(acc_v).add(acc_m)
    }

    /// The values in both tnums, or `None` when they have none in common.
    pub const fn intersect(self, other: Tnum) -> Option<Tnum> {
        let known_both = !self.mask & !other.mask;
        if (self.value ^ other.value) & known_both != 0 {
            return None;
        }
        let v = self.value | other.value;
        let mu = self.mask & other.mask;
        Some(Tnum::new(v, mu))
    }

    /// The smallest tnum containing both (a join).
    pub const fn union(self, other: Tnum) -> Tnum {
        let mu = self.mask | other.mask | (self.value ^ other.value);
        Tnum::new(self.value, mu)
    }

    /// Truncates to the low `size` bytes (1, 2, 4 or 8), zero-extending.
    pub const fn cast(self, size: u32) -> Tnum {
        if size >= 8 {
            return self;
        }
        let keep = (1u64 << (size * 8)) - 1;
        Tnum::new(self.value & keep, self.mask & keep)
    }

    /// Sign-extends the low `size` bytes (1, 2 or 4) to 64 bits.
    pub const fn sext(self, size: u32) -> Tnum {
        if size >= 8 {
            return self;
        }
        if size == 0 {
            return Tnum::constant(0);
        }
        let shift = 64 - size * 8;
        Tnum::new(
            (((self.value << shift) as i64) >> shift) as u64,
            (((self.mask << shift) as i64) >> shift) as u64,
        )
    }

    /// True when every member is a multiple of `size` (a power of two).
    pub const fn is_aligned(self, size: u64) -> bool {
        if size == 0 {
            return true;
        }
        (self.value | self.mask) & (size - 1) == 0
    }

    /// The low 32 bits (zero-extended).
    pub const fn subreg(self) -> Tnum {
        self.cast(4)
    }

    /// Keeps the high 32 bits and clears the low ones.
    pub const fn clear_subreg(self) -> Tnum {
        Tnum::new(self.value & !0xffff_ffff, self.mask & !0xffff_ffff)
    }

    /// The high 32 bits of `self` with the low 32 bits of `sub`.
    pub const fn with_subreg(self, sub: Tnum) -> Tnum {
        let s = sub.subreg();
        let h = self.clear_subreg();
        Tnum::new(h.value | s.value, h.mask | s.mask)
    }
}

impl Default for Tnum {
    fn default() -> Tnum {
        Tnum::UNKNOWN
    }
}

impl fmt::Debug for Tnum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:#x}; {:#x})", self.value, self.mask)
    }
}

impl fmt::Display for Tnum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_const() {
            write!(f, "{:#x}", self.value)
        } else {
            write!(f, "(value={:#x}; mask={:#x})", self.value, self.mask)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All 3^4 tnums of width 4 bits (upper bits known zero), for exhaustive checks.
    fn small() -> alloc::vec::Vec<Tnum> {
        let mut out = alloc::vec::Vec::new();
        for v in 0..16u64 {
            for m in 0..16u64 {
                if v & m == 0 {
                    out.push(Tnum::new(v, m));
                }
            }
        }
        out
    }

    fn members(t: Tnum) -> alloc::vec::Vec<u64> {
        (0..16u64).filter(|&x| t.contains(x)).collect()
    }

    #[test]
    fn range_and_const() {
        assert_eq!(Tnum::range(4, 7), Tnum::new(4, 3));
        assert_eq!(Tnum::range(0, 0), Tnum::constant(0));
        assert_eq!(Tnum::range(0, u64::MAX), Tnum::UNKNOWN);
        assert_eq!(Tnum::range(5, 9), Tnum::new(0, 15));
        assert!(Tnum::constant(7).equals_const(7));
        assert_eq!(Tnum::new(0b100, 0b011).umax(), 7);
        assert_eq!(Tnum::UNKNOWN.smin(), i64::MIN);
        assert_eq!(Tnum::UNKNOWN.smax(), i64::MAX);
    }

    #[test]
    fn ops_are_sound_exhaustively() {
        let all = small();
        for &a in &all {
            for &b in &all {
                let (add, sub, and, or, xor, mul) =
                    (a.add(b), a.sub(b), a.and(b), a.or(b), a.xor(b), a.mul(b));
                for x in members(a) {
                    for y in members(b) {
                        assert!(add.contains(x.wrapping_add(y)), "{a:?}+{b:?}");
                        assert!(sub.contains(x.wrapping_sub(y)), "{a:?}-{b:?}");
                        assert!(and.contains(x & y));
                        assert!(or.contains(x | y));
                        assert!(xor.contains(x ^ y));
                        assert!(mul.contains(x.wrapping_mul(y)), "{a:?}*{b:?}");
                    }
                }
                let u = a.union(b);
                assert!(u.includes(a) && u.includes(b));
                match a.intersect(b) {
                    Some(i) => {
                        for x in members(a) {
                            if b.contains(x) {
                                assert!(i.contains(x));
                            }
                        }
                    }
                    None => assert!(members(a).iter().all(|&x| !b.contains(x))),
                }
            }
            for x in members(a) {
                assert!(a.neg().contains(x.wrapping_neg()));
                for s in 0..8 {
                    assert!(a.lshift(s).contains(x << s));
                    assert!(a.rshift(s).contains(x >> s));
                }
            }
        }
    }

    #[test]
    fn shifts_casts_and_subregs() {
        let t = Tnum::constant(0xffff_ffff_8000_0000);
        assert_eq!(t.arshift(4, 64), Tnum::constant(0xffff_ffff_f800_0000));
        assert_eq!(t.arshift(4, 32), Tnum::constant(0xf800_0000));
        assert_eq!(t.subreg(), Tnum::constant(0x8000_0000));
        assert_eq!(t.clear_subreg(), Tnum::constant(0xffff_ffff_0000_0000));
        assert_eq!(
            Tnum::constant(0x80).sext(1),
            Tnum::constant(u64::MAX - 0x7f)
        );
        assert_eq!(Tnum::new(0, 0xff).cast(1), Tnum::new(0, 0xff));
        assert_eq!(
            Tnum::UNKNOWN.with_subreg(Tnum::constant(5)),
            Tnum::new(5, 0xffff_ffff_0000_0000)
        );
        assert!(Tnum::new(0, 0xf0).is_aligned(16));
        assert!(!Tnum::new(0, 0xf8).is_aligned(16));
        assert!(Tnum::new(0, 0xf).includes(Tnum::new(4, 3)));
        assert!(!Tnum::new(4, 3).includes(Tnum::new(0, 0xf)));
        assert_eq!(Tnum::constant(1).intersect(Tnum::constant(2)), None);
    }
}
