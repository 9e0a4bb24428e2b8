//! Who is calling a threatmail service.
