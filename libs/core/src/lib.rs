//! Domain types shared by every threatmail crate.

pub mod mutf7;
