//! `ktrace perf list`: the perf events open in the kernel and who holds
//! them (a `kperf stat`'s counters, a `kperf record`'s sampling timer, a
//! BPF `perf_event` link's), as `bpftool perf list` shows the perf events
//! of a Linux system. Read-only: nothing is opened to find out, so it
//! never competes for the one sampling timer it reports on.

use ktrace_abi::trace::{PerfEvent, PerfEventInfo, PerfHolder, ProbeTarget};
use probe_sdk::trace::TraceClient;

use super::bpf_common::table;
use crate::kernel::connect;
use crate::tools::kperf;

/// Arguments of `ktrace perf`.
pub type Args = super::bpf_common::ObjectArgs<Command>;

/// `ktrace perf` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Open perf events: id, holder, enabled or not, what each counts or
    /// samples; then whether the sampling timer is free.
    List,
}

/// An event the way `kperf` names it (`-e`), or the sampling it does.
pub fn event_name(ev: &PerfEvent) -> String {
    match ev {
        PerfEvent::Software(s) => kperf::SOFTWARE
            .iter()
            .find(|(_, _, e, _)| e == s)
            .map_or_else(|| format!("{s:?}"), |(name, ..)| name.to_string()),
        PerfEvent::Hardware(h) => kperf::HARDWARE
            .iter()
            .find(|(_, e)| e == h)
            .map_or_else(|| format!("{h:?}"), |(name, _)| name.to_string()),
        PerfEvent::Tracepoint { name } => name.clone(),
        PerfEvent::Kprobe {
            target: ProbeTarget::Symbol { name, offset: 0 },
        } => format!("kprobe:{name}"),
        PerfEvent::Kprobe {
            target: ProbeTarget::Symbol { name, offset },
        } => format!("kprobe:{name}+{offset:#x}"),
        PerfEvent::Kprobe {
            target: ProbeTarget::Address(a),
        } => format!("kprobe:{a:#x}"),
        PerfEvent::Sampling {
            freq_hz,
            max_stack: 0,
        } => format!("sampling at {freq_hz} Hz"),
        PerfEvent::Sampling { freq_hz, max_stack } => {
            format!("sampling at {freq_hz} Hz, call chains of up to {max_stack} frames")
        }
    }
}

/// Who holds an event, in words.
pub fn holder_name(h: &PerfHolder) -> String {
    match h {
        PerfHolder::Client {
            session,
            client_generation,
        } => format!("session {session} client {client_generation}"),
        PerfHolder::Kernel => "kernel (BPF link)".into(),
    }
}

/// The table of open events, then the sampling timer's state.
pub fn render(events: &[PerfEventInfo]) -> String {
    let mut s = if events.is_empty() {
        "no perf events open\n".to_string()
    } else {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    holder_name(&e.holder),
                    if e.enabled { "enabled" } else { "disabled" }.into(),
                    event_name(&e.event),
                ]
            })
            .collect();
        table(&["ID", "HOLDER", "STATE", "EVENT"], &rows)
    };
    match events
        .iter()
        .find(|e| matches!(e.event, PerfEvent::Sampling { .. }))
    {
        Some(e) => {
            s += &format!(
                "sampling timer: in use by event {} ({})\n",
                e.id,
                holder_name(&e.holder)
            )
        }
        None => s += "sampling timer: free\n",
    }
    s
}

/// Run `ktrace perf`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let mut client = connect(vm_name, "ktrace perf")?;
    match args.command {
        Command::List => {
            let events = client.list_perf()?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                out!("{}", render(&events));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktrace_abi::trace::SoftwareEvent;

    #[test]
    fn renders_each_holder_and_event_kind() {
        let client = PerfHolder::Client {
            session: 2,
            client_generation: 5,
        };
        let events = [
            PerfEventInfo {
                id: 3,
                event: PerfEvent::Software(SoftwareEvent::ContextSwitches),
                enabled: true,
                holder: client,
            },
            PerfEventInfo {
                id: 4,
                event: PerfEvent::Kprobe {
                    target: ProbeTarget::Symbol {
                        name: "kernel::probe_tests::add3".into(),
                        offset: 4,
                    },
                },
                enabled: false,
                holder: client,
            },
            PerfEventInfo {
                id: 9,
                event: PerfEvent::Sampling {
                    freq_hz: 99,
                    max_stack: 32,
                },
                enabled: true,
                holder: PerfHolder::Kernel,
            },
        ];
        assert_eq!(
            render(&events),
            "ID  HOLDER              STATE     EVENT\n\
             3   session 2 client 5  enabled   context-switches\n\
             4   session 2 client 5  disabled  kprobe:kernel::probe_tests::add3+0x4\n\
             9   kernel (BPF link)   enabled   sampling at 99 Hz, call chains of up to 32 frames\n\
             sampling timer: in use by event 9 (kernel (BPF link))\n"
        );
        assert_eq!(render(&[]), "no perf events open\nsampling timer: free\n");
    }
}
