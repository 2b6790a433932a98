//! The static tracepoints of the ktrace kernel: their record layouts and
//! format descriptions, shared by the kernel (which fills the records) and
//! probes (which read them through typed accessors), so that nobody
//! hard-codes a byte offset.
//!
//! Names and fields follow Linux where a counterpart exists
//! (`block:block_rq_issue`, `sched:sched_switch`, ...). Every record is
//! `#[repr(C)]`; [`TracepointEvent::FIELDS`] gives each field's name, offset,
//! size and signedness, computed by the compiler (`offset_of!`), so the
//! description cannot drift from the layout.
#![no_std]

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDesc {
    /// Field name, as in Linux's format file where one exists.
    pub name: &'static str,
    /// Rust type of the field (`u64`, `[u8; 8]`, ...).
    pub type_name: &'static str,
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Whether an integer field is signed.
    pub signed: bool,
}

/// A tracepoint's record type.
pub trait TracepointEvent: Copy {
    /// Category, e.g. `block`.
    const CATEGORY: &'static str;
    /// Name within the category, e.g. `block_rq_issue`.
    const NAME: &'static str;
    /// Fields in declaration order.
    const FIELDS: &'static [FieldDesc];
    /// Record size in bytes.
    const SIZE: u32;
}

/// Static description of one tracepoint, for registries and tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracepointDesc {
    pub category: &'static str,
    pub name: &'static str,
    pub fields: &'static [FieldDesc],
    pub size: u32,
}

impl TracepointDesc {
    /// `category:name`, the way users write it.
    pub fn full_name(&self) -> FullName {
        FullName(self.category, self.name)
    }

    /// Look a field up by name.
    pub fn field(&self, name: &str) -> Option<&'static FieldDesc> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Displays as `category:name`.
pub struct FullName(&'static str, &'static str);

impl core::fmt::Display for FullName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}", self.0, self.1)
    }
}

/// Signedness of a field type.
pub trait FieldType {
    const SIGNED: bool;
}

macro_rules! field_types {
    ($($t:ty => $s:expr),* $(,)?) => { $(impl FieldType for $t { const SIGNED: bool = $s; })* };
}
field_types!(u8 => false, u16 => false, u32 => false, u64 => false, i8 => true, i16 => true, i32 => true, i64 => true);
impl<const N: usize> FieldType for [u8; N] {
    const SIGNED: bool = false;
}

/// Declares tracepoint records: a `#[repr(C)]` struct per event plus its
/// [`TracepointEvent`] impl. Fields should be ordered largest first so the
/// record has no padding.
macro_rules! tracepoints {
    ($(
        $(#[$meta:meta])*
        $cat:literal : $name:literal => struct $ty:ident { $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)? }
    )*) => {$(
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $ty { $( $(#[$fmeta])* pub $field: $fty ),* }

        impl $crate::TracepointEvent for $ty {
            const CATEGORY: &'static str = $cat;
            const NAME: &'static str = $name;
            const FIELDS: &'static [$crate::FieldDesc] = &[$(
                $crate::FieldDesc {
                    name: stringify!($field),
                    type_name: stringify!($fty),
                    offset: core::mem::offset_of!($ty, $field) as u32,
                    size: core::mem::size_of::<$fty>() as u32,
                    signed: <$fty as $crate::FieldType>::SIGNED,
                }
            ),*];
            const SIZE: u32 = core::mem::size_of::<$ty>() as u32;
        }
    )*};
}

/// Describe an event type.
pub const fn desc<E: TracepointEvent>() -> TracepointDesc {
    TracepointDesc {
        category: E::CATEGORY,
        name: E::NAME,
        fields: E::FIELDS,
        size: E::SIZE,
    }
}

pub mod block;
pub mod irq;
pub mod ktrace;
pub mod sched;

/// Every tracepoint the kernel defines.
pub const ALL: &[TracepointDesc] = &[
    desc::<block::BlockBioQueue>(),
    desc::<block::BlockBioBackmerge>(),
    desc::<block::BlockBioFrontmerge>(),
    desc::<block::BlockRqInsert>(),
    desc::<block::BlockRqIssue>(),
    desc::<block::BlockRqComplete>(),
    desc::<sched::SchedSwitch>(),
    desc::<sched::SchedWakeup>(),
    desc::<sched::SchedMigrateTask>(),
    desc::<irq::IrqHandlerEntry>(),
    desc::<irq::IrqHandlerExit>(),
    desc::<ktrace::Bench>(),
];

/// Find a tracepoint by `category:name` (or `category/name`).
pub fn find(full_name: &str) -> Option<&'static TracepointDesc> {
    let (cat, name) = full_name
        .split_once(':')
        .or_else(|| full_name.split_once('/'))?;
    ALL.iter().find(|d| d.category == cat && d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding_and_fields_are_in_bounds() {
        for d in ALL {
            let sum: u32 = d.fields.iter().map(|f| f.size).sum();
            assert_eq!(sum, d.size, "{} has padding", d.full_name());
            for f in d.fields {
                assert!(f.offset + f.size <= d.size);
            }
        }
    }

    #[test]
    fn find_by_name() {
        let d = find("block:block_rq_issue").unwrap();
        assert_eq!(d.field("sector").unwrap().size, 8);
        assert!(find("block:nope").is_none());
        assert!(find("nonsense").is_none());
    }
}
