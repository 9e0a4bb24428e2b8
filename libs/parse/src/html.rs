//! HTML content as the answer keys see it (labelled README rule 1): the visible text, plus the
//! values of `href`, `src` and `action`, character references decoded; never the DOCTYPE,
//! comments (Outlook's `<!--[if mso]>` blocks included), `<head>`, `<style>`, `<script>`,
//! `<title>` or any other attribute. Links keep their visible text for mismatch checks.
//!
//! Linear: a single forward pass. Every search (`find` of `>`, `-->`, the next `<`) starts where
//! the previous one stopped, so each byte is examined a bounded number of times.

/// What an HTML part contributes to extraction.
#[derive(Debug, Default)]
pub(crate) struct HtmlContent {
    /// Visible text; block elements start new lines, table cells are separated by tabs.
    pub(crate) text: String,
    /// `href`, `src` and `action` values outside `<head>`, decoded.
    pub(crate) attributes: Vec<Attribute>,
    /// Every `<a href>` with its visible text.
    pub(crate) links: Vec<Link>,
}

/// An in-scope attribute value.
#[derive(Debug)]
pub(crate) struct Attribute {
    pub(crate) name: &'static str,
    pub(crate) value: String,
}

/// An anchor.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) href: String,
    /// Visible text, whitespace collapsed and trimmed.
    pub(crate) text: String,
}

/// Elements whose content is not visible text.
const RAW_TEXT: &[&str] = &["style", "script", "title", "textarea", "xml"];

/// Elements that start a new line of visible text.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "tr",
    "table",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "blockquote",
    "pre",
    "section",
    "article",
    "header",
    "footer",
    "dd",
    "dt",
    "dl",
    "tbody",
    "thead",
    "tfoot",
    "form",
    "center",
    "address",
    "caption",
    "body",
    "html",
];

/// Extracts the in-scope content of an HTML document.
pub(crate) fn content(html: &str) -> HtmlContent {
    let mut out = HtmlContent::default();
    let mut pos = 0;
    let mut in_head = false;
    let mut in_pre = 0usize;
    // (href, start of the anchor text in out.text)
    let mut anchor: Option<(String, usize)> = None;
    while pos < html.len() {
        let Some(lt) = html[pos..].find('<').map(|i| pos + i) else {
            if !in_head {
                push_text(&html[pos..], in_pre > 0, &mut out.text);
            }
            break;
        };
        if !in_head {
            push_text(&html[pos..lt], in_pre > 0, &mut out.text);
        }
        let rest = &html[lt..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            pos = comment.find("-->").map_or(html.len(), |i| lt + 4 + i + 3);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            pos = rest.find('>').map_or(html.len(), |i| lt + i + 1);
            continue;
        }
        let closing = rest.as_bytes().get(1) == Some(&b'/');
        let name_start = lt + if closing { 2 } else { 1 };
        let name_len = html[name_start..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b':' || *b == b'-')
            .count();
        if name_len == 0 {
            // A lone `<` is text.
            if !in_head {
                push_text("<", in_pre > 0, &mut out.text);
            }
            pos = lt + 1;
            continue;
        }
        // Tag names that matter are short: compare a lower-cased copy on the stack.
        let mut name_buf = [0u8; 16];
        let name: &str = if name_len <= name_buf.len() {
            let lower = &mut name_buf[..name_len];
            lower.copy_from_slice(&html.as_bytes()[name_start..name_start + name_len]);
            lower.make_ascii_lowercase();
            std::str::from_utf8(lower).unwrap_or_default()
        } else {
            ""
        };
        let (attrs, tag_end) = attributes(html, name_start + name_len, !in_head && !closing);
        pos = tag_end;
        if closing {
            match name {
                "head" => in_head = false,
                "pre" => {
                    in_pre = in_pre.saturating_sub(1);
                    newline(&mut out.text);
                }
                "a" => {
                    if let Some((href, start)) = anchor.take() {
                        push_link(&mut out, href, start);
                    }
                }
                "td" | "th" => cell(&mut out.text),
                n if BLOCKS.contains(&n) => newline(&mut out.text),
                _ => {}
            }
            continue;
        }
        match name {
            "head" => in_head = true,
            "body" => in_head = false,
            "pre" => in_pre += 1,
            _ => {}
        }
        if BLOCKS.contains(&name) || name == "pre" {
            newline(&mut out.text);
        } else if name == "td" || name == "th" {
            cell(&mut out.text);
        }
        if !in_head {
            for (attr, value) in attrs {
                if attr == "href" && name == "a" {
                    if let Some((href, start)) = anchor.take() {
                        push_link(&mut out, href, start);
                    }
                    anchor = Some((value.clone(), out.text.len()));
                }
                out.attributes.push(Attribute { name: attr, value });
            }
        }
        if RAW_TEXT.contains(&name) {
            pos = skip_raw_text(html, pos, name);
        }
    }
    if let Some((href, start)) = anchor.take() {
        push_link(&mut out, href, start);
    }
    out
}

