//! Client prediction, server reconciliation, clock sync and interpolation.
