//! A dev set in the BEIR format, made from a job's own corpus, to choose search settings with
//! (`medembed dev-set`, then `medembed eval --beir`).
//!
//! Queries come only from held-out articles: those of the test split (the pair-builder's
//! document-level [`split`](crate::split)), which no training pair touches; an article found in
//! `pairs/train.parquet` anyway is left out. Each held-out article with a relation to another
//! article becomes a query: its title, as a user might type a question on its topic. Its
//! judgements grade every other article of the corpus, in any split:
//!
//! - 2: a citation link, either way;
//! - 1: MeSH descriptors overlapping at or above `pairs.mesh_threshold` (the pair-builder's own
//!   IDF-weighted Jaccard, check tags left out), or author keywords at `pairs.keyword_threshold`.
//!
//! Training articles are judged like the others, as a user's search over the whole corpus
//! judges them. Judging held-out articles alone (the first version) counted every training
//! article a fine-tuned model ranked high as a miss, related or not, and so measured any
//! fine-tuning on the corpus as a loss. No relation of a held-out article is trained on either
//! way: pairs never cross splits.
//!
//! The corpus is the whole job corpus; the query's own article is in it too, and evaluators
//! skip it (its id is the query id, BEIR's `ignore_identical_ids`). It is a proxy: titles are not
//! the questions users ask, and relations come from the same signals the training pairs come
//! from. Use it to compare settings on one corpus, not as a claim about real queries.

use std::collections::{HashMap, HashSet};

use medembed_corpus::pairs::{Split, pair_schema, pairs_from_batches};
use medembed_corpus::raw::RawManifest;
use medembed_pipeline::config::PairSettings;
use medembed_pipeline::messages::JobId;
use medembed_pipeline::runner::StageError;
use medembed_pipeline::store::ObjectStore;
use medembed_pipeline::{keys, table};
use medembed_retrieval::beir::{BeirDocument, BeirQuery, BeirSet};

use crate::build::{CITATION_GAIN, TERM_GAIN};
use crate::corpus::Corpus;
use crate::terms::TermIndex;

/// Builds the dev set of `job` from its clean parts; `settings` must be the job's pair settings
/// (the split seed and ratios decide which articles are held out).
pub async fn job_dev_set(
    store: &dyn ObjectStore,
    job: JobId,
    settings: &PairSettings,
) -> Result<BeirSet, StageError> {
    let manifest = RawManifest::load(store, job).await?.ok_or_else(|| {
        StageError::permanent(format!("job {job} has no fetched articles (raw/manifest)"))
    })?;
    let (corpus, _) = crate::stage::load_corpus(store, job, &manifest, settings).await?;
    let key = keys::pairs_file(job, "train.parquet");
    let batches = table::read(store, &key, &pair_schema()).await?;
    let trained_on: HashSet<String> = pairs_from_batches(&key, &batches)
        .map_err(StageError::permanent)?
        .into_iter()
        .flat_map(|p| [p.id_a, p.id_b])
        .collect();
    Ok(dev_set(&corpus, settings, &trained_on))
}