/// Appends a text node: references decoded and, outside `<pre>`, runs of whitespace collapsed
/// to one space as a browser renders them (none at the start of a line).
fn push_text(raw: &str, preformatted: bool, out: &mut String) {
    if preformatted {
        decode_into(raw, out);
        return;
    }
    if raw.is_empty() {
        return;
    }
    let decoded: std::borrow::Cow<'_, str> = if raw.contains('&') || !raw.is_ascii() {
        let mut decoded = String::with_capacity(raw.len());
        decode_into(raw, &mut decoded);
        std::borrow::Cow::Owned(decoded)
    } else {
        std::borrow::Cow::Borrowed(raw)
    };
    let space = |out: &mut String| {
        if !(out.is_empty() || out.ends_with([' ', '\n', '\t'])) {
            out.push(' ');
        }
    };
    let is_space = |c: char| c.is_ascii_whitespace();
    if decoded.starts_with(is_space) {
        space(out);
    }
    let mut words = decoded.split_ascii_whitespace();
    if let Some(first) = words.next() {
        out.push_str(first);
        for word in words {
            out.push(' ');
            out.push_str(word);
        }
        if decoded.ends_with(is_space) {
            space(out);
        }
    }
}

/// Starts a new line of visible text (block elements); consecutive blocks make one break.
fn newline(out: &mut String) {
    while out.ends_with([' ', '\t']) {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// Separates table cells.
fn cell(out: &mut String) {
    while out.ends_with(' ') {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with(['\n', '\t']) {
        out.push('\t');
    }
}

fn push_link(out: &mut HtmlContent, href: String, start: usize) {
    let raw = &out.text[start.min(out.text.len())..];
    let text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    out.links.push(Link { href, text });
}

/// The attributes whose values are in scope.
const WANTED: &[&str] = &["href", "src", "action"];

/// Parses the attributes of a tag whose name ends at `from`; returns the in-scope ones (when
/// `want` is set), values decoded, and the offset just past the closing `>`.
fn attributes(html: &str, from: usize, want: bool) -> (Vec<(&'static str, String)>, usize) {
    let bytes = html.as_bytes();
    let mut attrs = Vec::new();
    let mut i = from;
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return (attrs, bytes.len());
        }
        if bytes[i] == b'>' {
            return (attrs, i + 1);
        }
        let name_start = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        if i == name_start {
            // A stray `=` or similar: step over it.
            i += 1;
            continue;
        }
        let name = &bytes[name_start..i];
        let wanted = if want {
            WANTED
                .iter()
                .find(|w| w.as_bytes().eq_ignore_ascii_case(name))
                .copied()
        } else {
            None
        };
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let (value_start, value_end, next) = match bytes.get(i) {
                Some(&q @ (b'"' | b'\'')) => {
                    let end = html[i + 1..]
                        .find(q as char)
                        .map_or(bytes.len(), |e| i + 1 + e);
                    (i + 1, end, (end + 1).min(bytes.len()))
                }
                _ => {
                    let mut e = i;
                    while e < bytes.len() && !bytes[e].is_ascii_whitespace() && bytes[e] != b'>' {
                        e += 1;
                    }
                    (i, e, e)
                }
            };
            if let Some(wanted) = wanted {
                let mut value = String::new();
                decode_into(&html[value_start..value_end], &mut value);
                attrs.push((wanted, value.trim().to_string()));
            }
            i = next;
        } else if let Some(wanted) = wanted {
            attrs.push((wanted, String::new()));
        }
    }
}

/// Skips the content of a raw-text element (`<style>`, `<script>`, ...) up to its end tag;
/// returns the offset after it, or the end of the input.
fn skip_raw_text(html: &str, from: usize, name: &str) -> usize {
    let mut pos = from;
    while let Some(i) = html[pos..].find("</") {
        let start = pos + i + 2;
        let candidate = html.as_bytes().get(start..start + name.len());
        if candidate.is_some_and(|c| c.eq_ignore_ascii_case(name.as_bytes())) {
            return html[start..]
                .find('>')
                .map_or(html.len(), |e| start + e + 1);
        }
        pos = start;
    }
    html.len()
}

/// Appends `text` with character references decoded, `&nbsp;` as a space, and zero-width
/// characters (used to break up indicators) dropped.
pub(crate) fn decode_into(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        push_visible(&rest[..amp], out);
        let after = &rest[amp + 1..];
        match reference(after) {
            Some((c, used)) => {
                push_visible_char(c, out);
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    push_visible(rest, out);
}

fn push_visible(text: &str, out: &mut String) {
    // Every character dropped or replaced here is outside ASCII.
    if !text.is_ascii() && (text.chars().any(is_invisible) || text.contains('\u{a0}')) {
        text.chars().for_each(|c| push_visible_char(c, out));
    } else {
        out.push_str(text);
    }
}

fn push_visible_char(c: char, out: &mut String) {
    if c == '\u{a0}' {
        out.push(' ');
    } else if !is_invisible(c) {
        out.push(c);
    }
}

fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}' | '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}'
    )
}

