//! Stand-alone runtime helper for tests and benchmarks: the same `helper_main` the agent
//! binary runs when re-executed as `flotilla-agent runtime-helper --root <dir>`, and the
//! pod holder (`pod-holder`) that pods with a user namespace start.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref() == Some(std::ffi::OsStr::new(agent_runtime::POD_HOLDER_SUBCOMMAND)) {
        return agent_runtime::pod_holder_main();
    }
    if first.as_deref() != Some(std::ffi::OsStr::new(agent_runtime::HELPER_SUBCOMMAND)) {
        eprintln!("usage: flotilla-runtime-helper {} --root <dir>", agent_runtime::HELPER_SUBCOMMAND);
        return ExitCode::from(64);
    }
    agent_runtime::helper_main(args)
}
