//! fog-server
