//! libFuzzer entry point of [`neonet_fuzz::client_msg`] (see fuzz/Cargo.toml).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neonet_fuzz::client_msg(data));
