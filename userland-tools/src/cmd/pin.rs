//! `ktrace pin list|rm` and `ktrace unload`: objects that outlive the
//! command that loaded them, and freeing them.
//!
//! What a client loads belongs to its session and is freed when the client
//! goes; a pin keeps it (Linux's bpffs pins, for the same reason:
//! `ktrace load` is one command, and what it loads must outlive it).
//!
//! ```text
//! ktrace pin list
//! ktrace pin rm count_calls        # freed unless a live client holds it
//! ktrace unload count_calls        # pin, object id, or object name
//! ```

use ktrace_abi::bpf::ObjectInfo;
use probe_sdk::runtime::Runtime;

use super::bpf_common::table;
use crate::kernel::connect;

/// Arguments of `ktrace pin`.
pub type Args = super::bpf_common::ObjectArgs<Command>;

/// `ktrace pin` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Pinned objects, with their maps, programs and links.
    List {
        /// Also list objects only a live client holds (not pinned).
        #[arg(short, long)]
        all: bool,
    },
    /// Remove a pin: the object is freed unless a live client holds it.
    Rm { name: String },
}

/// Arguments of `ktrace unload`.
#[derive(clap::Args, Debug)]
pub struct UnloadArgs {
    /// A pin name, an object id (see `ktrace pin list --all`), or the name
    /// of one loaded object.
    pub object: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn ids(v: &[u32]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

fn row(o: &ObjectInfo) -> Vec<String> {
    vec![
        o.id.to_string(),
        o.name.clone(),
        o.pin.clone().unwrap_or_else(|| "-".into()),
        o.session.map_or("-".into(), |s| s.to_string()),
        ids(&o.maps),
        ids(&o.programs),
        ids(&o.links),
    ]
}

const HEADER: [&str; 7] = ["ID", "NAME", "PIN", "SESSION", "MAPS", "PROGS", "LINKS"];

/// What an object was, in one line.
fn summary(o: &ObjectInfo) -> String {
    format!(
        "object {} (`{}`): {} maps, {} programs, {} links",
        o.id,
        o.name,
        o.maps.len(),
        o.programs.len(),
        o.links.len()
    )
}

/// Run `ktrace pin`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let mut client = connect(vm_name, "ktrace pin")?;
    let mut rt = Runtime::new(&mut client);
    match args.command {
        Command::List { all } => {
            let objects: Vec<ObjectInfo> = rt
                .objects()?
                .into_iter()
                .filter(|o| all || o.pin.is_some())
                .collect();
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&objects)?);
            } else {
                out!(
                    "{}",
                    table(&HEADER, &objects.iter().map(row).collect::<Vec<_>>())
                );
            }
        }
        Command::Rm { name } => {
            let o = rt.unpin(&name)?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&o)?);
            } else if o.session.is_some() {
                outln!(
                    "unpinned `{name}`: {} stays while session {} holds it",
                    summary(&o),
                    o.session.unwrap_or_default()
                );
            } else {
                outln!("unpinned `{name}`: freed {}", summary(&o));
            }
        }
    }
    Ok(())
}

/// Run `ktrace unload`.
pub fn unload(args: UnloadArgs, vm_name: &str) -> anyhow::Result<()> {
    let mut client = connect(vm_name, "ktrace unload")?;
    let o = Runtime::new(&mut client).object_unload(&args.object)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        outln!("freed {}", summary(&o));
    }
    Ok(())
}
