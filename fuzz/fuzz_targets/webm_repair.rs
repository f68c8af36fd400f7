#![no_main]
//! `cargo fuzz run webm_repair`: see `server::fuzzing::webm_repair`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| server::fuzzing::webm_repair(data));
