//! `neonet-relay`: the standalone server.
fn main() {}
