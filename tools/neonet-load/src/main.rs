//! `neonet-load`: the load tool.
//!
//! - `neonet-load run`: N simulated clients against a relay over real sockets, with a progress
//!   bar, a report table and optional JSON ([`run`]);
//! - `neonet-load sim`: entity replication over the in-memory simulated network ([`sim`]);
//! - `neonet-load proxy`: the UDP impairment proxy as a process ([`proxy_cmd`]);
//! - `neonet-load fanout`: server CPU per datagram, bare quinn against the relay ([`fanout`]).
//!
//! Exit status: 0 on success; 1 on an error, when any `run` client failed unexpectedly, or when
//! the relay refused a `run` change for a reason other than `Busy` or `RateLimited` (see
//! `driver::refusal_expected`); 2 on a usage error.

mod behaviour;
mod cli;
mod cpu;
mod driver;
mod fanout;
mod fanout_proto;
mod light;
mod proxy_cmd;
mod relay_proc;
mod report;
mod run;
mod sim;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match init_tracing(&cli.log).and_then(|()| dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let targets: Targets = filter
        .parse()
        .with_context(|| format!("bad --log {filter:?}: a level, or target=level pairs"))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .with(targets)
        .init();
    Ok(())
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Fanout(args) => fanout::main(args),
        Command::Sim(args) => sim::run(args).map(|()| ExitCode::SUCCESS),
        Command::Proxy(args) => {
            runtime()?.block_on(proxy_cmd::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            if let Some(cpu) = args.load_cpu {
                // Before the runtime starts: its threads inherit the pin.
                cpu::pin_current_thread(cpu)
                    .with_context(|| format!("pinning the load tool to CPU {cpu}"))?;
            }
            let report = runtime()?.block_on(run::run(args))?;
            if report.refusals_unexpected > 0 {
                eprintln!(
                    "neonet-load: the relay refused {} changes for reasons a run does not expect \
                     (only Busy and RateLimited are): exit status 1; see the first errors",
                    report.refusals_unexpected
                );
            }
            Ok(if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}
