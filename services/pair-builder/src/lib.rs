//! medembed-pair-builder: the pairs stage. It owns turning a job's clean corpus into leak-free
//! contrastive pairs: the compact [`corpus`], document-level [`split`]s, term-overlap candidates
//! through an inverted index ([`terms`]), the pair rules, negatives and evaluation sets
//! ([`build`]), the writers ([`output`]) and the barrier stage ([`stage`]).

pub mod build;
pub mod corpus;
pub mod devset;
pub mod output;
pub mod split;
pub mod stage;
pub mod synthetic;
pub mod terms;
