//! A built index loaded for queries ([`JobIndex`]): the manifest, the documents, the vectors and
//! the search structure, plus the map and clusters the UI shows. The api and `medembed search`
//! both search through it; queries are embedded by the job's own model ([`crate::model`]).

use medembed_pipeline::messages::JobId;
use medembed_pipeline::store::{ObjectStore, StoreError};
use medembed_pipeline::{keys, table};
use serde::Serialize;

use crate::build::IndexManifest;
use crate::stage::{CLUSTERS, DOCUMENTS, HNSW, MANIFEST, MAP, VECTORS};
use crate::tables::{
    IndexedDocument, MapPoint, TopicCluster, cluster_schema, document_schema, from_batches,
    map_schema,
};
use crate::vectors::{IndexKind, Neighbour, VectorIndex, Vectors};
use crate::{IndexError, Result};

/// One search result as users see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub id: String,
    pub pmid: Option<String>,
    pub pmcid: Option<String>,
    pub title: String,
    /// Cosine similarity with the query (-1..1).
    pub score: f32,
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
        let params = manifest.hnsw_params(expansion_search);
        let (vectors, index) = tokio::task::spawn_blocking(move || -> Result<_> {
            let vectors = Vectors::from_bytes(&vectors_key, &bytes, dim)?;
            let index = match hnsw {
                Some(graph) => VectorIndex::load_hnsw(&graph, dim, params)?,
                None => VectorIndex::exact(&vectors),
            };
            Ok((vectors, index))
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
        };
        if loaded.documents.len() != loaded.vectors.len()
            || loaded.index.len() != loaded.vectors.len()
        {
            return Err(IndexError::Format(format!(
                "job {job}: index holds {} documents, {} vectors, {} searchable",
                loaded.documents.len(),
                loaded.vectors.len(),
                loaded.index.len()
            )));
        }
        Ok(loaded)
    }

    fn hit(&self, n: Neighbour) -> SearchHit {
        let d = &self.documents[n.row];
        SearchHit {
            id: d.id.clone(),
            pmid: d.pmid.clone(),
            pmcid: d.pmcid.clone(),
            title: d.title.clone(),
            score: n.score,
            snippet: d.snippet.clone(),
            url: d.url(),
        }
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
