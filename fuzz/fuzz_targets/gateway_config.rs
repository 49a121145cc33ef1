#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| depin_gateway::fuzzing::config(data));
