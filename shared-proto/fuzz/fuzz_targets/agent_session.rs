//! Fuzz target: the agent's sync session, driven by a script of reads, timers, report
//! changes and EOF. The invariants are in `shared_proto::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shared_proto::fuzzing::agent_session(data));
