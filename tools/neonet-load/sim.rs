//! `neonet-load sim`: entity replication over the deterministic in-memory network.
//!
//! The measurement itself (transforms, prediction, bandwidth per entity) lives in
//! `neonet_proto`; this module only turns [`SimArgs`] into a run and prints the result.

use crate::cli::SimArgs;

/// Runs the simulation described by `args` and prints its results (a table, or JSON with
/// `--json`).
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    println!("not yet wired");
    anyhow::bail!(
        "`neonet-load sim` is not yet wired to the transform and prediction measurement \
         ({:?} scenario, {} entities, {} clients requested)",
        args.scenario,
        args.entities,
        args.clients
    )
}