/// Decodes the character reference at the start of `after` (the text after `&`); returns the
/// character and how many bytes it used (including a `;`).
fn reference(after: &str) -> Option<(char, usize)> {
    if let Some(num) = after.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16, 2),
            None => (num, 10, 1),
        };
        let len = digits
            .bytes()
            .take(8)
            .take_while(|b| (*b as char).is_digit(radix))
            .count();
        if len == 0 {
            return None;
        }
        let value = u32::from_str_radix(&digits[..len], radix).ok()?;
        let c = char::from_u32(value).unwrap_or('\u{fffd}');
        let semi = usize::from(digits[len..].starts_with(';'));
        return Some((c, skip + len + semi));
    }
    let len = after
        .bytes()
        .take(12)
        .take_while(u8::is_ascii_alphanumeric)
        .count();
    let name = &after[..len];
    let with_semi = after[len..].starts_with(';');
    let c = named(name)?;
    if !with_semi && !matches!(name, "amp" | "lt" | "gt" | "quot" | "nbsp") {
        return None;
    }
    Some((c, len + usize::from(with_semi)))
}

/// The named references mail HTML uses.
fn named(name: &str) -> Option<char> {
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ensp" | "emsp" | "thinsp" => ' ',
        "zwnj" | "zwj" | "shy" | "lrm" | "rlm" => '\u{200b}',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "bull" => '•',
        "middot" => '·',
        "laquo" => '«',
        "raquo" => '»',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "sbquo" => '‚',
        "bdquo" => '„',
        "lsaquo" => '‹',
        "rsaquo" => '›',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "sect" => '§',
        "para" => '¶',
        "deg" => '°',
        "plusmn" => '±',
        "times" => '×',
        "divide" => '÷',
        "iexcl" => '¡',
        "iquest" => '¿',
        "dagger" => '†',
        "rarr" => '→',
        "larr" => '←',
        "uarr" => '↑',
        "darr" => '↓',
        "check" => '✓',
        _ => return latin1(name),
    };
    Some(c)
}

