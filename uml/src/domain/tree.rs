//! A small, hardened XML reader: the document becomes a tree of elements and text, and every
//! limit is enforced while reading, before anything is interpreted.
//!
//! Refused outright (hardening.md §2 item 10, §5.3): documents over `MAX_XML_BYTES`, nesting
//! deeper than `MAX_XML_DEPTH`, more than `MAX_XML_ELEMENTS` elements, any DOCTYPE (so no entity
//! declarations can exist), entity references other than XML's five predefined ones and
//! character references, characters XML 1.0 forbids, more than one root, and text outside it.

use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::error::DefError;

/// Largest document accepted: a real domain definition is a few KiB.
pub const MAX_XML_BYTES: usize = 1 << 20;
/// Deepest element nesting accepted; a domain needs 4 levels, metadata gets the rest.
pub const MAX_XML_DEPTH: usize = 64;
/// Most elements accepted in one document; keeps the tree small whatever the input.
pub const MAX_XML_ELEMENTS: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Element {
    pub(crate) name: String,
    /// Attributes in document order, values unescaped and normalised; `xmlns` declarations are
    /// left out (they carry no configuration).
    pub(crate) attrs: Vec<(String, String)>,
    pub(crate) children: Vec<Node>,
    /// Byte range of the element's content in the source, used to keep `<metadata>` verbatim.
    pub(crate) inner: Range<usize>,
}

#[derive(Debug)]
pub(crate) enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first piece of text that is not only whitespace, if any.
    pub(crate) fn stray_text(&self) -> Option<&str> {
        self.children.iter().find_map(|n| match n {
            Node::Text(t) if !t.trim().is_empty() => Some(t.as_str()),
            _ => None,
        })
    }

    /// All text content, concatenated.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }
}

/// Parses a whole document and returns its root element.
pub(crate) fn parse_document(xml: &str) -> Result<Element, DefError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(DefError::Xml(format!(
            "document is {} bytes, more than the {MAX_XML_BYTES} accepted",
            xml.len()
        )));
    }
    check_chars(xml)?;
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;

    loop {
        let before = pos(reader.buffer_position());
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(e) => return Err(syntax(xml, pos(reader.error_position()), e.to_string())),
        };
        match event {
            Event::Start(ref s) | Event::Empty(ref s) => {
                if root.is_some() {
                    return Err(syntax(
                        xml,
                        before,
                        "extra content at the end of the document",
                    ));
                }
                count += 1;
                if count > MAX_XML_ELEMENTS {
                    return Err(DefError::Xml(format!(
                        "document has more than {MAX_XML_ELEMENTS} elements"
                    )));
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(DefError::Xml(format!(
                        "elements are nested more than {MAX_XML_DEPTH} deep"
                    )));
                }
                let after = pos(reader.buffer_position());
                let el = start_element(s, after..after, xml, before)?;
                if matches!(event, Event::Start(_)) {
                    stack.push(el);
                } else {
                    attach(&mut stack, &mut root, el);
                }
            }
            Event::End(_) => {
                // quick-xml has already matched the end tag against the open one.
                let Some(mut el) = stack.pop() else {
                    return Err(syntax(xml, before, "end tag without start tag"));
                };
                el.inner.end = before.max(el.inner.start);
                attach(&mut stack, &mut root, el);
            }
            Event::Text(t) => push_text(&mut stack, xml, before, &t)?,
            Event::CData(c) => {
                if stack.is_empty() {
                    return Err(syntax(xml, before, "CDATA outside the root element"));
                }
                push_text(&mut stack, xml, before, &c)?;
            }
            Event::GeneralRef(r) => {
                if stack.is_empty() {
                    return Err(syntax(xml, before, "reference outside the root element"));
                }
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match &*r {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => {
                            return Err(DefError::Xml(format!(
                                "entity '&{other};' is not defined (only XML's predefined \
                                 entities are accepted)"
                            )))
                        }
                    },
                    Err(e) => return Err(syntax(xml, before, e.to_string())),
                };
                if !is_xml_char(ch) {
                    return Err(syntax(
                        xml,
                        before,
                        format!(
                            "character reference to U+{:04X}, which XML forbids",
                            ch as u32
                        ),
                    ));
                }
                let mut buf = [0u8; 4];
                push_text(&mut stack, xml, before, ch.encode_utf8(&mut buf))?;
            }
            Event::DocType(_) => {
                return Err(DefError::Xml(
                    "DOCTYPE declarations are not accepted in a domain definition".into(),
                ))
            }
            Event::Decl(d) => {
                if let Some(Ok(enc)) = d.encoding() {
                    let enc = enc.to_ascii_lowercase();
                    if enc != "utf-8" && enc != "utf8" && enc != "us-ascii" && enc != "ascii" {
                        return Err(DefError::Xml(format!(
                            "document encoding '{enc}' is not accepted: send UTF-8"
                        )));
                    }
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(syntax(
            xml,
            xml.len(),
            "premature end of data: an element is not closed",
        ));
    }
    root.ok_or_else(|| syntax(xml, xml.len(), "document is empty: no root element"))
}

