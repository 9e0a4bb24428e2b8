//! Tracing set-up for every threatmail process, and W3C trace-context propagation over gRPC.
//!
//! [`init`] installs one subscriber: an `EnvFilter`, the [`wire_cap`] no filter can lift,
//! human or JSON log lines, and an OpenTelemetry layer. The layer is always present so spans carry W3C trace ids that
//! [`TraceContextInterceptor`] can put in outgoing gRPC metadata and [`server_span`] can
//! continue on the receiving side; spans are exported over OTLP only when an endpoint is
//! configured. One trace thus follows a sync from the fetcher into the token broker.
//!
//! The spans that start or continue a trace (every RPC's [`server_span`], and the spans a
//! service marks with [`record_trace_id`]) carry the trace id as a `trace_id` field, and
//! JSON log lines list every open span with its fields (`spans`, root first), so each line
//! can be matched to its trace without a collector.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event, for log shippers.
    Json,
}

/// The telemetry section of every service's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An `EnvFilter` directive such as `info` or `threatmail_fetcher=debug,info`;
    /// `RUST_LOG`, when set, wins.
    pub filter: String,
    /// Human or JSON log lines.
    pub format: LogFormat,
    /// An OTLP/gRPC collector such as `http://127.0.0.1:4317`; spans are exported only
    /// when this is set.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            format: LogFormat::Human,
            otlp_endpoint: None,
        }
    }
}

/// Errors of [`init`].
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter directive does not parse.
    #[error("failed to parse the log filter {filter:?}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error("failed to set up the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber was installed already.
    #[error("failed to install the tracing subscriber")]
    Install(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps the tracer provider alive; dropping it flushes and shuts down span export.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Flushes what the batch exporter still holds; failures here have nowhere to go.
        let _ = self.provider.shutdown();
    }
}

/// Libraries whose most verbose level logs what goes over the wire, and the most verbose
/// level they may log at whatever the filter says: async-imap traces every command it
/// encodes, `AUTHENTICATE XOAUTH2`'s bearer token and `LOGIN`'s password among them, and
/// every response, the mail itself.
const WIRE_LOGGERS: [(&str, tracing::Level); 1] = [("async_imap", tracing::Level::DEBUG)];

/// A filter that keeps [`WIRE_LOGGERS`] below their wire-level logging and lets everything
/// else through; stacked after the `EnvFilter`, so `RUST_LOG=trace` cannot write a token
/// to the log.
pub fn wire_cap() -> tracing_subscriber::filter::Targets {
    WIRE_LOGGERS.into_iter().fold(
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::TRACE),
        |targets, (target, level)| targets.with_target(target, level),
    )
}

/// Installs the process-wide subscriber for `service_name`.
///
/// Must be called from within a tokio runtime when an OTLP endpoint is configured (the
/// exporter runs on it).
pub fn init(
    service_name: &str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => directive,
        _ => config.filter.clone(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter {
        filter: filter.clone(),
        source,
    })?;
    let provider = tracer_provider(service_name, config.otlp_endpoint.as_deref())?;
    let tracer = provider.tracer(service_name.to_owned());
    let fmt_layer = match config.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colours only for a person at a terminal, not in files and pipes.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            // Every open span, so a line deep inside a sync still shows its trace_id.
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(env_filter)
        .with(wire_cap())
        .with(fmt_layer)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(TelemetryError::Install)?;
    Ok(TelemetryGuard { provider })
}

/// A tracer provider that always assigns W3C ids and exports only when `endpoint` is set.
pub fn tracer_provider(
    service_name: &str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// A tonic client interceptor that writes the current span's context into the request's
/// metadata as a W3C `traceparent` (and `tracestate`) header.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_context(request.metadata_mut());
        Ok(request)
    }
}

/// Writes the current span's W3C trace context into `metadata`.
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Reads a W3C trace context from HTTP headers (gRPC metadata travels as headers).
pub fn extract_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The span of one incoming RPC, continuing the caller's trace when the request carries
/// one, with that trace's id in its `trace_id` field (so the RPC's log lines show the
/// caller's trace). Use it with `tonic::transport::Server::builder().trace_fn(server_span)`.
pub fn server_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        rpc.path = %request.uri().path(),
        otel.kind = "server",
        trace_id = tracing::field::Empty,
    );
    // Fails only when the span was already started with another parent; it was just made.
    let _ = span.set_parent(extract_context(request.headers()));
    // Only after set_parent: reading the id starts the OpenTelemetry span, fixing its parent.
    record_trace_id(&span);
    span
}

/// Records `span`'s W3C trace id in its `trace_id` field, which the span must declare
/// (`trace_id = tracing::field::Empty`). For the spans that start a unit of work, such as
/// a fetcher's round over one source: its log lines, and through [`server_span`] those of
/// the RPCs it makes, can then be matched by trace id.
pub fn record_trace_id(span: &tracing::Span) {
    span.record("trace_id", trace_id_of(span).as_str());
}

/// The W3C trace id of the current span, as 32 hex digits (all zeros when there is none).
pub fn current_trace_id() -> String {
    trace_id_of(&tracing::Span::current())
}

fn trace_id_of(span: &tracing::Span) -> String {
    use opentelemetry::trace::TraceContextExt as _;
    span.context().span().span_context().trace_id().to_string()
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value.as_str());
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
