#![no_main]
//! `cargo fuzz run rtp_depacketize`: see `server::fuzzing::rtp_depacketize`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| server::fuzzing::rtp_depacketize(data));
