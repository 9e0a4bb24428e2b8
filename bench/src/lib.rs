//! Benchmark harness: the binaries under `src/bin/` each print figures against a baseline measured in the same run.
