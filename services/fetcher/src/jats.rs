//! JATS XML (PMC): efetch `pmc-articleset`, single `.nxml` files of the PMC OA packages, and
//! OAI-PMH `GetRecord` responses. Each `<article>` is one record wherever it sits.

use crate::article::{RawArticle, Reference, Section, SourceFormat, format_date, normalize_pmcid};
use crate::xml::Element;

pub(crate) const RECORDS: &[&str] = &["article"];

/// Left out of body text: they are not prose, or repeat what the text says.
const NOT_PROSE: &[&str] = &[
    "fig",
    "table-wrap",
    "supplementary-material",
    "disp-formula",
    "inline-formula",
    "tex-math",
    "graphic",
    "media",
];

/// A section: its title apart, its text without the title and non-prose parts.
fn section_of(sec: &Element) -> Section {
    let mut skip = vec!["title", "label"];
    skip.extend_from_slice(NOT_PROSE);
    Section {
        title: sec.child("title").map(Element::text).unwrap_or_default(),
        text: sec.text_without(&skip),
    }
}

/// Extracts a [`RawArticle`] from an `<article>` element.
pub fn parse_article(article: &Element) -> RawArticle {
    let front = article.child("front");
    let meta = front.and_then(|f| f.child("article-meta"));
    let mut out = RawArticle {
        format: Some(SourceFormat::Jats),
        article_type: article.attr("article-type").map(str::to_string),
        title: meta
            .and_then(|m| m.path(&["title-group", "article-title"]))
            .map(Element::text)
            .unwrap_or_default(),
        ..RawArticle::default()
    };

    if let Some(meta) = meta {
        for id in meta.children_named("article-id") {
            let value = id.text();
            match id.attr("pub-id-type") {
                Some("pmid") => out.pmid = Some(value),
                Some("pmc" | "pmcid") => out.pmcid = Some(normalize_pmcid(&value)),
                Some("doi") => out.doi = Some(value),
                _ => {}
            }
        }

        // The main abstract: one without abstract-type (not a teaser or graphical abstract).
        let abstracts: Vec<&Element> = meta.children_named("abstract").collect();
        if let Some(abs) = abstracts
            .iter()
            .find(|a| a.attr("abstract-type").is_none())
            .or(abstracts.first())
        {
            let secs: Vec<&Element> = abs.children_named("sec").collect();
            if secs.is_empty() {
                let text = abs.text_without(&["title", "label"]);
                if !text.is_empty() {
                    out.abstract_sections.push(Section {
                        title: String::new(),
                        text,
                    });
                }
            } else {
                out.abstract_sections = secs
                    .into_iter()
                    .map(section_of)
                    .filter(|s| !s.text.is_empty())
                    .collect();
            }
            out.abstract_text = out
                .abstract_sections
                .iter()
                .map(|s| s.text.as_str())
                .collect::<Vec<_>>()
                .join(" ");
        }

        out.keywords = meta
            .children_named("kwd-group")
            .flat_map(|g| g.children_named("kwd").map(Element::text))
            .filter(|k| !k.is_empty())
            .collect();

        out.pub_date = publication_date(meta);

        for group in meta.children_named("contrib-group") {
            for contrib in group
                .children_named("contrib")
                .filter(|c| c.attr("contrib-type").is_none_or(|t| t == "author"))
            {
                if let Some(name) = contrib.child("name").or_else(|| contrib.find("name")) {
                    let surname = name.child("surname").map(Element::text).unwrap_or_default();
                    let given = name
                        .child("given-names")
                        .map(Element::text)
                        .unwrap_or_default();
                    let full = format!("{surname} {given}").trim().to_string();
                    if !full.is_empty() {
                        out.authors.push(full);
                    }
                } else if let Some(collab) = contrib.child("collab") {
                    out.authors.push(collab.text());
                }
            }
        }

        if let Some(license) = meta.child("permissions").and_then(|p| p.child("license")) {
            out.license = license
                .attr("href")
                .map(str::to_string)
                .or_else(|| license.attr("license-type").map(str::to_string))
                .or_else(|| Some(license.text()).filter(|t| !t.is_empty()));
        }
    }

    out.journal = front
        .and_then(|f| f.child("journal-meta"))
        .and_then(|j| {
            j.path(&["journal-title-group", "journal-title"])
                .or_else(|| j.child("journal-title"))
        })
        .map(Element::text);

    if let Some(body) = article.child("body") {
        let secs: Vec<&Element> = body.children_named("sec").collect();
        let loose = body
            .elements()
            .filter(|e| e.name == "p")
            .map(|p| p.text_without(NOT_PROSE))
            .collect::<Vec<_>>()
            .join(" ");
        if !loose.trim().is_empty() {
            out.body_sections.push(Section {
                title: String::new(),
                text: loose,
            });
        }
        out.body_sections.extend(
            secs.into_iter()
                .map(section_of)
                .filter(|s| !s.text.is_empty()),
        );
    }

    if let Some(back) = article.child("back") {
        let mut lists = Vec::new();
        back.descendants("ref-list", &mut lists);
        for list in lists {
            let mut refs = Vec::new();
            list.descendants("ref", &mut refs);
            for reference in refs {
                let mut ids = Vec::new();
                reference.descendants("pub-id", &mut ids);
                let mut r = Reference::default();
                for id in ids {
                    let value = id.text();
                    match id.attr("pub-id-type") {
                        Some("pmid") => r.pmid = Some(value),
                        Some("pmc" | "pmcid") => r.pmcid = Some(normalize_pmcid(&value)),
                        Some("doi") => r.doi = Some(value),
                        _ => {}
                    }
                }
                if !r.is_empty() {
                    out.references.push(r);
                }
            }
        }
    }
    out
}

/// Prefers the electronic publication date, then print, then any.
fn publication_date(meta: &Element) -> Option<String> {
    let dates: Vec<&Element> = meta.children_named("pub-date").collect();
    let kind = |d: &Element| {
        d.attr("pub-type")
            .or_else(|| d.attr("date-type"))
            .unwrap_or_default()
            .to_string()
    };
    let electronic =
        |d: &Element| kind(d) == "epub" || d.attr("publication-format") == Some("electronic");
    let print = |d: &Element| kind(d) == "ppub" || d.attr("publication-format") == Some("print");
    let pick = dates
        .iter()
        .find(|d| electronic(d))
        .or_else(|| dates.iter().find(|d| print(d)))
        .or(dates.first())?;
    let text = |n: &str| pick.child(n).map(Element::text);
    format_date(
        text("year").as_deref(),
        text("month").as_deref(),
        text("day").as_deref(),
    )
}
