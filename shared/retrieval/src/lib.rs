//! medembed-retrieval owns how search results are judged and combined, with no model in it, so that the trainer's evaluator, the index's hybrid search and `medembed eval` share one
//! definition of each:
//! - [`measures`]: nDCG@10 with graded gains, MRR@10, Recall@k and MAP@100 of one ranked list,
//!   and their mean over queries;
//! - [`beir`]: test collections in the BEIR folder format (`corpus.jsonl`, `queries.jsonl`,
//!   `qrels/<split>.tsv`), read with errors that name the file and the line;
//! - [`fusion`]: combining a lexical and a dense ranking into one (reciprocal rank fusion, or
//!   normalized score combination);
//! - [`lexical`]: the BM25 index (tantivy) that hybrid search and the evaluations rank with.

pub mod beir;
pub mod fusion;
pub mod lexical;
pub mod measures;

pub use measures::Measures;
