//! `ktrace tracepoint`: the kernel's static tracepoints and their formats.

use clap::Subcommand;
use ktrace_abi::trace::TracepointInfo;
use probe_sdk::client::ConnectOptions;
use probe_sdk::trace::TraceClient;
use probe_sdk::vm::Vm;

/// Arguments of `ktrace tracepoint`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: TracepointCommand,
}

/// The `ktrace tracepoint` subcommands.
#[derive(Subcommand, Debug)]
pub enum TracepointCommand {
    /// Every tracepoint (`category:name`), with call sites and attachments.
    List {
        /// Also print each record's format, like Linux's `format` files.
        #[arg(short, long)]
        verbose: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The listing.
pub fn render(tps: &[TracepointInfo], verbose: bool) -> String {
    let mut s = String::new();
    for t in tps {
        s += &format!(
            "{}:{}  (record {} bytes, {} call site{}, {} attached, {} hits)\n",
            t.category,
            t.name,
            t.size,
            t.sites,
            if t.sites == 1 { "" } else { "s" },
            t.refcount,
            t.hits
        );
        if verbose {
            for f in &t.fields {
                s += &format!(
                    "\tfield:{} {};\toffset:{};\tsize:{};\tsigned:{};\n",
                    f.type_name,
                    f.name,
                    f.offset,
                    f.size,
                    u8::from(f.signed)
                );
            }
        }
    }
    s
}

/// Run `ktrace tracepoint`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let vm = Vm::attach(vm_name)?;
    let mut client = vm.connect(&ConnectOptions {
        client_name: "ktrace tracepoint".into(),
        ..ConnectOptions::default()
    })?;
    match args.command {
        TracepointCommand::List { verbose, json } => {
            let tps = client.list_tracepoints()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&tps)?);
            } else {
                out!("{}", render(&tps, verbose));
            }
        }
    }
    Ok(())
}
