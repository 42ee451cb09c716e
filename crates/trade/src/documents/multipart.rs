//! A small `multipart/form-data` reader (RFC 7578) for uploads: the whole body is in memory
//! already (bounded by `http.body_limit_bytes`), so parts are slices of it.

use axum::body::Bytes;

/// One part of a form.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The form field's name.
    pub name: String,
    /// The file name a client sent with a file part.
    pub file_name: Option<String>,
    /// The part's declared `Content-Type`.
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// At most this many parts are read.
pub const MAX_PARTS: usize = 16;

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty() && b.len() <= 70)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// `name="value"` parameters of a header value (quotes optional).
fn param(value: &str, key: &str) -> Option<String> {
    value
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// The parts of a body, or why it is not a well-formed form.
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, &'static str> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut at = find(body, delimiter, 0).ok_or("no part boundary in the body")?;
    let mut parts = Vec::new();
    loop {
        at += delimiter.len();
        if body.get(at..at + 2) == Some(b"--") {
            return Ok(parts);
        }
        if body.get(at..at + 2) != Some(b"\r\n") {
            return Err("a part boundary is not followed by a line break");
        }
        at += 2;
        if parts.len() == MAX_PARTS {
            return Err("too many parts");
        }
        let head_end = find(body, b"\r\n\r\n", at).ok_or("a part has no end of headers")?;
        let head =
            std::str::from_utf8(&body[at..head_end]).map_err(|_| "part headers are not UTF-8")?;
        let mut name = None;
        let mut file_name = None;
        let mut content_type = None;
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once(':').ok_or("a part header has no colon")?;
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-disposition") {
                if !v.trim().to_ascii_lowercase().starts_with("form-data") {
                    return Err("a part is not form-data");
                }
                name = param(v, "name");
                file_name = param(v, "filename");
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_string());
            }
        }
        let start = head_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(delimiter);
        let end = find(body, &closing, start).ok_or("a part is not closed by the boundary")?;
        parts.push(Part {
            name: name.ok_or("a part has no name")?,
            file_name,
            content_type,
            body: body.slice(start..end),
        });
        at = end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_files() {
        let body = Bytes::from_static(
            b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\npacking_list\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--X\r\n--XyZ--\r\n",
        );
        let b = boundary("multipart/form-data; boundary=XyZ").expect("boundary");
        let parts = parse(&body, &b).expect("parts");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "type");
        assert_eq!(&parts[0].body[..], b"packing_list");
        assert_eq!(parts[1].file_name.as_deref(), Some("a.png"));
        assert_eq!(parts[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(&parts[1].body[..], b"\x89PNG\r\n--X");
    }

    #[test]
    fn refuses_what_is_not_a_form() {
        assert_eq!(boundary("application/json"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"q\""),
            Some("q".into())
        );
        let b = Bytes::from_static(
            b"--q\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunclosed",
        );
        assert!(parse(&b, "q").is_err());
        assert!(parse(&Bytes::from_static(b"nothing"), "q").is_err());
    }
}
