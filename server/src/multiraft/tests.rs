//! Unit tests of the driver on the in-memory engine and transport.
