//! Where compiled code charges the instruction budget, so that it charges
//! less often than the interpreter but faults at the same instruction with
//! the same count.
//!
//! The interpreter charges a whole straight-line run when it enters it
//! (`run_len`), and faults there if the run does not fit. The compiled code
//! splits the program into *blocks*: a block starts where a run can start
//! (slot 0, a jump or call target, the slot after a control transfer) and
//! ends at a control transfer or where the next block starts. Each block
//! start checks the interpreter's condition for the run starting there;
//! what it subtracts may differ:
//!
//! - *Checkpoints* are slot 0, call targets, the slot after a local call
//!   and loop heads (targets of backward jumps). Between checkpoints, code
//!   only moves forward, so the blocks reachable from a checkpoint `c`
//!   without crossing another one form an acyclic *region*.
//! - A block that lies on every path from `c` out of its region, and in no
//!   other region, is *mandatory*: `c` subtracts its length up front (it
//!   will run exactly once before the region is left), and the block
//!   itself subtracts nothing. Other blocks subtract their own length.
//! - So inside a region the budget register runs ahead of the interpreter's
//!   count by `pend`: the mandatory blocks charged but not yet run. That
//!   amount is the same on every path to a block (a mandatory block is
//!   either before it on every path or after it on every path, since the
//!   region is acyclic), so checks compare against `run_len - pend` and a
//!   fault adds `pend` back, both constants. When the region is left, every
//!   mandatory block has run: `pend` is 0 and the count is exact.
//!
//! - Each checkpoint also knows what its region can need at most (the
//!   highest threshold any block in it checks, plus what the blocks before
//!   it subtract). The code is emitted twice: a *fast* copy whose
//!   checkpoints check that need and whose other blocks only subtract, and
//!   a *precise* copy that checks every block. A region that may run out
//!   goes on in the precise copy; since both keep the same count, the
//!   move is a jump.
//!
//! The register may go negative inside a region (a precharge larger than
//! what is left), hence signed comparisons; budgets are capped at 2^62, so
//! nothing wraps. In a branchy loop the fast copy does one check and one
//! subtraction per iteration plus one subtraction per optional block run,
//! instead of a check per run and a taken edge that charges out of line.

use alloc::vec;
use alloc::vec::Vec;

use crate::interp::exe::Op;

/// Regions with more blocks than this are not analysed (the analysis is
/// quadratic in the size of a region): their blocks all charge themselves.
const MAX_REGION: usize = 1024;
/// Block visits over all regions before the analysis gives up altogether.
const MAX_WORK: usize = 1 << 22;
/// Quadratic steps (blocks squared) over the analysed regions; regions past
/// it are left unanalysed.
const MAX_QUADRATIC: usize = 1 << 26;

/// How the block starting at a slot charges the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Block {
    /// The interpreter's charge for a run entered here (`run_len`).
    pub run: i32,
    /// Charged up front and not yet run when the block starts.
    pub pend: i32,
    /// Subtracted at the block's start.
    pub charge: i32,
}

impl Block {
    /// Run-time check at the start: the register must be at least this
    /// (signed), else the run entered here does not fit.
    pub fn threshold(&self) -> i32 {
        self.run - self.pend
    }

    /// Added to the register by a fault inside the block (after its
    /// charge) to give the interpreter's count: the interpreter has charged
    /// the rest of the run, the code has charged `pend + charge` more than
    /// it ran.
    pub fn fault_fix(&self) -> i32 {
        self.pend + self.charge - self.run
    }
}

pub(super) struct BudgetPlan {
    /// Per slot: the block starting there, if one does.
    pub blocks: Vec<Option<Block>>,
    /// Per checkpoint: the least budget (before its charge) with which no
    /// run in its region can exhaust the budget, so the region's fast copy
    /// needs no other check. `None` everywhere when the regions were not
    /// analysed (then there is no fast copy).
    pub region_need: Vec<Option<i32>>,
    /// Per slot: a checkpoint.
    pub checkpoints: Vec<bool>,
    /// Per slot: a target of a backward jump.
    pub loop_heads: Vec<bool>,
    /// Per block start: how far the fast copy's budget register runs
    /// below the count the blocks above describe (see [`BudgetPlan::bias`]).
    pub bias: Vec<i32>,
}

