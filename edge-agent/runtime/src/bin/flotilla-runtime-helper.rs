//! Stand-alone runtime helper for tests and benchmarks: the same `helper_main` the agent
//! binary runs when re-executed as `flotilla-agent runtime-helper --root <dir>`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(agent_runtime::HELPER_SUBCOMMAND)) {
        eprintln!("usage: flotilla-runtime-helper {} --root <dir>", agent_runtime::HELPER_SUBCOMMAND);
        return ExitCode::from(64);
    }
    agent_runtime::helper_main(args)
}