fn pos(p: u64) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(Node::Element(el)),
        None => *root = Some(el),
    }
}

fn push_text(stack: &mut [Element], xml: &str, at: usize, text: &str) -> Result<(), DefError> {
    let Some(parent) = stack.last_mut() else {
        if text.trim().is_empty() {
            return Ok(());
        }
        return Err(syntax(xml, at, "text outside the root element"));
    };
    if let Some(Node::Text(prev)) = parent.children.last_mut() {
        prev.push_str(text);
    } else {
        parent.children.push(Node::Text(text.to_owned()));
    }
    Ok(())
}

fn start_element(
    s: &BytesStart<'_>,
    inner: Range<usize>,
    xml: &str,
    at: usize,
) -> Result<Element, DefError> {
    let name = s.name().as_ref().to_owned();
    let mut attrs: Vec<(String, String)> = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| syntax(xml, at, e.to_string()))?;
        let key = a.key.as_ref().to_owned();
        let value =
            a.normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| match e {
                    quick_xml::Error::Escape(
                        quick_xml::escape::EscapeError::UnrecognizedEntity(_, ent),
                    ) => DefError::Xml(format!(
                        "entity '&{ent};' is not defined (only XML's predefined entities are \
                     accepted)"
                    )),
                    other => syntax(xml, at, other.to_string()),
                })?
                .into_owned();
        if let Some(c) = value.chars().find(|c| !is_xml_char(*c)) {
            return Err(syntax(
                xml,
                at,
                format!(
                    "attribute '{key}' holds U+{:04X}, which XML forbids",
                    c as u32
                ),
            ));
        }
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
        inner,
    })
}

/// XML 1.0's `Char` production (Rust strings already exclude surrogates).
fn is_xml_char(c: char) -> bool {
    !matches!(c, '\0'..='\x08' | '\x0b' | '\x0c' | '\x0e'..='\x1f' | '\u{fffe}' | '\u{ffff}')
}

/// Raw characters XML forbids are refused everywhere, comments and CDATA included, so nothing
/// that reaches the output (metadata is copied verbatim) can upset a client's XML parser.
fn check_chars(xml: &str) -> Result<(), DefError> {
    match xml.char_indices().find(|(_, c)| !is_xml_char(*c)) {
        Some((at, c)) => Err(syntax(
            xml,
            at,
            format!("character U+{:04X} is not allowed in XML", c as u32),
        )),
        None => Ok(()),
    }
}

fn syntax(xml: &str, at: usize, message: impl Into<String>) -> DefError {
    let end = at.min(xml.len());
    let line = 1 + xml.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count();
    DefError::Syntax {
        line,
        message: message.into(),
    }
}
