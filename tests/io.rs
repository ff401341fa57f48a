//! Readers on real files.
