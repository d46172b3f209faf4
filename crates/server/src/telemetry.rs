//! Optional export of the node's spans to an OpenTelemetry collector (OTLP: protobuf over
//! HTTP, from the SDK's batch thread), and the W3C `traceparent` of incoming requests.
//!
//! Off unless `otlp_endpoint` is set. Then every span the log filter lets through
//! (`request`, `session`, `append`; `route` at debug) is exported with its fields as
//! attributes, a request with a `traceparent` continues the caller's trace, and each request
//! span records its trace id in `trace_id`, so that JSON log lines carry it.

use axum::http::HeaderMap;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

/// Whether spans are exported: without it a request has no trace to join or record.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The exporter; [`Export::shutdown`] sends what is still batched.
pub struct Export(SdkTracerProvider);

impl Export {
    /// Flushes the spans not sent yet and stops the exporter.
    pub fn shutdown(self) {
        if let Err(err) = self.0.shutdown() {
            tracing::warn!(error = %err, "flushing the OTLP exporter");
        }
    }
}

/// The tracing layer that exports spans to `endpoint` (`http(s)://host:4318`; `/v1/traces`
/// is appended unless it is there), naming the service `natter` and the node `node`.
pub fn otlp_layer<S>(
    endpoint: &str,
    node: Option<&str>,
) -> anyhow::Result<(OpenTelemetryLayer<S, Tracer>, Export)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    let exporter =
        opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(url).build()?;
    let mut resource = Resource::builder().with_service_name("natter");
    if let Some(node) = node {
        resource = resource
            .with_attribute(opentelemetry::KeyValue::new("service.instance.id", node.to_owned()));
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("natter"));
    Ok((layer, Export(provider)))
}

/// The request headers, as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Continues the caller's trace (`traceparent`) in `span` and records the trace id in its
/// `trace_id` field; nothing when spans are not exported.
pub(crate) fn link(span: &tracing::Span, headers: &HeaderMap) {
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let id = span.context().span().span_context().trace_id();
    if id != TraceId::INVALID {
        span.record("trace_id", id.to_string());
    }
}
