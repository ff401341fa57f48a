//! The built binary on real and broken inputs.
