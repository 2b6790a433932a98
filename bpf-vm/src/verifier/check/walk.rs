//! The walk: explores every path from the entry with a worklist of pending
//! branches, stores states at prune points and prunes a path whose state
//! an explored one includes, detects infinite loops, and keeps stored
//! states and pending branches within the state-memory budget.

use super::{Checker, Flow, R};
use crate::verifier::error::{Rule, VerifyError};
use crate::verifier::state::{state_includes, Frame, PtrKind, Reg, State};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Most branches waiting to be explored at once (Linux's limit), which
/// bounds the memory of pending states.
const MAX_PENDING: usize = 8192;
/// Minimum instructions on a path between two stored states.
const STORE_EVERY: u32 = 8;

/// A state stored at a prune point.
pub(super) struct Node {
    state: State,
    /// Paths still being explored below this node (0: fully explored).
    branches: u32,
    parent: Option<u32>,
    /// Some path below this node depended on a scalar's value (a bounds
    /// check, a decided branch, a size argument): then scalars must be
    /// compared by value when pruning against it; otherwise by type only.
    precise: bool,
}

/// A path waiting to be explored.
pub(super) struct Pending {
    state: State,
    pc: usize,
    parent: Option<u32>,
    from: usize,
    /// Instructions processed on this path since it last stored a state.
    since: u32,
}

impl Checker<'_> {
    /// Explores every path; `Ok` when all of them are safe.
    pub fn run(&mut self) -> R<()> {
        let mut init = State {
            frames: vec![Frame::new(0, 0, 0)],
            refs: Vec::new(),
            next_id: 0,
        };
        init.frames[0].regs[1] = Reg::ptr(PtrKind::Ctx);
        self.push_pending(
            0,
            Pending {
                state: init,
                pc: 0,
                parent: None,
                from: 0,
                since: 0,
            },
        )?;
        while let Some(p) = self.pending.pop() {
            self.state_bytes -= p.state.heap_bytes();
            let Pending {
                state: mut st,
                mut pc,
                mut parent,
                from,
                mut since,
            } = p;
            if self.log.on(1) && pc != 0 {
                let mut s = String::new();
                st.dump(&mut s);
                self.log.line(1, format_args!("from {from} to {pc}: {s}"));
            }
            loop {
                if pc >= self.prog.len() {
                    // The control-flow pass rules this out; never index past the end.
                    return Err(self.err_at(
                        pc.min(self.prog.len().saturating_sub(1)),
                        Some(&st),
                        Rule::Internal,
                        format!("execution reached slot {pc}, past the end of the program"),
                    ));
                }
                self.stats.insns_processed += 1;
                if self.stats.insns_processed > self.cfg.max_insns {
                    return Err(self.err_at(
                        pc,
                        Some(&st),
                        Rule::Complexity,
                        format!(
                            "program too complex: processed {} instructions (limit {}); make every loop's bound visible to the verifier (compare the counter with a constant)",
                            self.stats.insns_processed, self.cfg.max_insns
                        ),
                    ));
                }
                since = since.saturating_add(1);
                if self.graph.prune_point[pc] {
                    // Like Linux, store a checkpoint only every few
                    // instructions: comparisons still happen at every prune
                    // point, but memory stays proportional to the work done.
                    let store = since >= STORE_EVERY;
                    match self.prune(&st, pc, parent, store)? {
                        None => {
                            self.log.line(1, format_args!("{pc}: safe"));
                            self.finish(parent);
                            break;
                        }
                        Some(p) => {
                            if p != parent {
                                since = 0;
                            }
                            parent = p;
                        }
                    }
                }
                if self.log.on(1) {
                    let t = self.text(pc);
                    self.log.line(1, format_args!("{pc}: {t}"));
                }
                let flow = self.step(&mut st, pc)?;
                if self.need_precise {
                    self.need_precise = false;
                    self.mark_precise(parent);
                }
                if self.log.on(2) {
                    let mut s = String::new();
                    st.dump(&mut s);
                    self.log.line(2, format_args!("{pc}: {s}"));
                }
                match flow {
                    Flow::Next(n) => pc = n,
                    Flow::Fork(other, other_pc, n) => {
                        if self.pending.len() >= MAX_PENDING {
                            return Err(self.err_at(
                                pc,
                                Some(&st),
                                Rule::Complexity,
                                format!(
                                    "program too complex: the sequence of {} jumps is too complex",
                                    MAX_PENDING + 1
                                ),
                            ));
                        }
                        self.push_pending(
                            pc,
                            Pending {
                                state: other,
                                pc: other_pc,
                                parent,
                                from: pc,
                                since,
                            },
                        )?;
                        if let Some(p) = parent {
                            self.nodes[p as usize].branches += 1;
                        }
                        self.peak();
                        pc = n;
                    }
                    Flow::Done => {
                        self.finish(parent);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues a branch to explore, charging its state's memory, and the
    /// queue's own storage when it grows (it never shrinks, so that part
    /// stays charged after branches are taken off).
    fn push_pending(&mut self, pc: usize, p: Pending) -> R<()> {
        self.charge(pc, &p.state, p.state.heap_bytes())?;
        if self.pending.len() == self.pending.capacity() {
            let slot = core::mem::size_of::<Pending>();
            let old = self.pending.capacity() * slot;
            let new_cap = (2 * self.pending.capacity()).max(16);
            // While it grows, the old block and the new one both exist.
            self.charge(pc, &p.state, new_cap * slot)?;
            if self
                .pending
                .try_reserve_exact(new_cap - self.pending.len())
                .is_err()
            {
                return Err(self.out_of_memory(pc));
            }
            self.state_bytes -= old;
        }
        self.pending.push(p);
        Ok(())
    }

    /// Counts `bytes` more of state memory, refusing the program when that
    /// goes past [`Config::max_state_bytes`](crate::verifier::Config::max_state_bytes).
    fn charge(&mut self, pc: usize, st: &State, bytes: usize) -> R<()> {
        let total = self.state_bytes.saturating_add(bytes);
        if total > self.cfg.max_state_bytes {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Complexity,
                format!(
                    "program too complex: its stored states and pending branches need more than the verifier's {} KiB of state memory (processed {} instructions, stored {} states, {} branches pending)",
                    self.cfg.max_state_bytes >> 10,
                    self.stats.insns_processed,
                    self.stats.states_stored,
                    self.pending.len()
                ),
            ));
        }
        self.state_bytes = total;
        self.stats.peak_state_bytes = self.stats.peak_state_bytes.max(total as u64);
        Ok(())
    }

    /// The allocator refused memory for a state: a refusal, not a panic.
    /// (No register dump: that would allocate again.)
    fn out_of_memory(&self, pc: usize) -> VerifyError {
        self.err_at(
            pc,
            None,
            Rule::Complexity,
            format!(
                "out of memory: no room for another verifier state after storing {} ({} KiB)",
                self.stats.states_stored,
                self.state_bytes >> 10
            ),
        )
    }

    fn peak(&mut self) {
        let now = (self.nodes.len() + self.pending.len()) as u64;
        if now > self.stats.peak_states {
            self.stats.peak_states = now;
        }
    }

    /// Marks `parent` and its ancestors as depending on scalar values.
    fn mark_precise(&mut self, mut parent: Option<u32>) {
        while let Some(p) = parent {
            let n = &mut self.nodes[p as usize];
            if n.precise {
                // Ancestors of a marked node were marked with it.
                break;
            }
            n.precise = true;
            parent = n.parent;
        }
    }

    /// A path below `parent` ended: propagate completion upwards.
    fn finish(&mut self, mut parent: Option<u32>) {
        while let Some(p) = parent {
            let n = &mut self.nodes[p as usize];
            n.branches = n.branches.saturating_sub(1);
            if n.branches > 0 {
                break;
            }
            parent = n.parent;
        }
    }

    /// Live registers for each frame of `st` at `pc`.
    fn live_masks(&self, st: &State, pc: usize) -> Vec<u16> {
        let n = st.frames.len();
        let mut out = vec![0u16; n];
        for (k, m) in out.iter_mut().enumerate() {
            if k + 1 == n {
                *m = self.graph.live_in[pc];
            } else {
                let ret = st.frames[k + 1].callsite + 1;
                // After the return r0..r5 are overwritten: only r6..r10 matter.
                *m = self.graph.live_in.get(ret).copied().unwrap_or(u16::MAX) & 0b111_1100_0000;
            }
        }
        out
    }

    /// Compares with stored states at `pc`. `None`: prune this path.
    fn prune(
        &mut self,
        st: &State,
        pc: usize,
        parent: Option<u32>,
        store: bool,
    ) -> R<Option<Option<u32>>> {
        let live = self.live_masks(st, pc);
        for &id in &self.at[pc] {
            let node = &self.nodes[id as usize];
            if node.branches == 0 {
                if state_includes(&node.state, st, &live, node.precise) {
                    self.stats.states_pruned += 1;
                    if node.precise {
                        // The rest of this path is the old one's: so are its dependencies.
                        self.mark_precise(parent);
                    }
                    return Ok(None);
                }
            } else if state_includes(&node.state, st, &live, true)
                && state_includes(st, &node.state, &live, true)
            {
                return Err(self.err_at(
                    pc,
                    Some(st),
                    Rule::Complexity,
                    format!(
                        "infinite loop detected at insn {pc}: the state repeats without progress"
                    ),
                ));
            }
        }
        if !store || self.at[pc].len() >= self.cfg.max_states_per_insn {
            return Ok(Some(parent));
        }
        if self.nodes.len() as u64 >= self.cfg.max_states {
            return Err(self.err_at(
                pc,
                Some(st),
                Rule::Complexity,
                format!(
                    "program too complex: more than {} states stored (processed {} instructions)",
                    self.cfg.max_states, self.stats.insns_processed
                ),
            ));
        }
        // As for pending branches: three slots per element in `nodes` and
        // in the instruction's list.
        let slots = 3 * (core::mem::size_of::<Node>() + core::mem::size_of::<u32>());
        self.charge(pc, st, st.heap_bytes() + slots)?;
        if self.nodes.try_reserve(1).is_err() || self.at[pc].try_reserve(1).is_err() {
            return Err(self.out_of_memory(pc));
        }
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            state: st.clone(),
            branches: 1,
            parent,
            precise: false,
        });
        self.at[pc].push(id);
        self.stats.states_stored += 1;
        self.peak();
        Ok(Some(Some(id)))
    }
}
