//! Unit vectors and nearest-neighbour search over them: [`Vectors`] (row `i` is document `i` of
//! the index), and a [`VectorIndex`] that is either exact (one matrix product per query batch in
//! libtorch, recall 1) or an HNSW graph (USearch) for corpora above `index.exact_max_documents`.
//!
//! Scores are cosine similarities: vectors are L2-normalized when they are made, so the inner
//! product is the cosine, whatever the model's own `Normalize` module says.

use medembed_pipeline::config::HnswVectors;
use tch::{Kind, Tensor};

use crate::{IndexError, Result};

/// Row-major unit vectors of one dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors {
    dim: usize,
    data: Vec<f32>,
}

/// One search result: a row of the index and its cosine with the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub row: usize,
    pub score: f32,
}

impl Vectors {
    /// `data` holds `data.len() / dim` rows; each is scaled to unit length (a zero row stays 0).
    pub fn new(dim: usize, mut data: Vec<f32>) -> Result<Self> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(IndexError::Format(format!(
                "{} floats do not make rows of dimension {dim}",
                data.len()
            )));
        }
        for row in data.chunks_exact_mut(dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Ok(Self { dim, data })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The rows as a `[len, dim]` CPU tensor (a copy).
    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.data).view([self.len() as i64, self.dim as i64])
    }

    /// Little-endian f32s, row after row: the `index/vectors.f32` format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() * 4);
        for v in &self.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads [`Vectors::to_bytes`] back; `what` names the object in errors.
    pub fn from_bytes(what: &str, bytes: &[u8], dim: usize) -> Result<Self> {
        if dim == 0 || !bytes.len().is_multiple_of(4 * dim) {
            return Err(IndexError::Format(format!(
                "{what}: {} bytes are not whole rows of {dim} f32s",
                bytes.len()
            )));
        }
        let data = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Self::new(dim, data)
    }
}

/// Which search structure an index uses (recorded in its manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    Exact,
    Hnsw,
}

/// HNSW parameters (`index.hnsw_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    pub connectivity: usize,
    pub expansion_add: usize,
    pub expansion_search: usize,
    pub vectors: HnswVectors,
}

/// Corpus vectors the build searches to calibrate the search expansion.
pub const CALIBRATION_QUERIES: usize = 200;
/// The widest expansion calibration tries.
pub const MAX_EXPANSION_SEARCH: usize = 4096;

/// What the build measured ([`VectorIndex::calibrate_expansion`]): the smallest search expansion,
/// from the configured one up, whose recall@10 reaches the target, stored in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpansionCalibration {
    pub expansion_search: usize,
    /// Recall@10 at that expansion (below the target only if [`MAX_EXPANSION_SEARCH`] was reached).
    pub recall_at_10: f64,
    pub target_recall: f64,
    pub queries: usize,
    pub seconds: f64,
}

/// Nearest-neighbour search over [`Vectors`].
pub enum VectorIndex {
    /// The unit vectors as one `[n, dim]` tensor; a query batch is one matrix product and a top-k.
    /// (A libtorch tensor may move between threads but not be shared; the lock costs nothing
    /// that matters, as one product already uses every core.)
    Exact(std::sync::Mutex<Tensor>),
    /// USearch's HNSW graph over the same vectors (inner product = cosine), keys = rows.
    Hnsw(usearch::Index),
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(m) => write!(f, "VectorIndex::Exact({:?})", lock(m).size()),
            Self::Hnsw(i) => write!(f, "VectorIndex::Hnsw({} vectors)", i.size()),
        }
    }
}

fn lock(m: &std::sync::Mutex<Tensor>) -> std::sync::MutexGuard<'_, Tensor> {
    // A panic mid-search leaves the tensor as it was: the data is still good.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn usearch_error(e: impl std::fmt::Display) -> IndexError {
    IndexError::Hnsw(e.to_string())
}

fn hnsw_options(dim: usize, params: HnswParams) -> usearch::IndexOptions {
    usearch::IndexOptions {
        dimensions: dim,
        metric: usearch::MetricKind::IP,
        quantization: match params.vectors {
            HnswVectors::F32 => usearch::ScalarKind::F32,
            HnswVectors::F16 => usearch::ScalarKind::F16,
        },
        connectivity: params.connectivity,
        expansion_add: params.expansion_add,
        expansion_search: params.expansion_search,
        multi: false,
    }
}

