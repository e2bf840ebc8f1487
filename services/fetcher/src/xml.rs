//! A streaming reader that yields one record (an article) at a time as a small element tree.
//!
//! Files can hold hundreds of thousands of articles (PubMed baseline) or one huge document, so
//! the reader never builds a tree of the whole file: it skips everything outside the record
//! elements it is asked for and builds a tree of one record at a time, which the caller drops
//! after extracting its fields. Limits keep hostile input from exhausting memory:
//! - a record larger than [`Limits::max_record_bytes`] is an error (the rest of the file still reads);
//! - nesting deeper than [`Limits::max_depth`] is an error;
//! - a DOCTYPE that declares entities is refused (no "billion laughs"): entity references other than
//!   the five XML ones and character references are never expanded.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_xml::Reader;
use quick_xml::events::Event;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest record (article) accepted, in bytes of XML.
    pub max_record_bytes: u64,
    /// Deepest element nesting accepted.
    pub max_depth: usize,
    /// Most bytes one bulk file (or tarball member) may decompress to.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: 64 * 1024 * 1024,
            max_depth: 256,
            max_file_bytes: 32 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("{source_name}: malformed XML at byte {position}: {message}")]
    Malformed {
        source_name: String,
        position: u64,
        message: String,
    },
    #[error(
        "{source_name}: the DOCTYPE declares entities, which are refused (entity expansion attacks)"
    )]
    EntityDeclaration { source_name: String },
    #[error("{source_name}: elements nested deeper than {max_depth} at byte {position}")]
    TooDeep {
        source_name: String,
        position: u64,
        max_depth: usize,
    },
    #[error(
        "{source_name}: record <{element}> at byte {start} is larger than the {max_bytes}-byte cap"
    )]
    RecordTooLarge {
        source_name: String,
        element: String,
        start: u64,
        max_bytes: u64,
    },
    #[error(
        "{source_name}: a single XML node at byte {start} is larger than the {max_bytes}-byte cap"
    )]
    NodeTooLarge {
        source_name: String,
        start: u64,
        max_bytes: u64,
    },
    #[error("{source_name}: the document ended inside <{element}> (truncated?)")]
    Truncated {
        source_name: String,
        element: String,
    },
    #[error("{source_name}: not XML: {snippet:?}")]
    NotXml {
        source_name: String,
        snippet: String,
    },
}

impl XmlError {
    /// Whether reading can go on with the next record after this error.
    pub fn is_record_local(&self) -> bool {
        matches!(self, XmlError::RecordTooLarge { .. })
    }
}

/// A node of a record's tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An element: local name (namespace prefix dropped), attributes, children.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// Every child element called `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.elements().filter(move |e| e.name == name)
    }

    /// The element at a path of child names, e.g. `["MedlineCitation", "Article"]`.
    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |e, n| e.child(n))
    }

    /// Every descendant element called `name`, in document order (not below a match).
    pub fn descendants<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        for e in self.elements() {
            if e.name == name {
                out.push(e);
            } else {
                e.descendants(name, out);
            }
        }
    }

    /// The first descendant called `name`.
    pub fn find(&self, name: &str) -> Option<&Element> {
        let mut found = Vec::new();
        self.descendants(name, &mut found);
        found.into_iter().next()
    }

    /// All text below this element, whitespace collapsed. Block-level children are separated by
    /// a space, so "<title>Background</title><p>We…" reads "Background We…", never "BackgroundWe…".
    pub fn text(&self) -> String {
        self.text_without(&[])
    }

    /// As [`Element::text`], leaving out descendants called one of `skip` (at any depth).
    pub fn text_without(&self, skip: &[&str]) -> String {
        let mut raw = String::new();
        self.collect_text(&mut raw, skip);
        collapse_whitespace(&raw)
    }

    fn collect_text(&self, out: &mut String, skip: &[&str]) {
        for node in &self.children {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Element(e) if skip.contains(&e.name.as_str()) => out.push(' '),
                Node::Element(e) if e.is_superscript_citation() => {
                    // "Korea<sup><xref>1</xref>–<xref>4</xref></sup>." flattened would read
                    // "Korea1–4."; in brackets the cleaner knows it for a citation marker.
                    out.push('[');
                    e.collect_text(out, skip);
                    out.push(']');
                }
                Node::Element(e) => {
                    let block = is_block(&e.name);
                    if block {
                        out.push(' ');
                    }
                    e.collect_text(out, skip);
                    if block {
                        out.push(' ');
                    }
                }
            }
        }
    }
}

