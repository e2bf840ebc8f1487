//! A built index loaded for queries ([`JobIndex`]): the manifest, the documents, the vectors and
//! the search structure, the BM25 index, plus the map and clusters the UI shows. The api and
//! `medembed search` both search through it; queries are embedded by the job's own model
//! ([`crate::model`]).
//!
//! [`JobIndex::search_text`] is the search users get, in one of three [`SearchMode`]s: `hybrid`
//! (the default) fuses the BM25 and the dense ranking by reciprocal rank fusion; `dense` and
//! `lexical` use one ranking. Exact terms come first in hybrid and lexical search: a query that
//! is a PMID, PMCID or DOI puts that article first; a quoted phrase, or a query of one
//! symbol-like word (a gene symbol, a drug code: "TREM2", "APOE4", "NCT01234567"), puts the
//! documents BM25 finds it in before those only the embedding finds.

use medembed_pipeline::messages::JobId;
use medembed_pipeline::store::{ObjectStore, StoreError};
use medembed_pipeline::{keys, table};
use medembed_retrieval::fusion::{FUSION_DEPTH, Fusion};
use serde::{Deserialize, Serialize};

use crate::build::IndexManifest;
use crate::lexical::LexicalIndex;
use crate::stage::{CLUSTERS, DOCUMENTS, HNSW, LEXICAL, MANIFEST, MAP, VECTORS};
use crate::tables::{
    IndexedDocument, MapPoint, TopicCluster, cluster_schema, document_schema, from_batches,
    map_schema,
};
use crate::vectors::{IndexKind, Neighbour, VectorIndex, Vectors};
use crate::{IndexError, Result};

/// Which rankings a search uses.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// BM25 and the embedding ranking, fused (reciprocal rank fusion).
    #[default]
    Hybrid,
    /// The embedding ranking alone (cosine with the query).
    Dense,
    /// BM25 alone.
    Lexical,
}

impl SearchMode {
    pub fn name(self) -> &'static str {
        match self {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Dense => "dense",
            SearchMode::Lexical => "lexical",
        }
    }
}

/// One search result as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub id: String,
    pub pmid: Option<String>,
    pub pmcid: Option<String>,
    pub title: String,
    /// The ranking's score: in hybrid search the fused score scaled to 0..1 (1 = first in both
    /// rankings); in dense search the cosine with the query (-1..1); in lexical search BM25.
    pub score: f32,
    /// Cosine similarity with the query (-1..1), where the embedding ranking found the hit.
    pub cosine: Option<f32>,
    /// The BM25 score, where the lexical ranking found the hit.
    pub bm25: Option<f32>,
    /// The rankings that found it: `exact` (its PMID, PMCID or DOI is the query), `lexical`,
    /// `dense`.
    pub found_by: Vec<String>,
    pub snippet: String,
    /// The article on PMC, PubMed or doi.org.
    pub url: Option<String>,
}

/// A job's index, loaded.
#[derive(Debug)]
pub struct JobIndex {
    pub manifest: IndexManifest,
    pub documents: Vec<IndexedDocument>,
    pub vectors: Vectors,
    pub index: VectorIndex,
    pub map: Vec<MapPoint>,
    pub clusters: Vec<TopicCluster>,
    /// BM25 over the same documents; None for an index built before it existed.
    pub lexical: Option<LexicalIndex>,
}

