//! The HTTP surface: `fn router(state)` builds everything, so tests can drive
//! it with `oneshot` and no socket.

mod health;
mod ingest;
mod prometheus;
mod thingsboard;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::{get, post};
use axum::Router;
use futures_util::future::Either;
use tower::Service;

pub use ingest::epoch_ms;

use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

/// The path of the ingest route, served beside the router (see [`App`]).
const INGEST_PATH: &str = "/api/ingest";

/// The whole HTTP service; serve it with `axum::serve(listener, app.into_make_service())`.
pub fn router(state: AppState) -> App {
    let routes = Router::new()
        .route(INGEST_PATH, post(ingest::ingest))
        .route("/api/v1/{token}/telemetry", post(thingsboard::telemetry))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(prometheus::router())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state.clone());
    App { state, routes }
}

/// `POST /api/ingest`, nearly every request under load, goes straight to its
/// handler; every other request goes through the axum router (where ingest is
/// routed too, for the 405 of its other methods). Both ways take the same
/// deadline and metrics. Why: the router's layers cost about a dozen
/// allocations and as many boxed calls per request, a sizeable share of a
/// one-reading request's CPU.
#[derive(Clone)]
pub struct App {
    state: AppState,
    routes: Router,
}

type IngestFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<IngestFuture, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.method() == Method::POST && request.uri().path() == INGEST_PATH {
            let state = self.state.clone();
            let route = metrics::route_label(Some(INGEST_PATH));
            return Either::Left(Box::pin(async move {
                Ok(observed(&state, route, ingest::handle(&state, request)).await)
            }));
        }
        Either::Right(self.routes.call(request))
    }
}

/// The router's one layer (one layer is cheaper than two on the hot path).
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = metrics::route_label(request.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    observed(&state, route, next.run(request)).await
}

/// Bounds a request by the request timeout (body upload included; past the
/// deadline the handler is dropped and the client told to retry), then counts
/// it by route template and status and times it.
async fn observed(state: &AppState, route: usize, handler: impl Future<Output = Response>) -> Response {
    let start = Instant::now();
    let response = match tokio::time::timeout(state.config.request_timeout, handler).await {
        Ok(response) => response,
        Err(_) => state.unavailable("request timed out").into_response(),
    };
    metrics::request(route, response.status(), start.elapsed());
    response
}

#[cfg(test)]
mod tests;
