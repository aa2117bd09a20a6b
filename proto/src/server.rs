//! The authoritative world core.
