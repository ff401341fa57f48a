//! The single integration-test binary: real models, real readers, real files.

mod cli;
mod correct;
mod eval;
mod frame;
mod hostile;
mod io;
mod metrics;
mod pipeline;
mod post;
mod provider;
mod shard;
mod util;
mod viewer;
