//! The little XML S3 speaks back: the text of named elements, and escaping for the one
//! body we send (CompleteMultipartUpload). S3's answers are flat and machine-written, so
//! finding `<Tag>…</Tag>` is enough; no entity but the five predefined ones appears.

/// The text of the first `<tag>…</tag>`, unescaped.
pub fn first(xml: &str, tag: &str) -> Option<String> {
    blocks(xml, tag).into_iter().next().map(unescape)
}

/// The raw inner text of every `<tag>…</tag>` (for nested blocks such as `<Contents>`).
pub fn blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listing() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated>\
            <Contents><Key>a&amp;b</Key><Size>3</Size></Contents>\
            <Contents><Key>c</Key><Size>10</Size></Contents>\
            <NextContinuationToken>tok</NextContinuationToken></ListBucketResult>";
        let items = blocks(xml, "Contents");
        assert_eq!(items.len(), 2);
        assert_eq!(first(items[0], "Key").as_deref(), Some("a&b"));
        assert_eq!(first(items[1], "Size").as_deref(), Some("10"));
        assert_eq!(first(xml, "NextContinuationToken").as_deref(), Some("tok"));
        assert_eq!(first(xml, "Missing"), None);
        assert_eq!(escape("\"e\"&"), "&quot;e&quot;&amp;");
    }

    #[test]
    fn an_unclosed_tag_is_not_read() {
        assert_eq!(blocks("<Key>a</Key><Key>b", "Key"), ["a"]);
    }
}
