//! Arbitrary bytes as a kprobe program; when the verifier accepts it, it
//! runs in the checked interpreter, which must not fault. Map lookups return
//! a 64-byte value of the array map; other helpers return plain numbers.
#![no_main]

use bpf_vm::insn::LdImm64Src;
use bpf_vm::interp::{HelperError, HelperMem, Helpers, Vm};
use bpf_vm::verifier::linux::{self, map_type};
use bpf_vm::verifier::{verify, Config, Env, MapDef};
use bpf_vm::Executable;
use libfuzzer_sys::fuzz_target;

struct H {
    /// Address of the map value (a region of the run).
    value: u64,
}

impl Helpers for H {
    fn call(
        &mut self,
        id: u32,
        args: [u64; 5],
        mem: &mut HelperMem<'_>,
    ) -> Result<u64, HelperError> {
        match id {
            1 => {
                mem.read(args[1], 4)?;
                Ok(self.value)
            }
            4 | 45 | 113 | 115 | 16 => {
                mem.write(args[0], &vec![0; args[1] as usize])?;
                Ok(0)
            }
            _ => Ok(0),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(prog) = bpf_vm::decode(data) else {
        return;
    };
    let helpers = linux::helpers();
    let pt = linux::kprobe();
    let maps = [MapDef {
        fd: 0,
        map_type: map_type::ARRAY,
        key_size: 4,
        value_size: 64,
        max_entries: 1,
    }];
    let env = Env {
        prog_type: &pt,
        helpers: &helpers,
        maps: &maps,
    };
    let config = Config {
        max_insns: 100_000,
        ..Config::default()
    };
    if verify(prog.insns(), &env, &config).is_err() {
        return;
    }
    let mut value = [0u8; 64];
    let region = bpf_vm::interp::MemRegion::writable(&mut value);
    let base = region.addr();
    let exe = Executable::with_resolver(&prog, |s| match s {
        LdImm64Src::MapFd(_) | LdImm64Src::MapIdx(_) => Some(0xdead_0000),
        LdImm64Src::MapValueFd { off, .. } | LdImm64Src::MapValueIdx { off, .. } => {
            Some(base + off as u64)
        }
        LdImm64Src::Imm(v) => Some(v),
    })
    .expect("an accepted program prepares");
    let mut ctx = [7u8; 168];
    let mut h = H { value: base };
    if let Err(e) = Vm::new().run_checked(&exe, &mut ctx, &mut h, &[region], 10_000_000) {
        panic!("verifier accepted a program that faults: {e}");
    }
});
