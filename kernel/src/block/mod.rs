//! The block layer: devices, request queues, drivers, tracepoints and the
//! in-kernel workload generator. The reusable core (bios, requests,
//! schedulers and merging, statistics) is the `ktrace-block` crate; this
//! module is the kernel glue around it.
//!
//! # The path of an I/O
//!
//! 1. A task builds bios and calls [`queue::RequestQueue::submit`] with a batch
//!    (its *plug*), then sleeps on its [`queue::Completion`].
//! 2. Each bio is checked (size, range: a failure completes it at once
//!    with that error), counted and traced (`block_bio_queue`), and handed
//!    to the device's scheduler, which merges it into a queued request
//!    (`block_bio_backmerge` / `block_bio_frontmerge`) or makes a new one
//!    (`block_rq_insert`).
//! 3. Dispatch: while the driver's hardware queue has room, the scheduler
//!    gives up its next request (`block_rq_issue`) and the driver starts it.
//! 4. The device interrupt (virtio-blk) or the next pass of the queue (RAM
//!    disk) reaps finished requests (`block_rq_complete`), updates the
//!    statistics, hands every bio back to its submitter's completion (which
//!    wakes it) and dispatches more in the same pass.
//!
//! # Choices, and why
//!
//! - **Dispatch trigger: queue depth plus plugging.** A request is
//!   dispatched as soon as the hardware queue has room, so a device is
//!   never idle while work waits; a submitter that has several bios at
//!   hand submits them as one plugged batch, so they meet in the scheduler
//!   (and merge) before the first is dispatched. A timer trigger only adds
//!   latency: at queue depth 1 a request would wait for the tick with the
//!   device idle. Measured with the workload generator (plug on/off,
//!   sequential 4 KiB writes at depth 8): with the plug eight bios become
//!   one 32 KiB request (8x fewer requests and interrupts) at equal IOPS on
//!   virtio-blk and more IOPS on the RAM disk; without it nothing merges,
//!   because an idle device takes the first bio before the next arrives
//!   (figures in `docs/block-layer.md`).
//! - **Completion from the device interrupt**, not a polling thread: under
//!   QEMU's TCG a poller burns the only CPU the submitters and the emulated
//!   device's notifications need; the interrupt costs one trap per batch
//!   of completions (the handler reaps the whole used ring).
//! - **One lock per device** with interrupts off: scheduler, driver and
//!   statistics change together, and the interrupt handler needs them all.
//!
//! Devices: `vda`, `vdb`, ... (virtio-blk, major 253, minors 0, 16, ...)
//! and `ram0` (RAM disk, major 1, minor 0).

// `unsafe` lives in the hardware corner (arch, mm, drivers, task, sync,
// ksyms: see main.rs) behind safe interfaces; this subsystem uses those.
#![deny(unsafe_code)]

pub mod queue;
pub mod ramdisk;
pub mod trace;
pub mod virtio;
pub mod workload;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use ktrace_abi::block::{BlockRequest, BlockResponse, IoOp, IoReply, MAX_IO_BYTES};
use ktrace_abi::{ErrorCode, Response};
use ktrace_block::{BlockError, Op};

use crate::error::{Answer, Error, Kind};
use crate::session::{Link, Session};
use queue::RequestQueue;

/// Linux's dynamic major of virtio-blk on most systems.
const VIRTIO_MAJOR: u32 = 253;
/// Linux's major of RAM disks.
const RAMDISK_MAJOR: u32 = 1;

static DEVICES: spin::Once<Vec<Arc<RequestQueue>>> = spin::Once::new();
static VIRTIO_DEVICES: spin::Once<Vec<Arc<RequestQueue>>> = spin::Once::new();

/// Every block device.
pub fn devices() -> &'static [Arc<RequestQueue>] {
    DEVICES.get().map_or(&[], Vec::as_slice)
}

/// A device by name.
pub fn find(name: &str) -> Option<&'static Arc<RequestQueue>> {
    devices().iter().find(|d| d.name == name)
}

fn on_virtio_interrupt() {
    for dev in VIRTIO_DEVICES.get().map_or(&[][..], Vec::as_slice) {
        dev.interrupt();
    }
}