/// The manifest of `job`'s index; None while the index is not built.
pub async fn read_manifest(store: &dyn ObjectStore, job: JobId) -> Result<Option<IndexManifest>> {
    let key = keys::index_file(job, MANIFEST);
    match store.get(&key).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IndexError::Format(format!("{key}: {e}"))),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl JobIndex {
    /// Loads `job`'s index; HNSW searches with `expansion_search` candidates.
    pub async fn load(
        store: &dyn ObjectStore,
        job: JobId,
        expansion_search: usize,
    ) -> Result<Self> {
        let manifest = read_manifest(store, job)
            .await?
            .ok_or_else(|| IndexError::Missing(format!("job {job} has no index (yet)")))?;
        let vectors_key = keys::index_file(job, VECTORS);
        let bytes = store.get(&vectors_key).await?;
        let dim = manifest.dim;
        let hnsw = match manifest.kind {
            IndexKind::Hnsw => Some(store.get(&keys::index_file(job, HNSW)).await?),
            IndexKind::Exact => None,
        };
        let read = |name: &'static str, schema: std::sync::Arc<arrow::datatypes::Schema>| {
            let key = keys::index_file(job, name);
            async move {
                let batches = table::read(store, &key, &schema).await?;
                Ok::<_, IndexError>((key, batches))
            }
        };
        let (documents_key, documents) = read(DOCUMENTS, document_schema()).await?;
        let (map_key, map) = read(MAP, map_schema()).await?;
        let (clusters_key, clusters) = read(CLUSTERS, cluster_schema()).await?;
        let mut lexical_files = Vec::with_capacity(manifest.lexical_files.len());
        for name in &manifest.lexical_files {
            let key = keys::index_file(job, &format!("{LEXICAL}/{name}"));
            lexical_files.push((name.clone(), store.get(&key).await?.to_vec()));
        }
        let params = manifest.hnsw_params(expansion_search);
        let (vectors, index, lexical) = tokio::task::spawn_blocking(move || -> Result<_> {
            let vectors = Vectors::from_bytes(&vectors_key, &bytes, dim)?;
            let index = match hnsw {
                Some(graph) => VectorIndex::load_hnsw(&graph, dim, params)?,
                None => VectorIndex::exact(&vectors),
            };
            let lexical = if lexical_files.is_empty() {
                None
            } else {
                Some(
                    LexicalIndex::from_files(&lexical_files)
                        .map_err(|e| IndexError::Format(format!("job {job}: {LEXICAL}/: {e}")))?,
                )
            };
            Ok((vectors, index, lexical))
        })
        .await
        .map_err(|e| IndexError::Format(format!("job {job}: loading the index panicked: {e}")))??;
        let loaded = Self {
            documents: from_batches(&documents_key, &documents)?,
            map: from_batches(&map_key, &map)?,
            clusters: from_batches(&clusters_key, &clusters)?,
            manifest,
            vectors,
            index,
            lexical,
        };
        let lexical_len = loaded
            .lexical
            .as_ref()
            .map_or(loaded.vectors.len(), |l| l.len());
        if loaded.documents.len() != loaded.vectors.len()
            || loaded.index.len() != loaded.vectors.len()
            || lexical_len != loaded.vectors.len()
        {
            return Err(IndexError::Format(format!(
                "job {job}: index holds {} documents, {} vectors, {} searchable, {} in BM25",
                loaded.documents.len(),
                loaded.vectors.len(),
                loaded.index.len(),
                lexical_len
            )));
        }
        Ok(loaded)
    }

    fn hit(&self, n: Neighbour) -> SearchHit {
        self.hit_at(n.row, n.score, Some(n.score), None, vec!["dense".into()])
    }

    fn hit_at(
        &self,
        row: usize,
        score: f32,
        cosine: Option<f32>,
        bm25: Option<f32>,
        found_by: Vec<String>,
    ) -> SearchHit {
        let d = &self.documents[row];
        SearchHit {
            id: d.id.clone(),
            pmid: d.pmid.clone(),
            pmcid: d.pmcid.clone(),
            title: d.title.clone(),
            score,
            cosine,
            bm25,
            found_by,
            snippet: d.snippet.clone(),
            url: d.url(),
        }
    }

    /// The `k` best hits for the text `query` in `mode`; `embedding` is the query embedded by
    /// the job's model (needed by hybrid and dense search). An index without a BM25 index
    /// (built before it existed) answers hybrid search densely and refuses lexical search.
    pub fn search_text(
        &self,
        query: &str,
        embedding: Option<&[f32]>,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<SearchHit>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let dense = |depth: usize| -> Result<Vec<Neighbour>> {
            let embedding = embedding.ok_or_else(|| {
                IndexError::Query(format!(
                    "{} search needs the query's embedding",
                    mode.name()
                ))
            })?;
            Ok(self.index.search(&[embedding.to_vec()], depth)?.remove(0))
        };
        let lexical = match (&self.lexical, mode) {
            (_, SearchMode::Dense) => None,
            (Some(lexical), _) => Some(lexical),
            (None, SearchMode::Lexical) => {
                return Err(IndexError::Missing(format!(
                    "job {}: this index has no BM25 index (built by an older version): \
                     search it in dense mode, or index the job again",
                    self.manifest.job_id
                )));
            }
            (None, SearchMode::Hybrid) => None,
        };
        let Some(lexical) = lexical else {
            return Ok(dense(k)?.into_iter().map(|n| self.hit(n)).collect());
        };

        let exact = lexical.exact_matches(query)?;
        let bm25 = lexical.search(query, FUSION_DEPTH.max(k))?;
        let mut hits: Vec<SearchHit> = Vec::with_capacity(k);
        for &row in &exact {
            let bm25_score = bm25.iter().find(|(r, _)| *r == row).map(|(_, s)| *s);
            hits.push(self.hit_at(row, 1.0, None, bm25_score, vec!["exact".into()]));
        }
        let pinned = |row: usize| exact.contains(&row);
        if mode == SearchMode::Lexical {
            for &(row, score) in bm25.iter().filter(|(row, _)| !pinned(*row)) {
                hits.push(self.hit_at(row, score, None, Some(score), vec!["lexical".into()]));
            }
            hits.truncate(k);
            return Ok(hits);
        }

        let neighbours = dense(FUSION_DEPTH.max(k))?;
        let lexical_ranking: Vec<(usize, f32)> = bm25;
        let dense_ranking: Vec<(usize, f32)> =
            neighbours.iter().map(|n| (n.row, n.score)).collect();
        let fusion = Fusion::default();
        let fused = fusion.fuse(
            &[lexical_ranking.as_slice(), dense_ranking.as_slice()],
            FUSION_DEPTH.max(k),
        );
        // The best a document can fuse to: first in both rankings.
        let best = match fusion {
            Fusion::ReciprocalRank { k } => 2.0 / (k + 1.0),
            Fusion::NormalizedScores { weights } => weights.iter().sum(),
        };
        let exact_terms = has_exact_terms(query);
        let mut ranked: Vec<(bool, SearchHit)> = fused
            .into_iter()
            .filter(|f| !pinned(f.id))
            .map(|f| {
                let bm25_score = f.ranks[0].map(|r| lexical_ranking[r - 1].1);
                let cosine = f.ranks[1].map(|r| dense_ranking[r - 1].1);
                let mut found_by = Vec::new();
                if bm25_score.is_some() {
                    found_by.push("lexical".to_string());
                }
                if cosine.is_some() {
                    found_by.push("dense".to_string());
                }
                let hit = self.hit_at(f.id, (f.score / best) as f32, cosine, bm25_score, found_by);
                (exact_terms && bm25_score.is_some(), hit)
            })
            .collect();
        // Exact terms: what BM25 found them in comes first, in fused order (a stable sort).
        ranked.sort_by_key(|(lexical_first, _)| !lexical_first);
        hits.extend(ranked.into_iter().map(|(_, hit)| hit));
        hits.truncate(k);
        Ok(hits)
    }

    /// The `k` documents nearest to each query embedding, best first.
    pub fn search(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<SearchHit>>> {
        Ok(self
            .index
            .search(queries, k)?
            .into_iter()
            .map(|hits| hits.into_iter().map(|n| self.hit(n)).collect())
            .collect())
    }

    /// The row of the document with this id.
    pub fn row_of(&self, id: &str) -> Option<usize> {
        self.documents.iter().position(|d| d.id == id)
    }

    /// The `k` documents nearest to document `id` (itself left out); None for an unknown id.
    pub fn neighbours(&self, id: &str, k: usize) -> Result<Option<Vec<SearchHit>>> {
        let Some(row) = self.row_of(id) else {
            return Ok(None);
        };
        let found = self
            .index
            .search(&[self.vectors.row(row).to_vec()], k + 1)?
            .remove(0);
        Ok(Some(
            found
                .into_iter()
                .filter(|n| n.row != row)
                .take(k)
                .map(|n| self.hit(n))
                .collect(),
        ))
    }
}

/// Whether `query` asks for exact terms: it holds a quoted phrase, or it is one word that looks
/// like a symbol or code rather than an English word (it has a digit, or two capitals: "TREM2",
/// "APOE", "NCT01234567", "IL-6").
pub fn has_exact_terms(query: &str) -> bool {
    let query = query.trim();
    if query.matches('"').count() >= 2 {
        return true;
    }
    let mut words = query.split_whitespace();
    let (Some(word), None) = (words.next(), words.next()) else {
        return false;
    };
    let capitals = word.chars().filter(|c| c.is_uppercase()).count();
    word.chars().count() <= 20 && (word.chars().any(|c| c.is_ascii_digit()) || capitals >= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_terms_are_phrases_and_symbol_like_words() {
        for q in [
            "TREM2",
            "APOE4",
            "NCT01234567",
            "IL-6",
            " BACE1 ",
            "\"tau protein\" levels",
        ] {
            assert!(has_exact_terms(q), "{q}");
        }
        for q in [
            "tau",
            "Alzheimer",
            "amyloid plaques",
            "TREM2 in microglia",
            "",
            "\"tau",
        ] {
            assert!(!has_exact_terms(q), "{q}");
        }
    }
}