impl Element {
    /// A JATS superscript holding only bibliography cross-references and separators.
    fn is_superscript_citation(&self) -> bool {
        self.name == "sup"
            && self.elements().next().is_some()
            && self.children.iter().all(|n| match n {
                Node::Element(x) => x.name == "xref" && x.attr("ref-type") == Some("bibr"),
                Node::Text(t) => t
                    .chars()
                    .all(|c| c.is_whitespace() || matches!(c, ',' | '-' | '\u{2013}' | '\u{2014}')),
            })
    }
}

/// Elements whose text is a unit of its own (a space goes around them when flattening).
fn is_block(name: &str) -> bool {
    matches!(
        name,
        "p" | "title"
            | "sec"
            | "label"
            | "caption"
            | "list-item"
            | "def"
            | "term"
            | "AbstractText"
            | "td"
            | "th"
            | "tr"
            | "disp-quote"
            | "statement"
            | "fn"
    )
}

/// Collapses runs of whitespace (including non-breaking spaces) into one space and trims.
pub fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split(|c: char| c.is_whitespace()) {
        if !word.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
    }
    out
}

/// How far the capped input may be read: bytes consumed so far, and the limit.
#[derive(Debug, Default)]
struct Budget {
    consumed: AtomicU64,
    limit: AtomicU64,
}

/// Input that refuses to be read past its budget. quick-xml reads a whole text node into memory
/// before returning it, so without this one 300 MB text node would take 300 MB; with it, no single
/// node can be larger than the record cap.
#[derive(Debug)]
struct CappedInput<R> {
    inner: R,
    budget: Arc<Budget>,
}

const OVER_BUDGET: &str = "medembed: XML node over the size cap";

impl<R: BufRead> std::io::Read for CappedInput<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CappedInput<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        let consumed = self.budget.consumed.load(Ordering::Relaxed);
        let left = self
            .budget
            .limit
            .load(Ordering::Relaxed)
            .saturating_sub(consumed);
        if left == 0 {
            return Err(std::io::Error::other(OVER_BUDGET));
        }
        let buf = self.inner.fill_buf()?;
        Ok(&buf[..buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))])
    }

    fn consume(&mut self, n: usize) {
        self.budget.consumed.fetch_add(n as u64, Ordering::Relaxed);
        self.inner.consume(n);
    }
}

/// Reads the records called one of `record_names` from an XML stream, one at a time.
pub struct RecordReader<R: BufRead> {
    reader: Reader<CappedInput<R>>,
    budget: Arc<Budget>,
    source_name: String,
    record_names: &'static [&'static str],
    limits: Limits,
    buf: Vec<u8>,
    depth: usize,
    done: bool,
    seen_root: bool,
}

impl<R: BufRead> std::fmt::Debug for RecordReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("source", &self.source_name)
            .finish_non_exhaustive()
    }
}

fn malformed<R>(
    source_name: &str,
    reader: &Reader<R>,
    message: impl std::fmt::Display,
) -> XmlError {
    XmlError::Malformed {
        source_name: source_name.to_string(),
        position: reader.error_position(),
        message: message.to_string(),
    }
}

fn element_of<R>(
    e: &quick_xml::events::BytesStart<'_>,
    source_name: &str,
    reader: &Reader<R>,
) -> Result<Element, XmlError> {
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| malformed(source_name, reader, err))?;
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| malformed(source_name, reader, err))?;
        attrs.push((local_name(a.key.as_ref()), value.into_owned()));
    }
    Ok(Element {
        name: local_name(e.name().as_ref()),
        attrs,
        children: Vec::new(),
    })
}