/// Find the disks, start their queues, route their interrupts.
pub fn init() {
    let mut all = Vec::new();
    let mut virtio = Vec::new();
    let mut gsis = Vec::new();
    for (i, found) in virtio::probe().into_iter().enumerate() {
        let name = format!("vd{}", (b'a' + (i % 26) as u8) as char);
        let dev = Arc::new(RequestQueue::new(
            &name,
            VIRTIO_MAJOR,
            (i as u32) * 16,
            Box::new(found.driver),
        ));
        log::info!(
            "block: {name}: virtio-blk at slot {}, {} MiB, GSI {}",
            found.slot,
            dev.capacity >> 11,
            found.gsi
        );
        if !gsis.contains(&found.gsi) {
            gsis.push(found.gsi);
        }
        virtio.push(dev.clone());
        all.push(dev);
    }
    match ramdisk::RamDisk::new(ramdisk::DEFAULT_BYTES) {
        Some(rd) => {
            let dev = Arc::new(RequestQueue::new("ram0", RAMDISK_MAJOR, 0, Box::new(rd)));
            log::info!("block: ram0: RAM disk, {} MiB", dev.capacity >> 11);
            all.push(dev);
        }
        None => log::warn!("block: no memory for the RAM disk"),
    }
    VIRTIO_DEVICES.call_once(|| virtio);
    DEVICES.call_once(|| all);
    for gsi in gsis {
        if let Err(e) = crate::drivers::intx::register(gsi, on_virtio_interrupt) {
            log::error!("block: cannot take the interrupt of GSI {gsi}: {e}");
        }
    }
}

fn err(code: ErrorCode, message: String) -> Error {
    Error::plain(code, message)
}

fn no_device(name: &str) -> Error {
    let known: Vec<&str> = devices().iter().map(|d| d.name.as_str()).collect();
    err(
        ErrorCode::NotFound,
        format!("no block device {name:?}; devices: {}", known.join(", ")),
    )
}

/// The refusal for a failed I/O: the block layer's message and errno.
fn io_error(dev: &str, e: BlockError) -> Error {
    let message = format!("{dev}: {e}");
    Error::new(Kind::Io(e), message)
}

/// Answer a block request of `session`'s client (control task); a
/// workload tells it its progress through `link`.
///
/// Never inlined, for users: it is the block layer's entry point, the one
/// function every block request from the host passes, and a place users
/// probe by name (`ktrace probe add kernel::block::handle`). Left to the
/// compiler, whether it stays out of line would depend on codegen-unit
/// partitioning, which differs from one build path to another. No test
/// relies on it: the symbols tests take their functions from the index.
#[inline(never)]
pub fn handle(req: BlockRequest, session: &Session, link: &dyn Link) -> Answer {
    Ok(match req {
        BlockRequest::Stats => Response::Block(BlockResponse::Stats(
            devices().iter().map(|d| d.stats()).collect(),
        )),
        BlockRequest::SetScheduler { dev, scheduler } => match find(&dev) {
            None => return Err(no_device(&dev)),
            Some(d) => match d.set_scheduler(&scheduler) {
                Ok(()) => Response::Ok,
                Err(m) => return Err(err(ErrorCode::InvalidArgument, m)),
            },
        },
        BlockRequest::Io(io) => {
            let Some(d) = find(&io.dev) else {
                return Err(no_device(&io.dev));
            };
            let (op, data) = match io.op {
                IoOp::Read => {
                    if io.len > MAX_IO_BYTES {
                        return Err(err(
                            ErrorCode::Limit,
                            format!(
                                "{}: a single read moves at most {MAX_IO_BYTES} bytes, not {}",
                                io.dev, io.len
                            ),
                        ));
                    }
                    (Op::Read, alloc::vec![0u8; io.len as usize])
                }
                IoOp::Write => (Op::Write, io.data),
                IoOp::Flush => (Op::Flush, Vec::new()),
            };
            let (data, status, latency_ns) = queue::submit_and_wait(d, op, io.sector, data);
            match status {
                Ok(()) => Response::Block(BlockResponse::Io(IoReply {
                    data: if op == Op::Read { data } else { Vec::new() },
                    latency_ns,
                })),
                Err(e) => return Err(io_error(&io.dev, e)),
            }
        }
        BlockRequest::Workload(spec) => Response::Block(BlockResponse::Workload(workload::run(
            &spec, session, link,
        )?)),
        BlockRequest::InjectErrors { dev, sectors } => match find(&dev) {
            None => return Err(no_device(&dev)),
            Some(d) => match d.inject_errors(sectors) {
                Ok(()) => Response::Ok,
                Err(m) => return Err(err(ErrorCode::NotSupported, format!("{dev}: {m}"))),
            },
        },
    })
}
