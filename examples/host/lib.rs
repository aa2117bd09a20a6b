//! The host example lives in `host.rs`; this empty library only gives the package a root, so
//! that `cargo run --example host` works from the workspace.