fn check_depth<R>(
    depth: usize,
    limits: &Limits,
    source_name: &str,
    reader: &Reader<R>,
) -> Result<(), XmlError> {
    if depth > limits.max_depth {
        return Err(XmlError::TooDeep {
            source_name: source_name.to_string(),
            position: reader.buffer_position(),
            max_depth: limits.max_depth,
        });
    }
    Ok(())
}

fn local_name(qname: &str) -> String {
    qname.rsplit(':').next().unwrap_or(qname).to_string()
}

impl<R: BufRead> RecordReader<R> {
    /// `source_name` names the file or URL in errors.
    pub fn new(
        input: R,
        source_name: impl Into<String>,
        record_names: &'static [&'static str],
        limits: Limits,
    ) -> Self {
        let budget = Arc::new(Budget::default());
        let mut reader = Reader::from_reader(CappedInput {
            inner: input,
            budget: budget.clone(),
        });
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        Self {
            reader,
            budget,
            source_name: source_name.into(),
            record_names,
            limits,
            buf: Vec::new(),
            depth: 0,
            done: false,
            seen_root: false,
        }
    }

    /// The next record, `Ok(None)` at the end of the input. After a record-local error
    /// ([`XmlError::is_record_local`]) the next call continues after that record; after any
    /// other error the reader is done.
    pub fn next_record(&mut self) -> Result<Option<Element>, XmlError> {
        if self.done {
            return Ok(None);
        }
        let result = self.read_next();
        if let Err(e) = &result
            && !e.is_record_local()
        {
            self.done = true;
        }
        result
    }

    fn read_next(&mut self) -> Result<Option<Element>, XmlError> {
        loop {
            self.buf.clear();
            let position = self.reader.buffer_position();
            let event = read_capped(
                &mut self.reader,
                &self.budget,
                &mut self.buf,
                &self.source_name,
                self.limits.max_record_bytes,
            )?;
            match event {
                Event::Start(e) => {
                    if !self.seen_root && e.name().as_ref().eq_ignore_ascii_case("html") {
                        return Err(XmlError::NotXml {
                            source_name: self.source_name.clone(),
                            snippet: "an HTML page (an error page instead of XML?)".into(),
                        });
                    }
                    self.seen_root = true;
                    self.depth += 1;
                    check_depth(self.depth, &self.limits, &self.source_name, &self.reader)?;
                    if self
                        .record_names
                        .iter()
                        .any(|n| local_name(e.name().as_ref()) == *n)
                    {
                        let root = element_of(&e, &self.source_name, &self.reader)?;
                        return self.read_record(root, position).map(Some);
                    }
                }
                Event::Empty(_) => self.seen_root = true,
                Event::End(_) => self.depth = self.depth.saturating_sub(1),
                Event::DocType(d) if d.borrow().into_inner().contains("<!ENTITY") => {
                    return Err(XmlError::EntityDeclaration {
                        source_name: self.source_name.clone(),
                    });
                }
                Event::Text(t) if !self.seen_root => {
                    let text = t.into_inner();
                    if !text.trim().is_empty() {
                        return Err(XmlError::NotXml {
                            source_name: self.source_name.clone(),
                            snippet: text.trim().chars().take(80).collect(),
                        });
                    }
                }
                Event::Eof => {
                    self.done = true;
                    if !self.seen_root {
                        return Err(XmlError::NotXml {
                            source_name: self.source_name.clone(),
                            snippet: String::new(),
                        });
                    }
                    if self.depth > 0 {
                        return Err(XmlError::Truncated {
                            source_name: self.source_name.clone(),
                            element: "(document)".into(),
                        });
                    }
                    return Ok(None);
                }
                _ => {}
            }
        }
    }

    /// Builds the tree of one record whose start tag was just read.
    fn read_record(&mut self, root: Element, start: u64) -> Result<Element, XmlError> {
        let mut stack = vec![root];
        loop {
            if self.reader.buffer_position() - start > self.limits.max_record_bytes {
                let element = stack[0].name.clone();
                self.skip_rest(stack.len())?;
                return Err(XmlError::RecordTooLarge {
                    source_name: self.source_name.clone(),
                    element,
                    start,
                    max_bytes: self.limits.max_record_bytes,
                });
            }
            self.buf.clear();
            let event = read_capped(
                &mut self.reader,
                &self.budget,
                &mut self.buf,
                &self.source_name,
                self.limits.max_record_bytes,
            )?;
            let top = stack.last_mut().expect("the record root is on the stack");
            match event {
                Event::Start(e) => {
                    self.depth += 1;
                    check_depth(self.depth, &self.limits, &self.source_name, &self.reader)?;
                    let el = element_of(&e, &self.source_name, &self.reader)?;
                    stack.push(el);
                }
                Event::Empty(e) => {
                    let el = element_of(&e, &self.source_name, &self.reader)?;
                    stack
                        .last_mut()
                        .expect("root")
                        .children
                        .push(Node::Element(el));
                }
                Event::Text(t) => push_text(top, &t.xml10_content()),
                Event::CData(c) => push_text(top, &c.into_inner()),
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        _ => match r.into_inner().as_ref() {
                            "amp" => "&".into(),
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "quot" => "\"".into(),
                            "apos" => "'".into(),
                            // Never expanded: kept as written.
                            other => format!("&{other};"),
                        },
                    };
                    push_text(top, &resolved);
                }
                Event::End(_) => {
                    self.depth = self.depth.saturating_sub(1);
                    let done = stack.pop().expect("non-empty");
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Element(done)),
                        None => return Ok(done),
                    }
                }
                Event::Eof => {
                    self.done = true;
                    return Err(XmlError::Truncated {
                        source_name: self.source_name.clone(),
                        element: stack[0].name.clone(),
                    });
                }
                _ => {}
            }
        }
    }

    /// Reads past the end of a record that is being dropped, keeping only the nesting count.
    fn skip_rest(&mut self, mut open: usize) -> Result<(), XmlError> {
        while open > 0 {
            self.buf.clear();
            match read_capped(
                &mut self.reader,
                &self.budget,
                &mut self.buf,
                &self.source_name,
                self.limits.max_record_bytes,
            )? {
                Event::Start(_) => {
                    open += 1;
                    self.depth += 1;
                    check_depth(self.depth, &self.limits, &self.source_name, &self.reader)?;
                }
                Event::End(_) => {
                    open -= 1;
                    self.depth = self.depth.saturating_sub(1);
                }
                Event::Eof => {
                    self.done = true;
                    return Err(XmlError::Truncated {
                        source_name: self.source_name.clone(),
                        element: "(skipped record)".into(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Reads one event, allowing it at most `max_bytes` of input.
fn read_capped<'b, R: BufRead>(
    reader: &mut Reader<CappedInput<R>>,
    budget: &Budget,
    buf: &'b mut Vec<u8>,
    source_name: &str,
    max_bytes: u64,
) -> Result<Event<'b>, XmlError> {
    let start = budget.consumed.load(Ordering::Relaxed);
    budget
        .limit
        .store(start.saturating_add(max_bytes), Ordering::Relaxed);
    match reader.read_event_into(buf) {
        Ok(event) => Ok(event),
        Err(quick_xml::Error::Io(e)) if e.to_string() == OVER_BUDGET => {
            Err(XmlError::NodeTooLarge {
                source_name: source_name.to_string(),
                start,
                max_bytes,
            })
        }
        Err(e) => Err(malformed(source_name, reader, e)),
    }
}

fn push_text(parent: &mut Element, text: &str) {
    if let Some(Node::Text(last)) = parent.children.last_mut() {
        last.push_str(text);
    } else {
        parent.children.push(Node::Text(text.to_string()));
    }
}