impl BudgetPlan {
    /// Gives each loop head whose region may need more than its charge
    /// (optional blocks, the way out of the loop) a *bias*: in the fast
    /// copy, the register holds `left - bias` throughout that region, so
    /// the head's check `left >= need` becomes `sub reg, charge` and one
    /// `jl` (fused with the `sub`), instead of a compare and a
    /// subtraction on every iteration. Each edge between blocks of
    /// different bias adjusts the register (entering a loop, leaving it),
    /// and whatever reads the count (faults, `exit`, the precise copy)
    /// adds the bias back. Blocks in several regions, and every block of a
    /// program with bpf-to-bpf calls (whose `exit` may return into a
    /// caller's region), keep bias 0; so does slot 0, entered from the
    /// prologue.
    fn set_biases(&mut self, region_of: &[Option<usize>], local_calls: bool) {
        if local_calls {
            return;
        }
        for (b, region) in region_of.iter().enumerate() {
            let Some(c) = *region else {
                continue;
            };
            let head = self.blocks[c].expect("a checkpoint starts a block");
            self.bias[b] = match self.region_need[c] {
                Some(need) if c != 0 && self.loop_heads[c] && need > head.charge => {
                    need - head.charge
                }
                _ => 0,
            };
        }
    }
}

/// The slot after the operation at `pc` (two on for `ld_imm64`).
fn next_slot(ops: &[Op], pc: usize) -> usize {
    match ops[pc] {
        Op::LdImm64(..) => pc + 2,
        _ => pc + 1,
    }
}

/// A block: its start, length in instructions and successors inside the
/// program (`exit` set when a path leaves every region there: `exit`, a
/// local call, falling off).
struct Shape {
    len: i32,
    succ: [Option<usize>; 2],
    exits: bool,
}

