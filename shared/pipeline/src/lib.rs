//! medembed-pipeline owns everything the medembed stages share and nothing stage-specific:
//! layered [`config`], the [`messages`] that travel between stages, the [`queue`] (RabbitMQ or
//! in-process), the [`store`] (S3 or a local directory), Parquet I/O over the store ([`table`]),
//! the [`runner`] that turns a [`runner::Stage`] impl into a worker with retries, dead-lettering
//! and graceful shutdown, and the worker's [`metrics`] and health endpoints.
//!
//! A stage crate implements one trait; its `main` is a few lines: load settings, init logging,
//! call [`runner::run_worker`].

pub mod cli;
pub mod config;
pub mod jobs;
pub mod keys;
pub mod messages;
pub mod metrics;
pub mod queue;
pub mod runner;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod table;
pub mod telemetry;
pub mod testing;
