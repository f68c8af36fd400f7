#![no_main]
//! `cargo fuzz run signaling_json`: see `server::fuzzing::signaling_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| server::fuzzing::signaling_json(data));
