//! libFuzzer entry point of [`neonet_fuzz::frame_decoder`] (see fuzz/Cargo.toml).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neonet_fuzz::frame_decoder(data));