impl VectorIndex {
    pub fn exact(vectors: &Vectors) -> Self {
        Self::Exact(std::sync::Mutex::new(vectors.to_tensor()))
    }

    /// Builds the HNSW graph on `threads` threads (insertion is thread-safe in USearch).
    pub fn build_hnsw(vectors: &Vectors, params: HnswParams, threads: usize) -> Result<Self> {
        let index =
            usearch::Index::new(&hnsw_options(vectors.dim(), params)).map_err(usearch_error)?;
        let threads = threads.max(1);
        index
            .reserve_capacity_and_threads(vectors.len(), threads)
            .map_err(usearch_error)?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failure = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let row = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if row >= vectors.len() {
                            break;
                        }
                        if let Err(e) = index.add(row as u64, vectors.row(row)) {
                            *failure.lock().expect("no panics while held") = Some(e.to_string());
                            break;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().expect("threads joined") {
            return Err(IndexError::Hnsw(e));
        }
        Ok(Self::Hnsw(index))
    }

    /// The serialized HNSW graph (`index/hnsw.usearch`); None for an exact index, whose data is
    /// the vectors themselves.
    pub fn hnsw_bytes(&self) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Exact(_) => Ok(None),
            Self::Hnsw(index) => {
                let mut buffer = vec![0u8; index.serialized_length()];
                index.save_to_buffer(&mut buffer).map_err(usearch_error)?;
                Ok(Some(buffer))
            }
        }
    }

    /// An HNSW graph back from [`VectorIndex::hnsw_bytes`], searching with `expansion_search`.
    pub fn load_hnsw(bytes: &[u8], dim: usize, params: HnswParams) -> Result<Self> {
        let index = usearch::Index::new(&hnsw_options(dim, params)).map_err(usearch_error)?;
        index.load_from_buffer(bytes).map_err(usearch_error)?;
        if index.dimensions() != dim {
            return Err(IndexError::Format(format!(
                "HNSW graph has dimension {}, the index {dim}",
                index.dimensions()
            )));
        }
        index.change_expansion_search(params.expansion_search);
        Ok(Self::Hnsw(index))
    }

    /// For an HNSW index: searches [`CALIBRATION_QUERIES`] evenly spread corpus rows (each one's
    /// own row left out of its neighbours) with a growing search expansion, from `start` up by
    /// half each time, until recall@10 against exact search reaches `target`; the index keeps
    /// searching with the expansion found. The search expansion a recall needs grows with the
    /// corpus, so a fixed default cannot hold it at every size. `None` for an exact index.
    pub fn calibrate_expansion(
        &self,
        vectors: &Vectors,
        start: usize,
        target: f64,
    ) -> Result<Option<ExpansionCalibration>> {
        let Self::Hnsw(index) = self else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let n = vectors.len();
        let queries = CALIBRATION_QUERIES.min(n);
        let rows: Vec<usize> = (0..queries).map(|i| i * n / queries).collect();
        let truth = exact_neighbours_of_rows(vectors, &rows, 10, 65_536);
        let mut expansion = start.clamp(1, MAX_EXPANSION_SEARCH);
        loop {
            index.change_expansion_search(expansion);
            let mut hits = 0usize;
            let mut wanted = 0usize;
            for (&row, truth) in rows.iter().zip(&truth) {
                let found = index
                    .search(vectors.row(row), truth.len() + 1)
                    .map_err(usearch_error)?;
                let found: Vec<usize> = found
                    .keys
                    .iter()
                    .map(|&k| k as usize)
                    .filter(|&k| k != row)
                    .take(truth.len())
                    .collect();
                hits += truth.iter().filter(|t| found.contains(t)).count();
                wanted += truth.len();
            }
            let recall = if wanted == 0 {
                1.0
            } else {
                hits as f64 / wanted as f64
            };
            if recall >= target || expansion >= MAX_EXPANSION_SEARCH {
                return Ok(Some(ExpansionCalibration {
                    expansion_search: expansion,
                    recall_at_10: recall,
                    target_recall: target,
                    queries,
                    seconds: started.elapsed().as_secs_f64(),
                }));
            }
            expansion = (expansion + expansion.div_ceil(2)).min(MAX_EXPANSION_SEARCH);
        }
    }

    /// Bytes of the index's data: the HNSW graph with its (possibly quantized) vectors as
    /// serialized (what `index/hnsw.usearch` holds and a load brings into memory), or the exact
    /// index's matrix.
    pub fn data_bytes(&self) -> usize {
        match self {
            Self::Exact(m) => {
                let m = lock(m);
                m.numel() * m.kind().elt_size_in_bytes()
            }
            Self::Hnsw(index) => index.serialized_length(),
        }
    }

    pub fn kind(&self) -> IndexKind {
        match self {
            Self::Exact(_) => IndexKind::Exact,
            Self::Hnsw(_) => IndexKind::Hnsw,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Exact(m) => lock(m).size()[0] as usize,
            Self::Hnsw(i) => i.size(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` nearest rows to each query (unit or not: scores are cosines either way), best
    /// first; fewer when the index holds fewer.
    pub fn search(&self, queries: &[Vec<f32>], k: usize) -> Result<Vec<Vec<Neighbour>>> {
        let k = k.min(self.len());
        if queries.is_empty() || k == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let queries: Vec<Vec<f32>> = queries.iter().map(|q| unit(q)).collect();
        match self {
            Self::Exact(matrix) => {
                let matrix = lock(matrix);
                let dim = matrix.size()[1];
                let flat: Vec<f32> = queries.concat();
                if flat.len() as i64 != dim * queries.len() as i64 {
                    return Err(IndexError::Query(format!(
                        "query dimension {} differs from the index's {dim}",
                        queries[0].len()
                    )));
                }
                let _guard = tch::no_grad_guard();
                let q = Tensor::from_slice(&flat).view([queries.len() as i64, dim]);
                let scores = q.matmul(&matrix.tr());
                let (values, indices) = scores.topk(k as i64, 1, true, true);
                let values = Vec::<f32>::try_from(values.to_kind(Kind::Float).flatten(0, -1))
                    .map_err(|e| IndexError::Query(e.to_string()))?;
                let indices = Vec::<i64>::try_from(indices.flatten(0, -1))
                    .map_err(|e| IndexError::Query(e.to_string()))?;
                Ok(values
                    .chunks(k)
                    .zip(indices.chunks(k))
                    .map(|(v, i)| {
                        v.iter()
                            .zip(i)
                            .map(|(&score, &row)| Neighbour {
                                row: row as usize,
                                score,
                            })
                            .collect()
                    })
                    .collect())
            }
            Self::Hnsw(index) => queries
                .iter()
                .map(|q| {
                    if q.len() != index.dimensions() {
                        return Err(IndexError::Query(format!(
                            "query dimension {} differs from the index's {}",
                            q.len(),
                            index.dimensions()
                        )));
                    }
                    let found = index.search(q, k).map_err(usearch_error)?;
                    Ok(found
                        .keys
                        .iter()
                        .zip(&found.distances)
                        .map(|(&key, &distance)| Neighbour {
                            row: key as usize,
                            score: 1.0 - distance,
                        })
                        .collect())
                })
                .collect(),
        }
    }
}

/// The `k` nearest rows (by inner product, exactly) to each of `rows`, the row itself left out:
/// one matrix product per block of the corpus, so the corpus is never copied whole.
fn exact_neighbours_of_rows(
    vectors: &Vectors,
    rows: &[usize],
    k: usize,
    block: usize,
) -> Vec<Vec<usize>> {
    let dim = vectors.dim() as i64;
    let _guard = tch::no_grad_guard();
    let queries: Vec<f32> = rows.iter().flat_map(|&r| vectors.row(r)).copied().collect();
    let queries = Tensor::from_slice(&queries).view([rows.len() as i64, dim]);
    let mut best: Option<(Tensor, Tensor)> = None;
    let mut start = 0;
    while start < vectors.len() {
        let end = (start + block).min(vectors.len());
        let block =
            Tensor::from_slice(&vectors.as_slice()[start * vectors.dim()..end * vectors.dim()])
                .view([(end - start) as i64, dim]);
        let scores = queries.matmul(&block.tr());
        let (values, indices) = scores.topk(((k + 1).min(end - start)) as i64, 1, true, true);
        let indices = indices + start as i64;
        best = Some(match best {
            None => (values, indices),
            Some((v, i)) => {
                let v = Tensor::cat(&[v, values], 1);
                let i = Tensor::cat(&[i, indices], 1);
                let (top, at) = v.topk(((k + 1) as i64).min(v.size()[1]), 1, true, true);
                (top, i.gather(1, &at, false))
            }
        });
        start = end;
    }
    let Some((_, indices)) = best else {
        return vec![Vec::new(); rows.len()];
    };
    let width = indices.size()[1] as usize;
    let flat = Vec::<i64>::try_from(indices.flatten(0, -1)).expect("int64 indices");
    flat.chunks(width)
        .zip(rows)
        .map(|(found, &row)| {
            found
                .iter()
                .map(|&i| i as usize)
                .filter(|&i| i != row)
                .take(k)
                .collect()
        })
        .collect()
}

/// `v` scaled to unit length (zero stays zero).
pub fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

/// Share of `truth`'s rows that `found` also has, per query, averaged (recall@k).
pub fn recall(found: &[Vec<Neighbour>], truth: &[Vec<Neighbour>]) -> f64 {
    let mut sum = 0.0;
    for (f, t) in found.iter().zip(truth) {
        if t.is_empty() {
            sum += 1.0;
            continue;
        }
        let hits = t
            .iter()
            .filter(|n| f.iter().any(|m| m.row == n.row))
            .count();
        sum += hits as f64 / t.len() as f64;
    }
    sum / truth.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_vectors(n: usize, dim: usize, seed: u64) -> Vectors {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Vectors::new(
            dim,
            (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
        )
        .expect("vectors")
    }

    #[test]
    fn rows_are_unit_length_and_bytes_round_trip() {
        let v = Vectors::new(2, vec![3.0, 4.0, 0.0, 0.0]).expect("vectors");
        assert_eq!(v.row(0), &[0.6, 0.8]);
        assert_eq!(v.row(1), &[0.0, 0.0]);
        let back = Vectors::from_bytes("v", &v.to_bytes(), 2).expect("round trip");
        assert_eq!(back, v);
        assert!(Vectors::from_bytes("v", &[0u8; 12], 2).is_err());
        assert!(Vectors::new(3, vec![1.0; 4]).is_err());
    }

    #[test]
    fn exact_search_ranks_by_cosine() {
        let v = Vectors::new(2, vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7]).expect("vectors");
        let index = VectorIndex::exact(&v);
        let hits = index.search(&[vec![2.0, 0.1]], 3).expect("search");
        let rows: Vec<usize> = hits[0].iter().map(|n| n.row).collect();
        assert_eq!(rows, vec![0, 2, 1]);
        assert!((hits[0][0].score - 2.0 / (4.01f32).sqrt()).abs() < 1e-5);
        // k above the corpus size returns the whole corpus; a wrong dimension is an error.
        assert_eq!(
            index.search(&[vec![1.0, 0.0]], 10).expect("k>n")[0].len(),
            3
        );
        assert!(index.search(&[vec![1.0, 0.0, 0.0]], 1).is_err());
    }

    #[test]
    fn hnsw_agrees_with_exact_and_survives_a_round_trip() {
        let v = random_vectors(2000, 32, 7);
        let queries: Vec<Vec<f32>> = (0..50).map(|i| v.row(i * 13).to_vec()).collect();
        let params = HnswParams {
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            vectors: HnswVectors::F32,
        };
        let hnsw = VectorIndex::build_hnsw(&v, params, 2).expect("build");
        let exact = VectorIndex::exact(&v);
        let truth = exact.search(&queries, 10).expect("exact");
        let found = hnsw.search(&queries, 10).expect("hnsw");
        assert!(recall(&found, &truth) > 0.95, "{}", recall(&found, &truth));
        // Each query is a corpus row: it finds itself first, nearly always (the graph is
        // approximate, and built by two threads in no fixed order).
        let itself = found
            .iter()
            .enumerate()
            .filter(|(i, f)| f[0].row == i * 13)
            .count();
        assert!(
            itself >= 45,
            "{itself} of 50 queries found themselves first"
        );
        let bytes = hnsw.hnsw_bytes().expect("save").expect("hnsw has bytes");
        let loaded = VectorIndex::load_hnsw(&bytes, 32, params).expect("load");
        assert_eq!(loaded.len(), 2000);
        assert_eq!(loaded.search(&queries, 10).expect("search"), found);
        assert!(VectorIndex::load_hnsw(&bytes[..bytes.len() / 2], 32, params).is_err());
    }

    #[test]
    fn exact_neighbours_leave_the_row_out_and_blocks_change_nothing() {
        let v = random_vectors(1000, 16, 3);
        let rows = [0, 17, 999];
        let one_block = exact_neighbours_of_rows(&v, &rows, 10, 65_536);
        assert_eq!(one_block, exact_neighbours_of_rows(&v, &rows, 10, 97));
        let truth = VectorIndex::exact(&v)
            .search(&rows.map(|r| v.row(r).to_vec()), 11)
            .expect("exact");
        for ((found, &row), truth) in one_block.iter().zip(&rows).zip(&truth) {
            // The row itself is its own nearest; the next ten are its neighbours.
            assert_eq!(truth[0].row, row);
            let want: Vec<usize> = truth[1..].iter().map(|n| n.row).collect();
            assert_eq!(found, &want);
        }
    }

    #[test]
    fn calibration_widens_the_search_until_the_target_recall() {
        // Random 32-d vectors are hard for a graph: a search expansion of 1 misses many.
        let v = random_vectors(3000, 32, 5);
        let params = HnswParams {
            connectivity: 8,
            expansion_add: 32,
            expansion_search: 1,
            vectors: HnswVectors::F32,
        };
        let hnsw = VectorIndex::build_hnsw(&v, params, 2).expect("build");
        let low = hnsw
            .calibrate_expansion(&v, 1, 0.0001)
            .expect("calibrates")
            .expect("hnsw");
        assert_eq!(
            low.expansion_search, 1,
            "the start already meets a low target"
        );
        assert!(
            low.recall_at_10 < 0.99,
            "expansion 1 is not enough: {low:?}"
        );
        let calibrated = hnsw
            .calibrate_expansion(&v, 1, 0.99)
            .expect("calibrates")
            .expect("hnsw");
        assert!(calibrated.recall_at_10 >= 0.99, "{calibrated:?}");
        assert!(calibrated.expansion_search > 1, "{calibrated:?}");
        assert_eq!(calibrated.queries, CALIBRATION_QUERIES);
        // The index keeps the calibrated expansion: fresh queries now reach about the target too.
        let queries: Vec<Vec<f32>> = (0..100)
            .map(|i| random_vectors(1, 32, 100 + i).row(0).to_vec())
            .collect();
        let truth = VectorIndex::exact(&v).search(&queries, 10).expect("exact");
        let found = hnsw.search(&queries, 10).expect("hnsw");
        assert!(recall(&found, &truth) >= 0.97, "{}", recall(&found, &truth));
        // An exact index has nothing to calibrate.
        assert!(
            VectorIndex::exact(&v)
                .calibrate_expansion(&v, 1, 0.99)
                .expect("exact")
                .is_none()
        );
    }

    #[test]
    fn an_f16_graph_is_smaller_and_still_finds_neighbours() {
        let v = random_vectors(2000, 64, 9);
        let queries: Vec<Vec<f32>> = (0..50).map(|i| v.row(i * 31).to_vec()).collect();
        let truth = VectorIndex::exact(&v).search(&queries, 10).expect("exact");
        let mut memory = Vec::new();
        for kind in [HnswVectors::F32, HnswVectors::F16] {
            let params = HnswParams {
                connectivity: 16,
                expansion_add: 128,
                expansion_search: 128,
                vectors: kind,
            };
            let hnsw = VectorIndex::build_hnsw(&v, params, 2).expect("build");
            let r = recall(&hnsw.search(&queries, 10).expect("search"), &truth);
            assert!(r > 0.9, "{kind:?}: recall {r}");
            let bytes = hnsw.hnsw_bytes().expect("save").expect("bytes");
            let loaded = VectorIndex::load_hnsw(&bytes, 64, params).expect("load");
            assert_eq!(
                loaded.search(&queries, 10).expect("search"),
                hnsw.search(&queries, 10).expect("search"),
                "{kind:?} round trip"
            );
            memory.push(hnsw.data_bytes());
        }
        assert!(memory[1] < memory[0], "{memory:?}");
    }
}
