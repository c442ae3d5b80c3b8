//! The Java properties file format (`java.util.Properties.load`), which the
//! MultiLangDaemon's configuration file uses.
//!
//! Rules, as Java applies them: lines end at `\n`, `\r` or `\r\n`; leading blanks
//! (space, tab, form feed) are skipped; a line whose first non-blank character is `#`
//! or `!` is a comment; a line ending in an odd number of backslashes continues on the
//! next line, whose leading blanks are dropped. The key ends at the first unescaped
//! `=`, `:` or blank; blanks around one `=` or `:` separator are skipped; the rest of
//! the line is the value. Escapes `\t \n \r \f \uXXXX` are decoded, and a backslash
//! before any other character stands for that character. Later keys win.

/// A malformed `\uXXXX` escape (the only thing Java refuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("properties line {line}: malformed \\uXXXX escape")]
pub struct PropertiesError {
    /// The 1-based line where the logical line holding the escape starts.
    pub line: usize,
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{c}')
}

/// Parses a properties text into `(key, value)` pairs in file order (duplicates kept:
/// the caller decides; Java keeps the last).
///
/// ```
/// let pairs = kcl_multilang::properties::parse("# comment\nstreamName = orders\nregionName: eu-west-1\n").unwrap();
/// assert_eq!(pairs, vec![
///     ("streamName".to_string(), "orders".to_string()),
///     ("regionName".to_string(), "eu-west-1".to_string()),
/// ]);
/// ```
pub fn parse(text: &str) -> Result<Vec<(String, String)>, PropertiesError> {
    let mut pairs = Vec::new();
    for (line_no, logical) in logical_lines(text) {
        let (key, value) = split_key_value(&logical);
        let key = unescape(key).ok_or(PropertiesError { line: line_no })?;
        let value = unescape(value).ok_or(PropertiesError { line: line_no })?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Natural lines joined into logical lines, comments and blank lines dropped, escapes
/// still in place (only the continuation backslashes are removed).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let natural: Vec<&str> = split_natural_lines(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < natural.len() {
        let start = i;
        let first = natural[i].trim_start_matches(is_blank);
        i += 1;
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            // A comment never continues, even when it ends in a backslash.
            continue;
        }
        let mut logical = String::new();
        let mut piece = first;
        loop {
            if ends_in_odd_backslashes(piece) {
                logical.push_str(&piece[..piece.len() - 1]);
                if i >= natural.len() {
                    break;
                }
                piece = natural[i].trim_start_matches(is_blank);
                i += 1;
            } else {
                logical.push_str(piece);
                break;
            }
        }
        out.push((start + 1, logical));
    }
    out
}

fn split_natural_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

fn ends_in_odd_backslashes(s: &str) -> bool {
    s.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// Splits a logical line (escapes in place) into its raw key and raw value.
fn split_key_value(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut key_end = line.len();
    let mut separator = None;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' => {
                key_end = i;
                separator = Some(c);
                break;
            }
            c if is_blank(c) => {
                key_end = i;
                break;
            }
            _ => {}
        }
    }
    let key = &line[..key_end];
    let mut rest = &line[key_end..];
    if separator.is_some() {
        rest = &rest[1..];
    } else {
        // Blanks end the key; one `=` or `:` may still follow them.
        rest = rest.trim_start_matches(is_blank);
        if rest.starts_with('=') || rest.starts_with(':') {
            rest = &rest[1..];
        }
    }
    (key, rest.trim_start_matches(is_blank))
}

/// Decodes escapes; `None` for a malformed `\uXXXX`.
fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                if hex.len() != 4 {
                    return None;
                }
                let unit = u16::from_str_radix(&hex, 16).ok()?;
                push_utf16_unit(&mut out, unit);
            }
            Some(other) => out.push(other),
            // A lone trailing backslash (at the end of the file) stands for nothing.
            None => {}
        }
    }
    Some(fix_surrogates(out))
}

