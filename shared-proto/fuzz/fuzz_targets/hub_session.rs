//! Fuzz target: the hub's sync session, driven by a script of reads, timers, manifest
//! changes and EOF. The invariants are in `shared_proto::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shared_proto::fuzzing::hub_session(data));