/// The dev set of `corpus` (see the module docs); `trained_on` are the ids in training pairs.
pub fn dev_set(corpus: &Corpus, settings: &PairSettings, trained_on: &HashSet<String>) -> BeirSet {
    let held: Vec<usize> = (0..corpus.len())
        .filter(|&i| {
            corpus.docs[i].split == Split::Test && !trained_on.contains(&corpus.docs[i].id)
        })
        .collect();
    let mut cited: HashSet<(usize, usize)> = HashSet::new();
    for (a, references) in corpus.references.iter().enumerate() {
        for &b in references {
            let b = b as usize;
            if b != a {
                cited.insert((a.min(b), a.max(b)));
            }
        }
    }
    let mesh = TermIndex::new(
        &corpus.mesh,
        corpus.mesh_terms,
        settings.major_weight,
        settings.max_posting,
    );
    let keywords = TermIndex::new(
        &corpus.keywords,
        corpus.keyword_terms,
        1.0,
        settings.max_posting,
    );
    let mut qrels: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for &a in &held {
        for b in (0..corpus.len()).filter(|&b| b != a) {
            let gain = if cited.contains(&(a.min(b), a.max(b))) {
                f64::from(CITATION_GAIN)
            } else if mesh.score(a, b) as f64 >= settings.mesh_threshold
                || keywords.score(a, b) as f64 >= settings.keyword_threshold
            {
                f64::from(TERM_GAIN)
            } else {
                continue;
            };
            qrels
                .entry(corpus.docs[a].id.clone())
                .or_default()
                .insert(corpus.docs[b].id.clone(), gain);
        }
    }
    let queries: Vec<BeirQuery> = held
        .iter()
        .map(|&i| &corpus.docs[i])
        .filter(|d| qrels.contains_key(&d.id) && d.title.split_whitespace().count() >= 3)
        .map(|d| BeirQuery {
            id: d.id.clone(),
            text: d.title.clone(),
        })
        .collect();
    let asked: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    qrels.retain(|q, _| asked.contains(q.as_str()));
    let documents = corpus
        .docs
        .iter()
        .map(|d| BeirDocument {
            id: d.id.clone(),
            title: d.title.clone(),
            // `text` is the cleaned title and abstract: keep the part after the title.
            text: d
                .text
                .strip_prefix(d.title.as_str())
                .map_or(d.text.as_str(), str::trim_start)
                .to_string(),
        })
        .collect();
    BeirSet {
        corpus: documents,
        queries,
        qrels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::CorpusBuilder;
    use medembed_corpus::article::{MeshHeading, Reference};
    use medembed_corpus::clean::CleanArticle;
    use medembed_pipeline::config::Settings;

    /// Article `n` (1..=300): cites article n + 1; shares its one MeSH descriptor with the
    /// articles of its group of three.
    fn article(n: usize) -> CleanArticle {
        let title = format!("Article number {n} on its topic");
        CleanArticle {
            id: format!("pmid:{n}"),
            pmid: Some(n.to_string()),
            title: title.clone(),
            text: format!("{title} The abstract of article {n}."),
            content_hash: format!("{n:016x}"),
            mesh: vec![MeshHeading {
                descriptor: format!("Topic {}", (n - 1) / 3),
                ui: None,
                major: true,
                qualifiers: Vec::new(),
            }],
            references: vec![Reference {
                pmid: Some((n + 1).to_string()),
                pmcid: None,
                doi: None,
            }],
            ..CleanArticle::default()
        }
    }

    fn number(id: &str) -> usize {
        id.trim_start_matches("pmid:").parse().unwrap()
    }

    #[test]
    fn held_out_titles_ask_and_every_related_article_is_judged_by_relation() {
        let settings = Settings::load(None).expect("defaults").pairs;
        let mut builder = CorpusBuilder::new(&settings);
        builder.add((1..=300).map(article).collect());
        let corpus = builder.finish();
        let test: Vec<&str> = corpus
            .docs
            .iter()
            .filter(|d| d.split == Split::Test)
            .map(|d| d.id.as_str())
            .collect();
        assert!(
            test.len() >= 4,
            "the seed puts a few articles in test: {test:?}"
        );
        // One test article is (wrongly) in a training pair: it is not held out.
        let leaked = test[0].to_string();
        let trained_on: HashSet<String> = [leaked.clone()].into();
        let held: HashSet<usize> = test
            .iter()
            .filter(|id| **id != leaked)
            .map(|id| number(id))
            .collect();

        let set = dev_set(&corpus, &settings, &trained_on);
        assert_eq!(set.corpus.len(), 300, "the corpus is the whole job corpus");
        assert_eq!(set.corpus[4].title, "Article number 5 on its topic");
        assert_eq!(set.corpus[4].text, "The abstract of article 5.");
        // Expected by construction: neighbours in the citation chain 2, same group 1, in any
        // split (training articles included).
        let mut expected: HashMap<String, HashMap<String, f64>> = HashMap::new();
        for &a in &held {
            for b in 1..=300 {
                let gain = if a.abs_diff(b) == 1 {
                    2.0
                } else if a != b && (a - 1) / 3 == (b - 1) / 3 {
                    1.0
                } else {
                    continue;
                };
                expected
                    .entry(format!("pmid:{a}"))
                    .or_default()
                    .insert(format!("pmid:{b}"), gain);
            }
        }
        assert!(
            !expected.is_empty(),
            "the seed gives related held-out articles"
        );
        assert_eq!(set.qrels, expected);
        let mut asked: Vec<&str> = set.queries.iter().map(|q| q.id.as_str()).collect();
        asked.sort_unstable();
        let mut want: Vec<&str> = expected.keys().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(asked, want);
        for q in &set.queries {
            assert_eq!(
                q.text,
                format!("Article number {} on its topic", number(&q.id))
            );
        }
        assert!(
            !set.qrels.contains_key(&leaked),
            "a leaked article asks nothing"
        );
        // Training articles are judged: some query's neighbour sits in the train split.
        let train: HashSet<&str> = corpus
            .docs
            .iter()
            .filter(|d| d.split == Split::Train)
            .map(|d| d.id.as_str())
            .collect();
        assert!(
            set.qrels
                .values()
                .flat_map(|j| j.keys())
                .any(|id| train.contains(id.as_str())),
            "no training article judged"
        );
    }
}
