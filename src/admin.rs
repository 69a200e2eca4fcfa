//! The admin listener: the publish API, channel listing, health, readiness and metrics.
//!
//! Owns: the admin routes. Does not: serve anything to the public listeners.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::State;
use crate::respond::{Body, Rejection, text, with_body};

/// prometheus-client writes OpenMetrics (`# TYPE x counter` over `x_total` samples, `# EOF`);
/// labelled as the classic 0.0.4 text format, Prometheus would drop every counter's type.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves one admin request.
pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let config = state.config.load_full();
    let res = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET | &Method::HEAD, "/readyz") => Ok(readyz(state)),
        (&Method::GET, "/metrics") => Ok(with_body(StatusCode::OK, METRICS_CONTENT_TYPE, state.metrics.encode())),
        (&Method::POST, "/publish") => crate::publish::publish(state, &config, req).await,
        (&Method::GET, "/channels") => crate::publish::channels(state, &config, &req),
        (&Method::GET, "/presence") => crate::publish::presence(state, &config, &req),
        (_, "/publish" | "/channels" | "/presence") => {
            Err(Rejection::json(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "method not allowed"))
        }
        _ => Err(Rejection::not_found()),
    };
    res.unwrap_or_else(Rejection::into_response)
}

/// Ready while the listeners are up, the broker is reachable and we are not draining.
fn readyz(state: &State) -> Response<Body> {
    if state.shutdown.is_triggered() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !state.broker.is_ready() {
        text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable\n")
    } else {
        text(StatusCode::OK, "ready\n")
    }
}
