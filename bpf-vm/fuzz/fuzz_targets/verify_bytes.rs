//! Arbitrary bytes as a kprobe program: the verifier must return (accept or
//! reject) without panicking, within its instruction budget.
#![no_main]

use bpf_vm::verifier::linux::{self, map_type};
use bpf_vm::verifier::{verify_bytes, Config, Env, MapDef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = [
        MapDef {
            fd: 0,
            map_type: map_type::HASH,
            key_size: 4,
            value_size: 8,
            max_entries: 64,
        },
        MapDef {
            fd: 1,
            map_type: map_type::ARRAY,
            key_size: 4,
            value_size: 64,
            max_entries: 16,
        },
        MapDef {
            fd: 2,
            map_type: map_type::RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: 4096,
        },
    ];
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
    let config = Config {
        max_insns: 100_000,
        ..Config::default()
    };
    let _ = verify_bytes(data, &env, &config);
});
