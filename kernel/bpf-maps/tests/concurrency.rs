//! The maps under real concurrency: host threads stand for CPUs.
//!
//! - A ring buffer fed by several producers (reserve + fill + commit or
//!   discard, and `output`) while one consumer drains it: every record is
//!   delivered exactly once or counted lost, each producer's records come
//!   out in its order, and the counters equal what the threads counted.
//! - Hash and LRU maps shared by all threads *without* any outer lock (as
//!   programs on every CPU use them: bucket locks inside the map), with
//!   threads inserting, deleting and looking up overlapping keys inside
//!   epoch guards (as programs do): no key lost or duplicated, the count
//!   equals the survivors, evictions account for the rest, no slot leaks,
//!   and a lock-free lookup never reads another key's value.
//! - Per-key counters incremented by every thread through update-in-place
//!   under the bucket lock: the totals are exact.
//! - A perf event array written by every "CPU" into its own buffer and by
//!   index into another's: loss is counted on the buffer that lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use ktrace_bpf_maps::{
    map_type, update_flags, Epochs, HashMap, MapError, MapSpec, PerfEventArray, PerfRecord,
    RingBuf, Waiter, F_CURRENT_CPU,
};

const THREADS: usize = 4;

/// xorshift64*: reproducible per-thread streams without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What one producer thread did.
#[derive(Default)]
struct Produced {
    submitted: u64,
    discarded: u64,
    lost: u64,
}

#[test]
fn ring_buffer_many_producers_one_consumer_delivers_each_record_once_or_counts_it_lost() {
    const PER_PRODUCER: u32 = 40_000;
    // Small, so the producers outrun the consumer and records get lost.
    let ring = Arc::new(RingBuf::new(64 * 1024).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(THREADS + 1));
    let consumer = {
        let (ring, done, start) = (ring.clone(), done.clone(), start.clone());
        thread::spawn(move || {
            start.wait();
            let mut got: Vec<(u32, u32)> = Vec::new();
            let mut buf = Vec::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                while ring.pop(&mut buf) {
                    let p = u32::from_le_bytes(buf[0..4].try_into().unwrap());
                    let seq = u32::from_le_bytes(buf[4..8].try_into().unwrap());
                    // Variable sizes: the tail repeats the sequence byte.
                    assert!(buf[8..].iter().all(|&b| b == seq as u8), "torn record");
                    got.push((p, seq));
                }
                if finished {
                    return got;
                }
                thread::yield_now();
            }
        })
    };
    let producers: Vec<_> = (0..THREADS)
        .map(|cpu| {
            let (ring, start) = (ring.clone(), start.clone());
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + cpu as u64);
                let mut did = Produced::default();
                start.wait();
                for seq in 0..PER_PRODUCER {
                    let extra = (rng.next() % 40) as usize;
                    let mut rec = Vec::with_capacity(8 + extra);
                    rec.extend_from_slice(&(cpu as u32).to_le_bytes());
                    rec.extend_from_slice(&seq.to_le_bytes());
                    rec.resize(8 + extra, seq as u8);
                    match rng.next() % 4 {
                        // bpf_ringbuf_output
                        0 => match ring.output(&rec, 0, cpu) {
                            Ok(()) => did.submitted += 1,
                            Err(MapError::NoSpace) => did.lost += 1,
                            Err(e) => panic!("output: {e}"),
                        },
                        // reserve, write, then submit or discard
                        r => match ring.reserve(rec.len(), cpu) {
                            None => did.lost += 1,
                            Some(addr) => {
                                ring.fill(addr, &rec).unwrap();
                                let discard = r == 3;
                                ring.commit(addr, discard, 0).unwrap();
                                // No second commit here: once committed, the
                                // consumer may pass the record and another
                                // producer reserve its space, which a stale
                                // address would then commit (see the module
                                // doc; the unit tests check a second commit
                                // of a record still in the ring fails).
                                if discard {
                                    did.discarded += 1;
                                } else {
                                    did.submitted += 1;
                                }
                            }
                        },
                    }
                }
                (cpu as u32, did)
            })
        })
        .collect();
    let mut submitted = 0;
    let mut discarded = 0;
    let mut lost = 0;
    let mut per_producer = [0u64; THREADS];
    for p in producers {
        let (cpu, did) = p.join().unwrap();
        assert_eq!(
            did.submitted + did.discarded + did.lost,
            u64::from(PER_PRODUCER)
        );
        per_producer[cpu as usize] = did.submitted;
        submitted += did.submitted;
        discarded += did.discarded;
        lost += did.lost;
    }
    done.store(true, Ordering::Release);
    let got = consumer.join().unwrap();

    // Delivered exactly the submitted records, none twice, in each
    // producer's order.
    assert_eq!(got.len() as u64, submitted);
    let unique: HashSet<(u32, u32)> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a record was delivered twice");
    let mut last = [None::<u32>; THREADS];
    let mut count = [0u64; THREADS];
    for &(p, seq) in &got {
        let p = p as usize;
        assert!(
            last[p] < Some(seq),
            "producer {p}: {seq} after {:?}",
            last[p]
        );
        last[p] = Some(seq);
        count[p] += 1;
    }
    assert_eq!(count, per_producer);
    let s = ring.stats();
    assert_eq!(
        (s.submitted, s.discarded, s.lost, s.consumed),
        (submitted, discarded, lost, submitted)
    );
    assert_eq!(ring.pending_bytes(), 0);
    assert!(lost > 0, "the test should overrun the ring at least once");
    eprintln!(
        "ring: {submitted} delivered, {discarded} discarded, {lost} lost of {}",
        THREADS as u64 * u64::from(PER_PRODUCER)
    );
}

