//! The simulated web server (`levee backend`).
