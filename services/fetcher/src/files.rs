//! Bulk files as a source (`--source files:PATH`): how users with millions of articles avoid the
//! E-utilities limits. Reads PubMed baseline/update `.xml.gz`, PMC OA `.nxml`/`.xml`, and `.tar.gz`
//! packages of those, from a local directory or an object-store prefix.
//!
//! The format of each XML document is sniffed from its first bytes (root element), not trusted
//! from its name: baseline files and PMC files are both `.xml`.

use std::io::{BufRead, BufReader, Read};

use crate::article::{ArticleReader, RawArticle};
use crate::xml::{Limits, XmlError};

/// Which parser a document needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XmlFormat {
    Pubmed,
    Jats,
}

/// Guesses the format from the start of a document; None if neither root element appears.
pub fn sniff(head: &[u8]) -> Option<XmlFormat> {
    let head = String::from_utf8_lossy(head);
    if head.contains("<PubmedArticleSet")
        || head.contains("<MedlineCitationSet")
        || head.contains("<PubmedArticle")
    {
        Some(XmlFormat::Pubmed)
    } else if head.contains("<pmc-articleset")
        || head.contains("<article")
        || head.contains("<OAI-PMH")
    {
        Some(XmlFormat::Jats)
    } else {
        None
    }
}

/// What a bulk file is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Xml,
    XmlGz,
    TarGz,
}

