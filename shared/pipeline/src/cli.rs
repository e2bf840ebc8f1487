//! The command line every worker binary shares: where its settings come from.

use std::path::PathBuf;

use crate::config::{ConfigError, Settings};

/// Arguments of a medembed worker. Everything else is configuration: compiled-in defaults, then
/// `--config FILE`, then `MEDEMBED__SECTION__KEY` environment variables (see configs/default.toml).
#[derive(Debug, clap::Parser)]
pub struct WorkerArgs {
    /// A TOML file layered over the defaults (e.g. configs/distributed.toml).
    #[arg(long, value_name = "FILE", env = "MEDEMBED_CONFIG")]
    pub config: Option<PathBuf>,
}

impl WorkerArgs {
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        Settings::load(self.config.as_deref())
    }
}
