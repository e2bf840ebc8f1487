//! From a job's embeddings and clean articles to everything search needs: duplicates dropped
//! (an id seen in an earlier part wins), unit vectors, the vector index (exact up to
//! `index.exact_max_documents`, HNSW above), topic clusters with labels, and the 2-D map. Pure
//! CPU work with no I/O, deterministic for the same inputs and settings.

use std::collections::HashSet;
use std::time::Instant;

use medembed_pipeline::config::{HnswVectors, IndexSettings};
use medembed_pipeline::messages::JobId;
use serde::{Deserialize, Serialize};

use crate::clusters;
use crate::lexical::{LexicalDocument, LexicalIndex};
use crate::map::pca_2d;
use crate::tables::{ArticleRecord, IndexedDocument, MapPoint, TopicCluster};
use crate::vectors::{ExpansionCalibration, HnswParams, IndexKind, VectorIndex, Vectors};
use crate::{IndexError, Result};

/// `index/_plan.json`, written by the index task before it fans out: the parts to embed (the
/// build's barrier) and the model's dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPlan {
    pub parts: Vec<u32>,
    pub dim: usize,
}

/// `index/_manifest.json`, written last by the build: the index is complete when it exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexManifest {
    pub job_id: JobId,
    pub kind: IndexKind,
    pub dim: usize,
    pub documents: usize,
    /// Rows dropped because an earlier part had the same id.
    pub duplicates: usize,
    pub clusters: usize,
    pub silhouette: Option<f64>,
    pub hnsw_connectivity: usize,
    pub hnsw_expansion_add: usize,
    /// How the graph stores its vectors (f32 in an index built before the setting existed).
    #[serde(default)]
    pub hnsw_vectors: HnswVectors,
    /// The search expansion the build calibrated for `index.hnsw_target_recall` (HNSW only;
    /// none in an index built before calibration existed).
    #[serde(default)]
    pub hnsw_calibration: Option<ExpansionCalibration>,
    /// RFC 3339.
    pub built_at: String,
    pub build_seconds: f64,
    /// The BM25 index's files under `index/lexical/` (none in an index built before it existed:
    /// such an index searches dense only).
    #[serde(default)]
    pub lexical_files: Vec<String>,
}

impl IndexManifest {
    /// The graph's parameters, searching with the larger of `expansion_search` (the setting) and
    /// the calibrated expansion.
    pub fn hnsw_params(&self, expansion_search: usize) -> HnswParams {
        let calibrated = self.hnsw_calibration.map_or(0, |c| c.expansion_search);
        HnswParams {
            connectivity: self.hnsw_connectivity,
            expansion_add: self.hnsw_expansion_add,
            expansion_search: expansion_search.max(calibrated),
            vectors: self.hnsw_vectors,
        }
    }
}

/// The inputs, part after part: embedding ids and vectors, and the clean articles they came from
/// (the same rows in the same order).
#[derive(Debug, Default)]
pub struct BuildInput {
    pub dim: usize,
    pub ids: Vec<String>,
    pub vectors: Vec<f32>,
    pub articles: Vec<ArticleRecord>,
}

/// Everything the build writes.
#[derive(Debug)]
pub struct BuiltIndex {
    pub manifest: IndexManifest,
    pub vectors: Vectors,
    pub index: VectorIndex,
    pub documents: Vec<IndexedDocument>,
    pub map: Vec<MapPoint>,
    pub clusters: Vec<TopicCluster>,
    /// BM25 over the same documents, row for row.
    pub lexical: LexicalIndex,
}

/// MeSH check tags ("Humans", "Middle Aged", "Retrospective Studies", … from
/// `pairs.check_tags`): on most articles, so they say nothing about a topic.
#[derive(Debug, Clone, Default)]
pub struct CheckTags(HashSet<String>);

impl CheckTags {
    pub fn new(tags: &[String]) -> Self {
        Self(tags.iter().map(|t| t.to_lowercase()).collect())
    }

    fn contains(&self, descriptor: &str) -> bool {
        self.0.contains(&descriptor.to_lowercase())
    }
}

/// The article's main topic: its first major MeSH descriptor, else its first descriptor (check
/// tags skipped), else its first keyword.
pub fn main_descriptor(article: &ArticleRecord, check_tags: &CheckTags) -> String {
    let topical = || {
        article
            .mesh
            .iter()
            .filter(|m| !check_tags.contains(&m.descriptor))
    };
    topical()
        .find(|m| m.major)
        .or_else(|| topical().next())
        .map(|m| m.descriptor.clone())
        .or_else(|| article.keywords.first().cloned())
        .unwrap_or_default()
}

/// The terms a cluster is labelled by: MeSH descriptors but check tags, or normalized keywords
/// for articles without MeSH.
fn topic_terms(article: &ArticleRecord, check_tags: &CheckTags) -> Vec<String> {
    if article.mesh.is_empty() {
        article
            .keywords
            .iter()
            .map(|k| k.trim().to_lowercase())
            .filter(|k| !k.is_empty())
            .collect()
    } else {
        article
            .mesh
            .iter()
            .filter(|m| !check_tags.contains(&m.descriptor))
            .map(|m| m.descriptor.clone())
            .collect()
    }
}

