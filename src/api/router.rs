//! Every route of the API, in one table, and the layers around them.
//!
//! The table also yields [`ROUTES`], which a test compares with `openapi.yaml`.

use axum::extract::DefaultBodyLimit;
use axum::routing::{on, MethodFilter};
use axum::Router;

use crate::api::handlers::{datasets, jobs, models, ops, predict, pretrained};
use crate::api::{middleware, ApiError, AppState};

macro_rules! route_table {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route as (method, path), in the order of the table.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        fn add_routes(router: Router<AppState>) -> Router<AppState> {
            router $(.route($path, on(MethodFilter::$method, $handler)))*
        }
    };
}

route_table! {
    GET    "/health"                       => ops::health,
    GET    "/ready"                        => ops::ready,
    GET    "/metrics"                      => ops::metrics,
    POST   "/v1/datasets"                  => datasets::create,
    GET    "/v1/datasets"                  => datasets::list,
    GET    "/v1/datasets/{id}"             => datasets::show,
    DELETE "/v1/datasets/{id}"             => datasets::delete,
    POST   "/v1/jobs"                      => jobs::create,
    GET    "/v1/jobs"                      => jobs::list,
    GET    "/v1/jobs/{id}"                 => jobs::show,
    POST   "/v1/jobs/{id}/cancel"          => jobs::cancel,
    GET    "/v1/jobs/{id}/events"          => jobs::events,
    GET    "/v1/models"                    => models::list,
    GET    "/v1/models/{id}"               => models::show,
    DELETE "/v1/models/{id}"               => models::delete,
    GET    "/v1/models/{id}/files/{file}"  => models::file,
    POST   "/v1/models/{id}/promote"       => models::promote,
    POST   "/v1/models/{id}/predict"       => predict::with_model,
    POST   "/predict"                      => predict::with_default,
    GET    "/v1/pretrained"                => pretrained::list,
}

/// Routes of a process without the public API (`distillery worker`).
const OPERATIONS_ROUTES: [&str; 3] = ["/health", "/ready", "/metrics"];

/// The application: routes, fallbacks, limits, API key check, and request tracking.
pub fn app(state: AppState) -> Router {
    let mut router = add_routes(Router::new());
    if !state.public_api {
        router = Router::new();
        router = router
            .route(OPERATIONS_ROUTES[0], on(MethodFilter::GET, ops::health))
            .route(OPERATIONS_ROUTES[1], on(MethodFilter::GET, ops::ready))
            .route(OPERATIONS_ROUTES[2], on(MethodFilter::GET, ops::metrics));
    }
    router
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_key))
        .layer(axum::middleware::from_fn(middleware::track))
        .with_state(state)
}
