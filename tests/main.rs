//! The single integration-test binary: real models, real readers, real files.

mod cli;
mod correct;
mod eval;
mod frame;
mod io;
mod metrics;
mod pipeline;
mod post;
mod util;
mod viewer;