/// Builds the index of `job` from `input`; `threads` build the HNSW graph; `check_tags` label no
/// cluster.
pub fn build(
    job: JobId,
    input: BuildInput,
    settings: &IndexSettings,
    check_tags: &CheckTags,
    threads: usize,
) -> Result<BuiltIndex> {
    let started = Instant::now();
    let BuildInput {
        dim,
        ids,
        vectors,
        articles,
    } = input;
    if ids.len() != articles.len() || vectors.len() != ids.len() * dim {
        return Err(IndexError::Format(format!(
            "job {job}: {} embeddings ({} floats of dimension {dim}) for {} articles",
            ids.len(),
            vectors.len(),
            articles.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut keep = Vec::with_capacity(ids.len());
    for (row, (id, article)) in ids.iter().zip(&articles).enumerate() {
        if id != &article.id {
            return Err(IndexError::Format(format!(
                "job {job}: embedding row {row} is {id:?} but the clean row is {:?}",
                article.id
            )));
        }
        if seen.insert(id.as_str()) {
            keep.push(row);
        }
    }
    let duplicates = ids.len() - keep.len();
    let mut data = Vec::with_capacity(keep.len() * dim);
    for &row in &keep {
        data.extend_from_slice(&vectors[row * dim..(row + 1) * dim]);
    }
    let vectors = Vectors::new(dim.max(1), data)?;
    let kept: Vec<&ArticleRecord> = keep.iter().map(|&row| &articles[row]).collect();

    let clustering = clusters::cluster(
        &vectors,
        settings.clusters,
        settings.max_clusters,
        settings.seed,
    );
    let terms: Vec<Vec<String>> = kept.iter().map(|a| topic_terms(a, check_tags)).collect();
    let labels = clusters::labels(
        &clustering.assignment,
        clustering.k,
        &terms,
        settings.cluster_labels,
    );
    let points = pca_2d(&vectors);
    let map: Vec<MapPoint> = kept
        .iter()
        .zip(&points)
        .zip(&clustering.assignment)
        .map(|((article, p), &cluster)| MapPoint {
            id: article.id.clone(),
            title: article.title.clone(),
            descriptor: main_descriptor(article, check_tags),
            cluster,
            x: p[0],
            y: p[1],
        })
        .collect();
    let clusters = (0..clustering.k)
        .map(|c| {
            let members: Vec<&MapPoint> = map.iter().filter(|p| p.cluster == c as u32).collect();
            let size = members.len().max(1) as f32;
            TopicCluster {
                cluster: c as u32,
                size: members.len() as u64,
                labels: labels.get(c).cloned().unwrap_or_default(),
                x: members.iter().map(|p| p.x).sum::<f32>() / size,
                y: members.iter().map(|p| p.y).sum::<f32>() / size,
            }
        })
        .collect();
    let documents = kept
        .iter()
        .map(|a| IndexedDocument::of(a, settings.snippet_chars))
        .collect();
    let lexical_documents: Vec<LexicalDocument> =
        kept.iter().map(|a| lexical_document(a)).collect();
    let lexical = LexicalIndex::build(&lexical_documents)?;
    let index = if vectors.len() > settings.exact_max_documents {
        VectorIndex::build_hnsw(
            &vectors,
            HnswParams {
                connectivity: settings.hnsw_connectivity,
                expansion_add: settings.hnsw_expansion_add,
                expansion_search: settings.hnsw_expansion_search,
                vectors: settings.hnsw_vectors,
            },
            threads,
        )?
    } else {
        VectorIndex::exact(&vectors)
    };
    let hnsw_calibration = index.calibrate_expansion(
        &vectors,
        settings.hnsw_expansion_search,
        settings.hnsw_target_recall,
    )?;
    if let Some(c) = &hnsw_calibration {
        if c.recall_at_10 < c.target_recall {
            tracing::warn!(
                recall_at_10 = c.recall_at_10,
                target = c.target_recall,
                expansion_search = c.expansion_search,
                "HNSW recall stays below index.hnsw_target_recall at the widest search expansion: raise index.hnsw_connectivity or index.hnsw_expansion_add"
            );
        } else {
            tracing::info!(
                recall_at_10 = c.recall_at_10,
                expansion_search = c.expansion_search,
                seconds = c.seconds,
                "HNSW search expansion calibrated"
            );
        }
    }
    let manifest = IndexManifest {
        job_id: job,
        kind: index.kind(),
        dim,
        documents: vectors.len(),
        duplicates,
        clusters: clustering.k,
        silhouette: clustering.silhouette,
        hnsw_connectivity: settings.hnsw_connectivity,
        hnsw_expansion_add: settings.hnsw_expansion_add,
        hnsw_vectors: settings.hnsw_vectors,
        hnsw_calibration,
        built_at: medembed_pipeline::status::now_rfc3339(),
        build_seconds: started.elapsed().as_secs_f64(),
        lexical_files: Vec::new(),
    };
    Ok(BuiltIndex {
        manifest,
        vectors,
        index,
        documents,
        map,
        clusters,
        lexical,
    })
}

/// What BM25 searches of an article: title, abstract, every MeSH descriptor (check tags too: a
/// query for "humans" or "mice" means them), and its keywords.
fn lexical_document(article: &ArticleRecord) -> LexicalDocument {
    LexicalDocument {
        pmid: article.pmid.clone(),
        pmcid: article.pmcid.clone(),
        doi: article.doi.clone(),
        title: article.title.clone(),
        abstract_text: article.abstract_text.clone(),
        terms: article
            .mesh
            .iter()
            .map(|m| m.descriptor.clone())
            .chain(article.keywords.iter().cloned())
            .collect(),
    }
}
