//! Domain types shared by every threatmail crate.
