//! Deterministic motion scenarios and the in-process bandwidth runner.
