//! Behaviour tests of the transform stream: replicator and receiver together.
