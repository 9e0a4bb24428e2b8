//! A real gRPC round trip over loopback: the client's trace id reaches the server's span.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use threatmail_telemetry::{TraceContextInterceptor, server_span, tracer_provider};
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::test]
async fn trace_context_crosses_a_grpc_call() -> Result<(), Box<dyn std::error::Error>> {
    let provider = tracer_provider("propagation-test", None)?;
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen_by_server = Arc::clone(&seen);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .trace_fn(move |request| {
                let span = server_span(request);
                let trace_id = span.context().span().span_context().trace_id().to_string();
                seen_by_server.lock().expect("lock").push(trace_id);
                span
            })
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::with_interceptor(channel, TraceContextInterceptor);

    let span = tracing::info_span!("client-call");
    let client_trace = span.context().span().span_context().trace_id().to_string();
    {
        let _entered = span.enter();
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
    }
    // A call made outside any span starts a trace of its own on the server.
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    server.abort();

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "two RPCs, two server spans: {seen:?}");
    assert_ne!(client_trace, "00000000000000000000000000000000");
    assert_eq!(
        seen[0], client_trace,
        "the server span continues the client's trace"
    );
    assert_ne!(
        seen[1], client_trace,
        "an untraced call does not reuse the trace"
    );
    Ok(())
}
