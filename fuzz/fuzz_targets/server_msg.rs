//! libFuzzer entry point of [`neonet_fuzz::server_msg`] (see fuzz/Cargo.toml).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neonet_fuzz::server_msg(data));
