//! The admin listener: health, readiness and metrics (the publish API joins it with the
//! realtime core).
//!
//! Owns: the admin routes. Does not: serve anything to the public.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::State;
use crate::respond::{Body, Rejection, text, with_body};

/// prometheus-client writes OpenMetrics (`# TYPE x counter` over `x_total` samples, `# EOF`);
/// labelled as the classic 0.0.4 text format, Prometheus would drop every counter's type.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves one admin request.
pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => readyz(state),
        (&Method::GET, "/metrics") => with_body(StatusCode::OK, METRICS_CONTENT_TYPE, state.metrics.encode()),
        _ => Rejection::not_found().into_response(),
    }
}

/// Ready while the listeners are up and not draining (the memory broker is always
/// reachable).
fn readyz(state: &State) -> Response<Body> {
    if state.shutdown.is_triggered() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        text(StatusCode::OK, "ready\n")
    }
}
