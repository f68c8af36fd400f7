#![no_main]
//! `cargo fuzz run offer_sdp`: see `server::fuzzing::offer_sdp`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| server::fuzzing::offer_sdp(data));
