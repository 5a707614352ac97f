#![no_main]
// Entry point shared with the stable corpus replay: core/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ward_core::fuzzing::room(data));