// Java strings are UTF-16: `\uD83D\uDE00` is one character. Surrogates are kept as
// private markers until the whole string is decoded, then paired.
const SURROGATE_MARK: char = '\u{10FFFF}';

fn push_utf16_unit(out: &mut String, unit: u16) {
    match char::from_u32(unit as u32) {
        Some(c) => out.push(c),
        None => {
            out.push(SURROGATE_MARK);
            out.push_str(&format!("{unit:04x}"));
        }
    }
}

fn fix_surrogates(s: String) -> String {
    if !s.contains(SURROGATE_MARK) {
        return s;
    }
    let mut units: Vec<u16> = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == SURROGATE_MARK {
            let hex: String = chars.by_ref().take(4).collect();
            units.push(u16::from_str_radix(&hex, 16).unwrap_or(0xFFFD));
        } else {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> (String, String) {
        let pairs = parse(text).unwrap();
        assert_eq!(pairs.len(), 1, "{text:?} gave {pairs:?}");
        pairs.into_iter().next().unwrap()
    }

    #[test]
    fn separators_blanks_and_escapes_as_java_reads_them() {
        let table: &[(&str, &str, &str)] = &[
            ("a=b", "a", "b"),
            ("a = b", "a", "b"),
            ("a: b", "a", "b"),
            ("a b", "a", "b"),
            ("a\t\t b", "a", "b"),
            ("  a = b  ", "a", "b  "),
            ("a =  = b", "a", "= b"),
            ("a : : b", "a", ": b"),
            ("a", "a", ""),
            ("a=", "a", ""),
            ("a  ", "a", ""),
            ("a\\=b = c", "a=b", "c"),
            ("a\\:b: c", "a:b", "c"),
            ("a\\ b c", "a b", "c"),
            ("k = x\\ty\\nz\\rw\\f", "k", "x\ty\nz\rw\u{c}"),
            ("k = \\u0041\\u00e9", "k", "Aé"),
            ("k = \\uD83D\\uDE00", "k", "😀"),
            ("k = a\\qb", "k", "aqb"),
            ("k = c:\\\\path", "k", "c:\\path"),
            ("k = #not a comment", "k", "#not a comment"),
            ("\u{c}k=v", "k", "v"),
            ("=v", "", "v"),
            (
                "executableName = python3 app.py",
                "executableName",
                "python3 app.py",
            ),
        ];
        for (text, key, value) in table {
            assert_eq!(one(text), (key.to_string(), value.to_string()), "{text:?}");
        }
    }

    #[test]
    fn comments_blank_lines_and_line_endings() {
        let text = "# comment\n! also\n\n   \n  # indented comment\r\na=1\rb=2\r\nc=3";
        let pairs = parse(text).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("c".into(), "3".into())
            ]
        );
    }

    #[test]
    fn continuation_lines() {
        let table: &[(&str, &str, &str)] = &[
            ("k = a\\\n    b", "k", "ab"),
            ("k = a, \\\n  b, \\\n  c", "k", "a, b, c"),
            ("k = a\\\\\nb = c", "k", "a\\"),
            ("k = a\\", "k", "a"),
            ("k\\\n  ey = v", "key", "v"),
            ("k = a\\\r\n  b", "k", "ab"),
        ];
        for (text, key, value) in table {
            let pairs = parse(text).unwrap();
            assert_eq!(pairs[0], (key.to_string(), value.to_string()), "{text:?}");
        }
        // An even number of trailing backslashes is an escaped backslash, not a
        // continuation: the next line is its own property.
        assert_eq!(parse("k = a\\\\\nb = c").unwrap().len(), 2);
        // A comment ending in a backslash does not swallow the next line.
        assert_eq!(
            parse("# note \\\nk = v").unwrap(),
            vec![("k".into(), "v".into())]
        );
    }

    #[test]
    fn malformed_unicode_escape_names_the_line() {
        assert_eq!(parse("a=1\nk = \\u00zz"), Err(PropertiesError { line: 2 }));
        assert_eq!(parse("k = \\u12"), Err(PropertiesError { line: 1 }));
    }
}