impl FileKind {
    pub fn of(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(Self::TarGz)
        } else if lower.ends_with(".xml.gz") || lower.ends_with(".nxml.gz") {
            Some(Self::XmlGz)
        } else if lower.ends_with(".xml") || lower.ends_with(".nxml") {
            Some(Self::Xml)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    #[error("{name}: {what}, not PubMed XML or JATS")]
    UnknownFormat { name: String, what: &'static str },
    #[error("{message}")]
    Record { message: String },
}

/// Every article of the bulk files at `path` (a file, or a directory read in name order), for
/// tools, tests and benchmarks that want them in memory. The first unreadable record or file is
/// the error.
pub fn read_local(path: &std::path::Path, limits: Limits) -> Result<Vec<RawArticle>, FileError> {
    let io = |source: std::io::Error| FileError::Io {
        name: path.display().to_string(),
        source,
    };
    let mut out = Vec::new();
    for file in crate::stage::list_local(path).map_err(io)? {
        let name = file.display().to_string();
        let kind = FileKind::of(&name).expect("list_local returns bulk files only");
        let input = std::fs::File::open(&file).map_err(|source| FileError::Io {
            name: name.clone(),
            source,
        })?;
        let mut record_error: Option<XmlError> = None;
        let mut document_error: Option<FileError> = None;
        let mut each = |a: Result<RawArticle, XmlError>| match a {
            Ok(a) => out.push(a),
            Err(e) => {
                record_error.get_or_insert(e);
            }
        };
        let mut on_document = |e: FileError| {
            document_error.get_or_insert(e);
        };
        read_file(&name, kind, input, limits, &mut each, &mut on_document)?;
        if let Some(e) = document_error {
            return Err(e);
        }
        if let Some(e) = record_error {
            return Err(FileError::Record {
                message: e.to_string(),
            });
        }
    }
    Ok(out)
}

/// Reads every article of one XML document, calling `each` for each article or record error.
/// A document-level problem (unknown format, unreadable) is returned as the error.
pub fn read_document(
    name: &str,
    input: impl Read,
    limits: Limits,
    each: &mut dyn FnMut(Result<RawArticle, XmlError>),
) -> Result<(), FileError> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let head = input
        .fill_buf()
        .map_err(|source| FileError::Io {
            name: name.to_string(),
            source,
        })?
        .to_vec();
    let format = if head.is_empty() {
        // Let the parser report the empty document in its own words.
        XmlFormat::Pubmed
    } else {
        let head = &head[..head.len().min(16 * 1024)];
        sniff(head).ok_or_else(|| FileError::UnknownFormat {
            name: name.to_string(),
            what: if String::from_utf8_lossy(head)
                .to_ascii_lowercase()
                .contains("<html")
            {
                "an HTML page (an error page saved as a file?)"
            } else {
                "no PubmedArticleSet, MedlineCitationSet, pmc-articleset or article root"
            },
        })?
    };
    let reader = match format {
        XmlFormat::Pubmed => ArticleReader::pubmed(input, name, limits),
        XmlFormat::Jats => ArticleReader::jats(input, name, limits),
    };
    for article in reader {
        each(article);
    }
    Ok(())
}

/// A reader that fails once more than `max` bytes came through: what stops a gzip bomb (a
/// small file that decompresses without end) at `fetch.max_file_bytes`, with that reason.
struct Capped<R> {
    inner: R,
    name: String,
    left: u64,
    max: u64,
}

impl<R: Read> Capped<R> {
    fn new(inner: R, name: &str, max: u64) -> Self {
        Self {
            inner,
            name: name.to_string(),
            left: max,
            max,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more tells a file of exactly `max` bytes from a longer one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(format!(
                    "{} decompresses to more than {} bytes (fetch.max_file_bytes): a gzip bomb, or raise the limit",
                    self.name, self.max
                ))),
            };
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads every article of one bulk file (`.xml`, `.nxml`, `.xml.gz`, `.tar.gz`), streaming:
/// nothing but the current record is held in memory, and no file or member may decompress
/// past `limits.max_file_bytes`. Members of a tarball that are not XML are passed over.
pub fn read_file(
    name: &str,
    kind: FileKind,
    input: impl Read,
    limits: Limits,
    each: &mut dyn FnMut(Result<RawArticle, XmlError>),
    on_document_error: &mut dyn FnMut(FileError),
) -> Result<(), FileError> {
    let cap = limits.max_file_bytes;
    match kind {
        FileKind::Xml => read_document(name, Capped::new(input, name, cap), limits, each),
        FileKind::XmlGz => read_document(
            name,
            Capped::new(flate2::read::MultiGzDecoder::new(input), name, cap),
            limits,
            each,
        ),
        FileKind::TarGz => {
            let mut archive =
                tar::Archive::new(Capped::new(flate2::read::GzDecoder::new(input), name, cap));
            let entries = archive.entries().map_err(|source| FileError::Io {
                name: name.to_string(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| FileError::Io {
                    name: name.to_string(),
                    source,
                })?;
                let member = format!(
                    "{name}!{}",
                    entry
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
                match FileKind::of(&member) {
                    Some(FileKind::Xml) => {
                        if let Err(e) = read_document(&member, entry, limits, each) {
                            on_document_error(e);
                        }
                    }
                    Some(FileKind::XmlGz) => {
                        if let Err(e) = read_document(
                            &member,
                            Capped::new(flate2::read::MultiGzDecoder::new(entry), &member, cap),
                            limits,
                            each,
                        ) {
                            on_document_error(e);
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_decompresses_past_the_cap_fails_with_that_reason() {
        use std::io::Write;
        // 64 MB of valid, small, skipped elements: about 100 KB gzipped.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"<PubmedArticleSet>").unwrap();
        let filler =
            b"<DeleteCitation><PMID Version=\"1\">1</PMID></DeleteCitation>\n".repeat(1024);
        let mut written = 0;
        while written < 64 << 20 {
            gz.write_all(&filler).unwrap();
            written += filler.len();
        }
        gz.write_all(b"</PubmedArticleSet>").unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        let limits = Limits {
            max_file_bytes: 8 << 20,
            ..Limits::default()
        };
        let errors = std::cell::RefCell::new(Vec::new());
        let mut each = |r: Result<RawArticle, XmlError>| {
            if let Err(e) = r {
                errors.borrow_mut().push(e.to_string());
            }
        };
        let mut on_doc = |e: FileError| errors.borrow_mut().push(e.to_string());
        read_file(
            "bomb.xml.gz",
            FileKind::XmlGz,
            &bomb[..],
            limits,
            &mut each,
            &mut on_doc,
        )
        .unwrap();
        let errors = errors.into_inner();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("bomb.xml.gz") && errors[0].contains("fetch.max_file_bytes"),
            "{errors:?}"
        );
        // Under the cap the same file reads to its end.
        let mut errors = 0;
        let mut each = |r: Result<RawArticle, XmlError>| errors += r.is_err() as usize;
        let mut on_doc = |_: FileError| {};
        read_file(
            "ok.xml.gz",
            FileKind::XmlGz,
            &bomb[..],
            Limits::default(),
            &mut each,
            &mut on_doc,
        )
        .unwrap();
        assert_eq!(errors, 0);
    }

    #[test]
    fn kinds_by_name_and_formats_by_content() {
        assert_eq!(FileKind::of("pubmed25n0001.xml.gz"), Some(FileKind::XmlGz));
        assert_eq!(FileKind::of("PMC123.NXML"), Some(FileKind::Xml));
        assert_eq!(
            FileKind::of("oa_package/PMC1.tar.gz"),
            Some(FileKind::TarGz)
        );
        assert_eq!(FileKind::of("readme.txt"), None);
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?>\n<!DOCTYPE x>\n<PubmedArticleSet>"),
            Some(XmlFormat::Pubmed)
        );
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?><article article-type=\"research-article\">"),
            Some(XmlFormat::Jats)
        );
        assert_eq!(sniff(b"<html><body>"), None);
    }
}
