//! The symbol table embedded in the kernel image.
//!
//! The kernel reserves a fixed-size section (`.ksyms`) that the host fills in
//! after linking: function addresses, sizes and demangled names (hash
//! dropped). Its size is fixed, so filling it moves no address. The kernel
//! uses it to symbolize backtraces and stack samples and to re-check the
//! symbols the host resolved.
//!
//! ```text
//! "KSYM" | version u32 | count u32 | strtab_len u32     (16 bytes)
//! count × { addr u64, size u32, name_off u32 }           (16 bytes each, sorted by addr)
//! strtab (UTF-8 names, not terminated)
//! ```
//! Each name ends where the next entry's name starts (names are stored in
//! entry order), the last one at `strtab_len`.

use alloc::vec::Vec;

/// Magic of a filled table.
pub const MAGIC: [u8; 4] = *b"KSYM";
/// Magic the kernel's reserved section starts with before the host fills it.
pub const EMPTY_MAGIC: [u8; 4] = *b"KSY0";
/// Format version.
pub const VERSION: u32 = 1;
/// Bytes the kernel reserves for the table.
pub const RESERVED_BYTES: usize = 4 << 20;
/// Name of the kernel's static that holds the table.
pub const SYMBOL_NAME: &str = "KTRACE_KSYMS";

const HEADER: usize = 16;
const ENTRY: usize = 16;

/// One function for [`encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KsymEntry<'a> {
    pub addr: u64,
    pub size: u32,
    pub name: &'a str,
}

/// Encode entries (any order) into a table. Returns `None` if it would not
/// fit in [`RESERVED_BYTES`].
pub fn encode(entries: &mut [KsymEntry<'_>]) -> Option<Vec<u8>> {
    entries.sort_by_key(|e| e.addr);
    let strtab_len: usize = entries.iter().map(|e| e.name.len()).sum();
    let total = HEADER + entries.len() * ENTRY + strtab_len;
    if total > RESERVED_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strtab_len as u32).to_le_bytes());
    let mut off = 0u32;
    for e in entries.iter() {
        out.extend_from_slice(&e.addr.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
        off += e.name.len() as u32;
    }
    for e in entries.iter() {
        out.extend_from_slice(e.name.as_bytes());
    }
    Some(out)
}

/// A read-only view of an encoded table.
#[derive(Clone, Copy)]
pub struct KsymTable<'a> {
    entries: &'a [u8],
    strtab: &'a [u8],
    count: usize,
}

/// A symbol found in a [`KsymTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ksym<'a> {
    pub addr: u64,
    pub size: u32,
    pub name: &'a str,
}

impl<'a> KsymTable<'a> {
    /// Parse a table; `None` if it is empty (never filled) or malformed.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < HEADER || bytes[..4] != MAGIC {
            return None;
        }
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        if word(4) != VERSION {
            return None;
        }
        let count = word(8) as usize;
        let strtab_len = word(12) as usize;
        let entries_end = HEADER.checked_add(count.checked_mul(ENTRY)?)?;
        let end = entries_end.checked_add(strtab_len)?;
        if end > bytes.len() {
            return None;
        }
        Some(Self {
            entries: &bytes[HEADER..entries_end],
            strtab: &bytes[entries_end..end],
            count,
        })
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if the table holds no symbol.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`th symbol in address order.
    pub fn get(&self, i: usize) -> Option<Ksym<'a>> {
        if i >= self.count {
            return None;
        }
        let e = &self.entries[i * ENTRY..(i + 1) * ENTRY];
        let addr = u64::from_le_bytes(e[..8].try_into().ok()?);
        let size = u32::from_le_bytes(e[8..12].try_into().ok()?);
        let start = u32::from_le_bytes(e[12..16].try_into().ok()?) as usize;
        let end = if i + 1 < self.count {
            let n = &self.entries[(i + 1) * ENTRY + 12..(i + 2) * ENTRY];
            u32::from_le_bytes(n.try_into().ok()?) as usize
        } else {
            self.strtab.len()
        };
        let name = core::str::from_utf8(self.strtab.get(start..end)?).ok()?;
        Some(Ksym { addr, size, name })
    }

    /// The symbol containing `addr` and the offset into it.
    pub fn lookup(&self, addr: u64) -> Option<(Ksym<'a>, u64)> {
        // Binary search on the sorted addresses for the last start <= addr.
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid)?.addr <= addr {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let sym = self.get(lo.checked_sub(1)?)?;
        let off = addr - sym.addr;
        // Size 0 symbols (assembly labels) match only their own address.
        if off < u64::from(sym.size.max(1)) {
            Some((sym, off))
        } else {
            None
        }
    }

    /// Iterate in address order.
    pub fn iter(&self) -> impl Iterator<Item = Ksym<'a>> + '_ {
        (0..self.count).filter_map(move |i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_lookup() {
        let mut e = [
            KsymEntry {
                addr: 0x2000,
                size: 0x10,
                name: "b::g",
            },
            KsymEntry {
                addr: 0x1000,
                size: 0x20,
                name: "a::f",
            },
        ];
        let bytes = encode(&mut e).unwrap();
        let t = KsymTable::parse(&bytes).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(0x1005).unwrap().0.name, "a::f");
        assert_eq!(t.lookup(0x1005).unwrap().1, 5);
        assert_eq!(t.lookup(0x200f).unwrap().0.name, "b::g");
        assert!(t.lookup(0x2010).is_none());
        assert!(t.lookup(0xfff).is_none());
    }

    #[test]
    fn malformed_tables_are_refused() {
        assert!(KsymTable::parse(b"KSY0").is_none());
        let mut bad = Vec::from(MAGIC);
        bad.extend_from_slice(&VERSION.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        bad.extend_from_slice(&0u32.to_le_bytes());
        assert!(KsymTable::parse(&bad).is_none());
    }
}