fn hash(t: u32, max_entries: u32, epochs: Arc<Epochs>) -> HashMap {
    let spec = MapSpec {
        map_type: t,
        key_size: 4,
        value_size: 8,
        max_entries,
        flags: 0,
    };
    HashMap::new(
        spec,
        THREADS,
        t == map_type::PERCPU_HASH,
        t == map_type::LRU_HASH,
        epochs,
    )
    .unwrap()
}

/// Every key currently in `m`, by iteration; panics on a key seen twice.
fn keys(m: &HashMap) -> HashSet<u32> {
    let mut seen = HashSet::new();
    let mut cur: Option<Vec<u8>> = None;
    while let Ok(k) = m.next_key(cur.as_deref()) {
        let key = u32::from_le_bytes(k[..].try_into().unwrap());
        assert!(seen.insert(key), "key {key} iterated twice");
        cur = Some(k);
    }
    seen
}

/// Threads insert (NOEXIST) and delete random keys of a small shared key
/// space on one map shared without any outer lock, each operation inside
/// an epoch guard of the thread's "CPU" (as programs run) and some guards
/// held across several operations (a program that looked a value up and is
/// still running). Returns the map and, per key, the net count of
/// successful inserts minus deletes, and the evictions.
fn churn(t: u32, max_entries: u32, key_space: u32) -> (HashMap, Vec<i64>, u64) {
    const OPS: u32 = 30_000;
    let epochs = Arc::new(Epochs::new(THREADS));
    let map = Arc::new(hash(t, max_entries, epochs.clone()));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|cpu| {
            let (m, epochs, start) = (map.clone(), epochs.clone(), start.clone());
            thread::spawn(move || {
                let mut rng = Rng(0x5eed + cpu as u64);
                let mut net = vec![0i64; key_space as usize];
                let mut forever = || true;
                let mut w = Waiter::on_cpu(cpu, &mut forever);
                start.wait();
                for _ in 0..OPS {
                    let key = (rng.next() % u64::from(key_space)) as u32;
                    let k = key.to_le_bytes();
                    let _program = epochs.enter(cpu);
                    if rng.next().is_multiple_of(2) {
                        match m.update_on(
                            &k,
                            &u64::from(key).to_le_bytes(),
                            update_flags::NOEXIST,
                            Some(cpu),
                            &mut w,
                        ) {
                            Ok(()) => net[key as usize] += 1,
                            Err(MapError::Exists)
                            | Err(MapError::TooBig)
                            | Err(MapError::NoMemory) => {}
                            Err(e) => panic!("insert {key}: {e}"),
                        }
                    } else {
                        match m.delete_on(&k, &mut w) {
                            Ok(()) => net[key as usize] -= 1,
                            Err(MapError::NotFound) => {}
                            Err(e) => panic!("delete {key}: {e}"),
                        }
                    }
                    // A lookup without a lock (a program's) sees its own
                    // key's value or the zeroes of a fresh entry: the
                    // slot it finds is not reused while this "program"
                    // runs, whatever the other threads delete.
                    let other = (key + 1) % key_space;
                    if let Ok(Some(addr)) = m.value_addr_on(&other.to_le_bytes(), cpu, &mut w) {
                        // SAFETY: a value address of the map, which
                        // outlives this read; 8 bytes, 8-aligned.
                        let v = unsafe { std::ptr::read_volatile(addr as *const u64) };
                        assert!(v == u64::from(other) || v == 0, "key {other} holds {v}");
                    }
                    // A host lookup (under the bucket lock) too.
                    if let Ok(v) = m.lookup(&k) {
                        let own = if t == map_type::PERCPU_HASH {
                            &v[cpu * 8..cpu * 8 + 8]
                        } else {
                            &v[..8]
                        };
                        let other = u64::from_le_bytes(own.try_into().unwrap());
                        assert!(
                            other == u64::from(key) || other == 0,
                            "key {key} holds {other}"
                        );
                    }
                }
                net
            })
        })
        .collect();
    let mut net = vec![0i64; key_space as usize];
    for t in threads {
        for (n, d) in net.iter_mut().zip(t.join().unwrap()) {
            *n += d;
        }
    }
    let map = Arc::try_unwrap(map).ok().unwrap();
    let evictions = map.evictions();
    (map, net, evictions)
}