pub(super) fn plan(ops: &[Op], run_len: &[u32]) -> BudgetPlan {
    let n = ops.len();
    let mut start = vec![false; n];
    let mut checkpoint = vec![false; n];
    let mut loop_heads = vec![false; n];
    if n > 0 {
        start[0] = true;
        checkpoint[0] = true;
    }
    for (pc, op) in ops.iter().enumerate() {
        if let Op::CallLocal(t) = *op {
            for s in [t as usize, pc + 1] {
                if s < n {
                    start[s] = true;
                    checkpoint[s] = true;
                }
            }
        } else if let Some(t) = op.jump_target() {
            start[t] = true;
            if t <= pc {
                checkpoint[t] = true;
                loop_heads[t] = true;
            }
        }
        if op.ends_run() && pc + 1 < n {
            start[pc + 1] = true;
        }
    }
    // Shapes of the blocks.
    let mut shapes: Vec<Option<Shape>> = (0..n).map(|_| None).collect();
    for b in (0..n).filter(|&b| start[b]) {
        let mut e = b;
        let fall = loop {
            if ops[e].ends_run() {
                break None;
            }
            let next = next_slot(ops, e);
            if next >= n || start[next] {
                break Some(next);
            }
            e = next;
        };
        let rest = fall.map_or(0, |s| run_len.get(s).copied().unwrap_or(0));
        let len = run_len[b] as i32 - rest as i32;
        let (succ, exits) = match (fall, &ops[e]) {
            (Some(s), _) => ([Some(s).filter(|&s| s < n), None], s >= n),
            (None, Op::Ja(t)) => ([Some(*t as usize), None], false),
            (None, op) => match op.cond_jump_target() {
                Some(t) => ([Some(t), Some(e + 1).filter(|&s| s < n)], false),
                None => ([None, None], true),
            },
        };
        shapes[b] = Some(Shape { len, succ, exits });
    }
    let shape = |b: usize| shapes[b].as_ref().expect("block start");

    // Regions: the blocks reachable from each checkpoint without entering
    // another; count how many regions each block is in.
    let mut count = vec![0u32; n];
    let mut stamp = vec![usize::MAX; n];
    let mut regions: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut work = 0usize;
    let mut analyse = true;
    for c in (0..n).filter(|&c| checkpoint[c]) {
        let mut members = Vec::new();
        let mut stack = vec![c];
        stamp[c] = c;
        while let Some(b) = stack.pop() {
            members.push(b);
            count[b] += 1;
            work += 1;
            for s in shape(b).succ.into_iter().flatten() {
                if !checkpoint[s] && stamp[s] != c {
                    stamp[s] = c;
                    stack.push(s);
                }
            }
        }
        if work > MAX_WORK {
            analyse = false;
        }
        regions.push((c, members));
    }

    let mut blocks: Vec<Option<Block>> = vec![None; n];
    for b in (0..n).filter(|&b| start[b]) {
        blocks[b] = Some(Block {
            run: run_len[b] as i32,
            pend: 0,
            charge: shape(b).len,
        });
    }
    let mut region_need = vec![None; n];
    if !analyse {
        return BudgetPlan {
            blocks,
            region_need,
            checkpoints: checkpoint,
            loop_heads,
            bias: vec![0; n],
        };
    }
    // Post-dominators inside each region, as bitsets over its blocks in
    // descending order (every edge inside a region goes forward, so a
    // block's successors come before it in that order).
    let mut index = vec![0usize; n];
    let mut quadratic = 0usize;
    let mut regions_kept = Vec::with_capacity(regions.len());
    for (c, mut members) in regions {
        // Set apart before analysing: the needs below use every region.
        let members_all = members.clone();
        regions_kept.push((c, members_all));
        let r = members.len();
        if r > MAX_REGION || quadratic + r * r > MAX_QUADRATIC {
            continue;
        }
        quadratic += r * r;
        members.sort_unstable_by(|a, b| b.cmp(a));
        for (i, &b) in members.iter().enumerate() {
            index[b] = i;
        }
        let words = r.div_ceil(64);
        let mut pdom = vec![0u64; r * words];
        for (i, &b) in members.iter().enumerate() {
            let sh = shape(b);
            let leaves = sh.exits || sh.succ.into_iter().flatten().any(|s| checkpoint[s]);
            let (done, rest) = pdom.split_at_mut(i * words);
            let mine = &mut rest[..words];
            if !leaves {
                let mut first = true;
                for s in sh.succ.into_iter().flatten() {
                    let theirs = &done[index[s] * words..(index[s] + 1) * words];
                    for (m, t) in mine.iter_mut().zip(theirs) {
                        *m = if first { *t } else { *m & *t };
                    }
                    first = false;
                }
            }
            mine[i / 64] |= 1 << (i % 64);
        }
        // Mandatory: post-dominates the checkpoint and in no other region.
        let ci = index[c];
        let mandatory: Vec<bool> = (0..r)
            .map(|i| pdom[ci * words + i / 64] & (1 << (i % 64)) != 0 && count[members[i]] == 1)
            .collect();
        let precharge: i32 = (0..r)
            .filter(|&i| mandatory[i])
            .map(|i| shape(members[i]).len)
            .sum();
        for (i, &b) in members.iter().enumerate() {
            if count[b] != 1 {
                continue;
            }
            let block = blocks[b].as_mut().expect("block start");
            if b == c {
                block.pend = 0;
                block.charge = precharge;
                continue;
            }
            block.pend = (0..r)
                .filter(|&j| mandatory[j] && pdom[i * words + j / 64] & (1 << (j % 64)) != 0)
                .map(|j| shape(members[j]).len)
                .sum();
            if mandatory[i] {
                block.charge = 0;
            }
        }
    }
    // What each region needs, with the final charges: a block `b` checks
    // `reg >= threshold(b)` where `reg` is the register at the checkpoint
    // less the checkpoint's charge and the charges of the blocks before
    // `b` (most along any path).
    let mut before = vec![i64::MIN; n];
    for (c, members) in &mut regions_kept {
        members.sort_unstable();
        let head = blocks[*c].expect("block start");
        let mut need = i64::from(head.run);
        before[*c] = 0;
        for &b in members.iter() {
            let block = blocks[b].expect("block start");
            let so_far = before[b];
            if b != *c {
                need = need.max(i64::from(block.threshold()) + i64::from(head.charge) + so_far);
            }
            let after = so_far + if b == *c { 0 } else { i64::from(block.charge) };
            for s in shape(b).succ.into_iter().flatten() {
                if !checkpoint[s] {
                    before[s] = before[s].max(after);
                }
            }
        }
        for &b in members.iter() {
            before[b] = i64::MIN;
        }
        region_need[*c] = i32::try_from(need).ok();
    }
    // The one region of each block in a single region.
    let mut region_of = vec![None; n];
    for (c, members) in &regions_kept {
        for &b in members {
            if count[b] == 1 {
                region_of[b] = Some(*c);
            }
        }
    }
    let mut plan = BudgetPlan {
        blocks,
        region_need,
        checkpoints: checkpoint,
        loop_heads,
        bias: vec![0; n],
    };
    let local_calls = ops.iter().any(|op| matches!(op, Op::CallLocal(_)));
    plan.set_biases(&region_of, local_calls);
    plan
}
