//! The HTTP API: routes, handlers, wire types and the one error shape.
//!
//! `router` lists every route in one table; `handlers` hold one module per resource;
//! `dto` holds the wire types, apart from the domain types; `error` maps every failure
//! to a status and a stable code. Requests pass through `middleware` (request log and
//! metrics, then the API key check) before reaching a handler.

pub mod dto;
pub mod error;
mod extract;
mod handlers;
mod middleware;
pub mod router;
pub mod state;

pub use error::ApiError;
pub use router::{app, ROUTES};
pub use state::{ApiKey, AppState, Limits};