/// HTML 4 names of accented Latin-1 letters.
fn latin1(name: &str) -> Option<char> {
    const LETTERS: &[(&str, char)] = &[
        ("Agrave", 'À'),
        ("Aacute", 'Á'),
        ("Acirc", 'Â'),
        ("Atilde", 'Ã'),
        ("Auml", 'Ä'),
        ("Aring", 'Å'),
        ("AElig", 'Æ'),
        ("Ccedil", 'Ç'),
        ("Egrave", 'È'),
        ("Eacute", 'É'),
        ("Ecirc", 'Ê'),
        ("Euml", 'Ë'),
        ("Igrave", 'Ì'),
        ("Iacute", 'Í'),
        ("Icirc", 'Î'),
        ("Iuml", 'Ï'),
        ("ETH", 'Ð'),
        ("Ntilde", 'Ñ'),
        ("Ograve", 'Ò'),
        ("Oacute", 'Ó'),
        ("Ocirc", 'Ô'),
        ("Otilde", 'Õ'),
        ("Ouml", 'Ö'),
        ("Oslash", 'Ø'),
        ("Ugrave", 'Ù'),
        ("Uacute", 'Ú'),
        ("Ucirc", 'Û'),
        ("Uuml", 'Ü'),
        ("Yacute", 'Ý'),
        ("THORN", 'Þ'),
        ("szlig", 'ß'),
        ("agrave", 'à'),
        ("aacute", 'á'),
        ("acirc", 'â'),
        ("atilde", 'ã'),
        ("auml", 'ä'),
        ("aring", 'å'),
        ("aelig", 'æ'),
        ("ccedil", 'ç'),
        ("egrave", 'è'),
        ("eacute", 'é'),
        ("ecirc", 'ê'),
        ("euml", 'ë'),
        ("igrave", 'ì'),
        ("iacute", 'í'),
        ("icirc", 'î'),
        ("iuml", 'ï'),
        ("eth", 'ð'),
        ("ntilde", 'ñ'),
        ("ograve", 'ò'),
        ("oacute", 'ó'),
        ("ocirc", 'ô'),
        ("otilde", 'õ'),
        ("ouml", 'ö'),
        ("oslash", 'ø'),
        ("ugrave", 'ù'),
        ("uacute", 'ú'),
        ("ucirc", 'û'),
        ("uuml", 'ü'),
        ("yacute", 'ý'),
        ("thorn", 'þ'),
        ("yuml", 'ÿ'),
    ];
    LETTERS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_text_skips_markup() {
        let html = r#"<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0//EN" "http://www.w3.org/TR/xhtml1/DTD/x.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Bulletin a.example.com</title>
<style>p { color: red } /* b.example.com */</style><link href="https://css.example.com/x.css"></head>
<body><!--[if mso]><xml>c.example.com</xml><![endif]--><p>Visible <b>exa</b>mple.org &amp; more&nbsp;text</p>
<img src="cid:image001.png@01DB4A2C.9F3E8D10" alt="d.example.com"><script>var u="e.example.com";</script>
<a href="https://t.example.net/?a=1&amp;b=2">Click &lt;here&gt;</a></body></html>"#;
        let c = content(html);
        assert!(
            c.text.contains("Visible example.org & more text"),
            "{:?}",
            c.text
        );
        assert!(c.text.contains("Click <here>"));
        for hidden in [
            "a.example.com",
            "b.example.com",
            "c.example.com",
            "d.example.com",
            "e.example.com",
            "w3.org",
        ] {
            assert!(!c.text.contains(hidden), "{hidden} in {:?}", c.text);
        }
        let values: Vec<&str> = c.attributes.iter().map(|a| a.value.as_str()).collect();
        assert_eq!(
            values,
            [
                "cid:image001.png@01DB4A2C.9F3E8D10",
                "https://t.example.net/?a=1&b=2"
            ]
        );
        assert_eq!(c.links.len(), 1);
        assert_eq!(c.links[0].text, "Click <here>");
        assert_eq!(c.links[0].href, "https://t.example.net/?a=1&b=2");
    }

    #[test]
    fn blocks_make_single_lines() {
        let c = content(
            "<table>\n<tr><td>TLP:RED</td><td>named</td></tr>\n<tr><td>TLP:AMBER</td><td>limited</td></tr>\n</table><p>a\n   b</p><pre>x\n  y</pre>",
        );
        assert_eq!(c.text, "TLP:RED\tnamed\nTLP:AMBER\tlimited\na b\nx\n  y\n");
    }

    #[test]
    fn references() {
        let cases = [
            ("a&#8217;s", "a’s"),
            ("&#x41;&#65;", "AA"),
            ("x &amp y", "x & y"),
            ("&unknown; &", "&unknown; &"),
            ("exam&#8203;ple.com", "example.com"),
            ("caf&eacute;", "café"),
        ];
        for (input, expected) in cases {
            let mut out = String::new();
            decode_into(input, &mut out);
            assert_eq!(out, expected, "{input}");
        }
    }

    #[test]
    fn broken_html_terminates() {
        for html in [
            "<",
            "<a href=\"x",
            "<style>never closed",
            "<!-- open",
            "<<<>>>",
            "<a href=x>t",
        ] {
            let _ = content(html);
        }
    }
}
