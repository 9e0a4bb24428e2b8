//! Tracing set-up and W3C trace-context propagation over gRPC.
