//! central: being built.
