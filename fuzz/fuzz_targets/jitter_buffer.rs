#![no_main]
//! `cargo fuzz run jitter_buffer`: see `server::fuzzing::jitter_buffer`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| server::fuzzing::jitter_buffer(data));
