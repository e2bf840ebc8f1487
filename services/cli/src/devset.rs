//! `medembed dev-set`: writes a finished job's held-out dev set in the BEIR format
//! ([`medembed_pair_builder::devset`] says how it is made), for `medembed eval --beir`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use medembed_pipeline::config::Settings;
use medembed_pipeline::store;

#[derive(Debug, Args)]
pub struct DevSetArgs {
    /// The job (default: the newest job whose index is built).
    job: Option<String>,
    /// Read the local store of `medembed run` in DIR instead of the configured store.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The folder to write corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv to (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The name of the judgements file: qrels/SPLIT.tsv.
    #[arg(long, default_value = "test")]
    split: String,
}

pub async fn dev_set(settings: Settings, args: DevSetArgs) -> anyhow::Result<()> {
    let settings = crate::with_data_dir(settings, args.data);
    let store = store::open(&settings.store).await?;
    let job = crate::job_or_newest(store.as_ref(), args.job.as_deref()).await?;
    if args.out.join("corpus.jsonl").exists() {
        bail!(
            "{} holds a collection already (corpus.jsonl): choose another --out or remove it",
            args.out.display()
        );
    }
    let set = medembed_pair_builder::devset::job_dev_set(store.as_ref(), job, &settings.pairs)
        .await
        .map_err(|e| anyhow::anyhow!("job {job}: {e}"))?;
    if set.queries.is_empty() {
        bail!(
            "job {job}: no held-out article has a citation, MeSH or keyword relation to another \
             article, so there is nothing to judge; a dev set needs a larger corpus on one topic"
        );
    }
    set.write(&args.out, &args.split)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let judgements: usize = set.qrels.values().map(|j| j.len()).sum();
    eprintln!(
        "job {job}: {} documents, {} queries, {judgements} judgements in {}",
        set.corpus.len(),
        set.queries.len(),
        args.out.display()
    );
    Ok(())
}
