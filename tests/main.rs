//! The single integration-test binary: real models, real readers, real files.

mod cli;
mod io;
mod pipeline;
mod post;
mod util;
