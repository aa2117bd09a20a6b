//! neonet's examples live in `chat.rs` and its folder; this empty library only gives the
//! package a root, so that `cargo run --example chat` works from the workspace.
