//! topology: being built.
