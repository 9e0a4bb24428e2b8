//! MIME parsing and indicator extraction.
