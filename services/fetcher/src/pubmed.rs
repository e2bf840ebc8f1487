//! PubMed XML: `PubmedArticleSet` (efetch, baseline and update files) and the older
//! `MedlineCitationSet`.

use crate::article::{MeshHeading, RawArticle, Reference, Section, SourceFormat, format_date};
use crate::xml::Element;

/// `PubmedArticle` in a `PubmedArticleSet`; a bare `MedlineCitation` in a `MedlineCitationSet`.
pub(crate) const RECORDS: &[&str] = &["PubmedArticle", "MedlineCitation", "PubmedBookArticle"];

fn texts<'a>(parent: Option<&'a Element>, name: &'a str) -> Vec<String> {
    parent
        .map(|p| {
            p.children_named(name)
                .map(Element::text)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Extracts a [`RawArticle`] from a `PubmedArticle` or `MedlineCitation` element.
pub fn parse_record(record: &Element) -> RawArticle {
    let citation = if record.name == "MedlineCitation" {
        Some(record)
    } else {
        record
            .child("MedlineCitation")
            .or_else(|| record.child("BookDocument"))
    };
    // A book chapter (PubmedBookArticle) keeps title, abstract and authors on the BookDocument.
    let article = citation.and_then(|c| {
        c.child("Article")
            .or(Some(c).filter(|c| c.name == "BookDocument"))
    });
    let mut out = RawArticle {
        format: Some(SourceFormat::Pubmed),
        pmid: citation
            .and_then(|c| c.child("PMID"))
            .map(Element::text)
            .filter(|s| !s.is_empty()),
        title: article
            .and_then(|a| {
                a.child("ArticleTitle")
                    .or_else(|| a.path(&["Book", "BookTitle"]))
            })
            .map(Element::text)
            .unwrap_or_default(),
        ..RawArticle::default()
    };

    if let Some(abstract_el) = article.and_then(|a| a.child("Abstract")) {
        for segment in abstract_el.children_named("AbstractText") {
            let text = segment.text();
            if text.is_empty() {
                continue;
            }
            let title = segment.attr("Label").unwrap_or_default().to_string();
            out.abstract_sections.push(Section { title, text });
        }
        out.abstract_text = out
            .abstract_sections
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
    }

    if let Some(journal) = article.and_then(|a| a.child("Journal")) {
        out.journal = journal
            .child("Title")
            .map(Element::text)
            .filter(|s| !s.is_empty());
        let date = journal.path(&["JournalIssue", "PubDate"]);
        out.pub_date = date.and_then(|d| {
            format_date(
                d.child("Year").map(|e| e.text()).as_deref(),
                d.child("Month").map(|e| e.text()).as_deref(),
                d.child("Day").map(|e| e.text()).as_deref(),
            )
            // MedlineDate: "1998 Dec-1999 Jan" — its first year.
            .or_else(|| {
                d.child("MedlineDate")
                    .and_then(|m| format_date(m.text().get(..4), None, None))
            })
        });
    }
    // An electronic publication date is more precise than the issue's.
    if let Some(e) = article.and_then(|a| {
        a.children_named("ArticleDate")
            .find(|d| d.attr("DateType") == Some("Electronic"))
    }) {
        let text = |n: &str| e.child(n).map(Element::text);
        if let Some(d) = format_date(
            text("Year").as_deref(),
            text("Month").as_deref(),
            text("Day").as_deref(),
        ) {
            out.pub_date = Some(d);
        }
    }

    if let Some(authors) = article.and_then(|a| a.child("AuthorList")) {
        for author in authors.children_named("Author") {
            if let Some(collective) = author.child("CollectiveName") {
                out.authors.push(collective.text());
            } else if let Some(last) = author.child("LastName") {
                let given = author
                    .child("ForeName")
                    .or_else(|| author.child("Initials"))
                    .map(Element::text)
                    .unwrap_or_default();
                out.authors
                    .push(format!("{} {given}", last.text()).trim().to_string());
            }
        }
    }

    out.publication_types = texts(
        article.and_then(|a| a.child("PublicationTypeList")),
        "PublicationType",
    );
    out.keywords = citation
        .map(|c| {
            c.children_named("KeywordList")
                .flat_map(|k| texts(Some(k), "Keyword"))
                .collect()
        })
        .unwrap_or_default();

    if let Some(list) = citation.and_then(|c| c.child("MeshHeadingList")) {
        for heading in list.children_named("MeshHeading") {
            let Some(descriptor) = heading.child("DescriptorName") else {
                continue;
            };
            let qualifiers: Vec<&Element> = heading.children_named("QualifierName").collect();
            out.mesh.push(MeshHeading {
                descriptor: descriptor.text(),
                ui: descriptor.attr("UI").map(str::to_string),
                major: descriptor.attr("MajorTopicYN") == Some("Y")
                    || qualifiers
                        .iter()
                        .any(|q| q.attr("MajorTopicYN") == Some("Y")),
                qualifiers: qualifiers.iter().map(|q| q.text()).collect(),
            });
        }
    }

    if let Some(data) = record
        .child("PubmedData")
        .or_else(|| record.child("PubmedBookData"))
    {
        if let Some(ids) = data.child("ArticleIdList") {
            for id in ids.children_named("ArticleId") {
                let value = id.text();
                match id.attr("IdType") {
                    Some("doi") if out.doi.is_none() => out.doi = Some(value),
                    Some("pmc") if out.pmcid.is_none() => {
                        out.pmcid = Some(crate::article::normalize_pmcid(&value))
                    }
                    _ => {}
                }
            }
        }
        for list in data.children_named("ReferenceList") {
            for reference in list.children_named("Reference") {
                let mut r = Reference::default();
                if let Some(ids) = reference.child("ArticleIdList") {
                    for id in ids.children_named("ArticleId") {
                        let value = id.text();
                        match id.attr("IdType") {
                            Some("pubmed") => r.pmid = Some(value),
                            Some("pmc") => r.pmcid = Some(crate::article::normalize_pmcid(&value)),
                            Some("doi") => r.doi = Some(value),
                            _ => {}
                        }
                    }
                }
                if !r.is_empty() {
                    out.references.push(r);
                }
            }
        }
    }
    if out.doi.is_none() {
        out.doi = article
            .and_then(|a| {
                a.children_named("ELocationID")
                    .find(|e| e.attr("EIdType") == Some("doi"))
            })
            .map(Element::text);
    }
    out
}
