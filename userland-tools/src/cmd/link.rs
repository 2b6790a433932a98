//! `ktrace link list|detach`: where programs are attached.

use probe_sdk::runtime::Runtime;

use super::bpf_common::table;
use super::load::link_target;
use crate::kernel::connect;

/// Arguments of `ktrace link`.
pub type Args = super::bpf_common::ObjectArgs<Command>;

/// `ktrace link` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Every link: program, attach point, hits, order on its point.
    List,
    /// Detach a link (the program stays loaded).
    Detach { id: u32 },
}

/// Run `ktrace link`.
pub fn run(args: Args, vm_name: &str) -> anyhow::Result<()> {
    let mut client = connect(vm_name, "ktrace link")?;
    let mut rt = Runtime::new(&mut client);
    match args.command {
        Command::List => {
            let links = rt.links()?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&links)?);
            } else {
                let rows: Vec<Vec<String>> = links
                    .iter()
                    .map(|l| {
                        vec![
                            l.id.to_string(),
                            l.prog.to_string(),
                            link_target(&l.target),
                            l.hits.to_string(),
                            l.order.to_string(),
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    table(&["ID", "PROG", "TARGET", "HITS", "ORDER"], &rows)
                );
            }
        }
        Command::Detach { id } => {
            rt.detach(id)?;
            if args.json {
                outln!("{}", serde_json::json!({ "detached": id }));
            } else {
                outln!("detached link {id}");
            }
        }
    }
    Ok(())
}
