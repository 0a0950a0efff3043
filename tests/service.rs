//! Integration tests of the service: real servers on 127.0.0.1:0 with fresh data folders,
//! driven over HTTP; the store's tests on SQLite and, when `DISTILLERY_TEST_POSTGRES_URL`
//! is set, on PostgreSQL; with it, also one API and two worker processes of the binary
//! sharing that database and one storage (`cluster`).
//!
//! One entry file, so that the tests link into one binary.

#[path = "service/common.rs"]
mod common;

#[path = "service/api_errors.rs"]
mod api_errors;
#[path = "service/auth.rs"]
mod auth;
#[path = "service/cluster.rs"]
mod cluster;
#[path = "service/datasets.rs"]
mod datasets;
#[path = "service/openapi.rs"]
mod openapi;
#[path = "service/recovery.rs"]
mod recovery;
#[path = "service/store.rs"]
mod store;
#[path = "service/training.rs"]
mod training;
#[path = "service/transformer.rs"]
mod transformer;
