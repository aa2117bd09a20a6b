//! `neonet-load`: the load tool.
fn main() {}
