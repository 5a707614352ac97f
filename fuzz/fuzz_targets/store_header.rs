#![no_main]
// Entry point shared with the stable corpus replay: sdk/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ward_sdk::fuzzing::store_header(data));
