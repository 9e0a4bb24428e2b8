//! A real gRPC round trip over loopback: the client's trace id reaches the server's span;
//! and the `trace_id` field that log lines show for an RPC and for a span starting a trace.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use threatmail_telemetry::{
    TraceContextInterceptor, current_trace_id, record_trace_id, server_span, tracer_provider,
};
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

/// Log lines written into a shared buffer.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The JSON text of a `trace_id` field (tracing-subscriber writes JSON without spaces).
fn field(trace_id: &str) -> String {
    format!("\"trace_id\":\"{trace_id}\"")
}

#[test]
fn an_rpcs_log_lines_carry_the_callers_trace_id_and_a_root_span_its_own() {
    let provider = tracer_provider("trace-id-field-test", None).expect("provider");
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_span_list(true)
                .with_writer(move || writer.clone()),
        )
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = http::Request::builder()
        .uri("/threatmail.v1.TokenBroker/GetToken")
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .body(())
        .expect("request");
    let rpc = server_span(&request);
    rpc.in_scope(|| {
        let _inner = tracing::info_span!("get_token").entered();
        tracing::info!("inside an rpc");
    });

    let round = tracing::info_span!("round", trace_id = tracing::field::Empty);
    record_trace_id(&round);
    let round_trace = round.in_scope(current_trace_id);
    round.in_scope(|| {
        let _inner = tracing::info_span!("sync_folder").entered();
        tracing::info!("inside a round");
    });

    let lines = lines.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (in_rpc, in_round) = (&lines[0], &lines[1]);
    assert!(in_rpc.contains("inside an rpc"), "{in_rpc}");
    // The event's own span is get_token; the rpc span above it shows in the span list.
    assert!(in_rpc.contains("\"spans\":[{"), "{in_rpc}");
    assert!(in_rpc.contains("\"name\":\"get_token\""), "{in_rpc}");
    assert!(in_rpc.contains(&field(caller_trace)), "{in_rpc}");
    assert_ne!(round_trace, caller_trace);
    assert_ne!(round_trace, "00000000000000000000000000000000");
    assert!(in_round.contains("inside a round"), "{in_round}");
    assert!(in_round.contains(&field(&round_trace)), "{in_round}");
    assert!(!in_round.contains(caller_trace), "{in_round}");
}
