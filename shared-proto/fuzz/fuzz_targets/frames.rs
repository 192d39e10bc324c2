//! Fuzz target: the frame decoder, with arbitrary bytes cut into arbitrary pieces and
//! every body decoded as every frame type. The invariants are in `shared_proto::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shared_proto::fuzzing::frames(data));
