//! distillery: train small, fast text classifiers by knowledge distillation, and serve them.
//!
//! Layers, inner to outer: `ml` (Candle: tokenizer, models, training), then the service
//! parts built on it: `domain` (ids, states, records), `store` (database), `storage`
//! (object storage), `jobs` (training workers), `serving` (loaded models and batching),
//! `api` (HTTP) and `cli` (command line and wiring).

#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod domain;
pub mod jobs;
pub mod ml;
pub mod serving;
pub mod storage;
pub mod store;
