//! The training core: tokenizer, recurrent classifiers, distillation, trainer, checkpoints.
//!
//! Candle only: nothing here knows about SQL or HTTP. The service drives it through
//! [`pipeline::run`] (train a job) and [`predictor::Predictor`] (serve a model).

pub mod augment;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod evaluation;
pub mod kernels;
pub mod loss;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod pipeline;
pub mod predictor;
pub mod progress;
pub mod rng;
pub mod teacher;
pub mod threads;
pub mod tokenizer;
pub mod train;
pub mod transfer;
pub mod transformer;
