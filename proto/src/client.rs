//! One participant's core.