/// Every thread updates its own CPU's copy of a few shared per-CPU keys
/// (`BPF_EXIST`) while inserting and deleting other keys in the same
/// chains, all on one map without an outer lock: the shared keys are never
/// lost (an unlocked unlink of a neighbour would drop them, and the update
/// would fail with `ENOENT`), and every copy ends at its thread's last round.
#[test]
fn hash_keys_survive_concurrent_churn_of_their_chains() {
    const ROUNDS: u64 = 20_000;
    const KEYS: u32 = 8;
    let epochs = Arc::new(Epochs::new(THREADS));
    let spec = MapSpec {
        map_type: map_type::PERCPU_HASH,
        key_size: 4,
        value_size: 8,
        // Few buckets' worth of entries: the churn keys share chains with
        // the counted ones.
        max_entries: 32,
        flags: 0,
    };
    let map = Arc::new(HashMap::new(spec, THREADS, true, false, epochs.clone()).unwrap());
    for key in 0..KEYS {
        map.update(
            &key.to_le_bytes(),
            &[0; 8 * THREADS],
            update_flags::NOEXIST,
            None,
        )
        .unwrap();
    }
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|cpu| {
            let (m, epochs, start) = (map.clone(), epochs.clone(), start.clone());
            thread::spawn(move || {
                let mut forever = || true;
                let mut w = Waiter::on_cpu(cpu, &mut forever);
                start.wait();
                for round in 1..=ROUNDS {
                    let _program = epochs.enter(cpu);
                    for key in 0..KEYS {
                        m.update_on(
                            &key.to_le_bytes(),
                            &round.to_le_bytes(),
                            update_flags::EXIST,
                            Some(cpu),
                            &mut w,
                        )
                        .unwrap();
                    }
                    // Churn in the same chains.
                    let churn = (100 + cpu as u32 * 4 + (round % 4) as u32).to_le_bytes();
                    let _ = m.update_on(&churn, &[1; 8], update_flags::ANY, Some(cpu), &mut w);
                    let _ = m.delete_on(&churn, &mut w);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for key in 0..KEYS {
        let v = map.lookup(&key.to_le_bytes()).unwrap();
        for cpu in 0..THREADS {
            let lane = u64::from_le_bytes(v[cpu * 8..cpu * 8 + 8].try_into().unwrap());
            assert_eq!(lane, ROUNDS, "key {key}, CPU {cpu}");
        }
    }
    assert_eq!(map.len(), KEYS as usize);
}

/// After the churn: no slot leaked. With every key deleted and no
/// program running, the map takes `max_entries` new keys again and
/// refuses one more.
fn assert_no_leak(m: HashMap, max_entries: u32) {
    for k in keys(&m) {
        m.delete(&k.to_le_bytes()).unwrap();
    }
    assert!(m.is_empty());
    for i in 0..max_entries {
        m.update(
            &(1_000_000 + i).to_le_bytes(),
            &[0; 8],
            update_flags::NOEXIST,
            Some(0),
        )
        .unwrap_or_else(|e| panic!("slot {i} of {max_entries} leaked: {e}"));
    }
    assert_eq!(m.len(), max_entries as usize);
}

#[test]
fn hash_concurrent_insert_delete_of_overlapping_keys_loses_and_leaks_nothing() {
    for t in [map_type::HASH, map_type::PERCPU_HASH] {
        let (m, net, evictions) = churn(t, 64, 48);
        assert_eq!(evictions, 0);
        let present = keys(&m);
        for (key, &n) in net.iter().enumerate() {
            let want = present.contains(&(key as u32));
            assert_eq!(n, i64::from(want), "type {t} key {key}: net inserts {n}");
        }
        assert_eq!(m.len(), present.len());
        assert_no_leak(m, 64);
    }
}

/// More keys than entries on a plain (and a per-CPU) hash map: inserts
/// into the full map are refused, and the entry count, which changes only
/// under the pool lock with a plain store (no atomic add), matches the keys
/// present after the churn: a lost or doubled count update would show as a
/// wrong `len()` or a refused or extra slot in `assert_no_leak`. Then a
/// tight loop of each thread inserting and deleting its own keys (so every
/// operation succeeds and changes the count) ends with the count at 0.
#[test]
fn hash_full_map_refuses_inserts_and_counts_every_entry() {
    for t in [map_type::HASH, map_type::PERCPU_HASH] {
        let (m, net, evictions) = churn(t, 16, 48);
        assert_eq!(evictions, 0);
        let present = keys(&m);
        assert!(present.len() <= 16, "{} keys in a map of 16", present.len());
        assert_eq!(m.len(), present.len(), "type {t}");
        for (key, &n) in net.iter().enumerate() {
            let want = present.contains(&(key as u32));
            assert_eq!(n, i64::from(want), "type {t} key {key}: net inserts {n}");
        }
        assert_no_leak(m, 16);
    }
    const ROUNDS: u32 = 200_000;
    let epochs = Arc::new(Epochs::new(THREADS));
    let map = Arc::new(hash(map_type::HASH, 4 * THREADS as u32, epochs));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|cpu| {
            let (m, start) = (map.clone(), start.clone());
            thread::spawn(move || {
                let mut forever = || true;
                let mut w = Waiter::on_cpu(cpu, &mut forever);
                start.wait();
                for round in 0..ROUNDS {
                    let k = (cpu as u32 * 4 + round % 4).to_le_bytes();
                    m.update_on(&k, &[1; 8], update_flags::NOEXIST, Some(cpu), &mut w)
                        .unwrap();
                    m.delete_on(&k, &mut w).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(map.len(), 0);
    assert!(keys(&map).is_empty());
}

#[test]
fn lru_concurrent_insert_delete_accounts_for_every_entry() {
    // More keys than entries: inserts into the full map evict.
    let (m, net, evictions) = churn(map_type::LRU_HASH, 16, 48);
    let present = keys(&m);
    assert!(m.len() <= 16);
    assert_eq!(m.len(), present.len());
    for (key, &n) in net.iter().enumerate() {
        // Each eviction of a key leaves one net insert behind (the key
        // may come back); a present key has at least one.
        let here = i64::from(present.contains(&(key as u32)));
        assert!(n >= here, "key {key}: net inserts {n}, present {here}");
    }
    let net_total: i64 = net.iter().sum();
    assert_eq!(net_total as u64, m.len() as u64 + evictions);
    assert!(evictions > 0);
    assert_no_leak(m, 16);
}

#[test]
fn perf_event_array_counts_loss_on_the_buffer_that_lost() {
    const PER_THREAD: u32 = 5_000;
    let spec = MapSpec {
        map_type: map_type::PERF_EVENT_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: THREADS as u32,
        flags: 0,
    };
    let perf = Arc::new(PerfEventArray::new(spec, THREADS, 4096).unwrap());
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|cpu| {
            let (perf, start) = (perf.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let (mut ok, mut lost) = (0u64, 0u64);
                // CPU `c` writes 64 * (c + 1) bytes per record into its
                // own buffer, and every 10th record into buffer 0.
                let rec = vec![cpu as u8; 64 * (cpu + 1)];
                for i in 0..PER_THREAD {
                    let index = if i % 10 == 0 { 0 } else { F_CURRENT_CPU };
                    match perf.output(index, cpu, &rec) {
                        Ok(()) => ok += 1,
                        Err(MapError::NoSpace) => lost += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (ok, lost)
            })
        })
        .collect();
    let (mut ok, mut lost) = (0, 0);
    for t in threads {
        let (o, l) = t.join().unwrap();
        ok += o;
        lost += l;
    }
    let mut out: Vec<PerfRecord> = Vec::new();
    while perf.drain(1000, &mut out) > 0 {}
    assert_eq!(out.len() as u64, ok);
    let per_cpu: Vec<_> = perf.cpu_stats().collect();
    assert_eq!(per_cpu.iter().map(|s| s.lost).sum::<u64>(), lost);
    assert_eq!(per_cpu.iter().map(|s| s.submitted).sum::<u64>(), ok);
    for (cpu, s) in per_cpu.iter().enumerate() {
        let delivered = out.iter().filter(|r| r.cpu == cpu as u32).count() as u64;
        assert_eq!(s.consumed, delivered, "cpu {cpu}");
        assert!(s.lost > 0, "cpu {cpu}: a 4 KiB buffer must overflow");
    }
}
