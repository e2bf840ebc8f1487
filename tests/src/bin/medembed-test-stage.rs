//! The `echo` test stage as a worker binary, configured like every medembed worker
//! (defaults → `MEDEMBED__…` environment). Used by the crash, shutdown and broker tests.

use medembed_pipeline::config::Settings;
use medembed_pipeline::{runner, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    telemetry::init(&settings.log);
    runner::run_worker(
        &settings,
        prometheus::Registry::new(),
        medembed_e2e::EchoStage,
    )
    .await?;
    Ok(())
}
