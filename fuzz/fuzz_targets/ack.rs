#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| depin_fuzz::ack(data));
