//! Transform codec benchmarks.
fn main() {}
