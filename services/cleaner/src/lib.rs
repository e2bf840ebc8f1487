//! medembed-cleaner: the clean stage. It owns turning raw article text into clean text:
//! the removal and normalization rules ([`text`]), abbreviations defined in the text
//! ([`abbrev`]), per-article filtering and the embedding text ([`article`]), and the stage over
//! the object store ([`stage`]).

pub mod abbrev;
pub mod article;
pub mod stage;
pub mod text;

pub use article::Cleaner;
pub use text::{CitationStyle, TextRules};
