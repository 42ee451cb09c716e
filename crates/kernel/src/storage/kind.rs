//! File types by content (magic bytes), never by name or the client's content type.
//!
//! Documents Keel reads: PDF, PNG, JPEG, WebP and GIF. A name or content type the client
//! declares is checked against what the bytes are: a PNG named `invoice.pdf` is a PNG, and
//! where the declared type must match (uploads) it is refused. Anything else — HTML, scripts,
//! archives, office files — is not a document Keel stores.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A supported file type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Pdf,
    Png,
    Jpeg,
    Webp,
    Gif,
}

impl FileKind {
    pub const ALL: [FileKind; 5] = [
        FileKind::Pdf,
        FileKind::Png,
        FileKind::Jpeg,
        FileKind::Webp,
        FileKind::Gif,
    ];

    pub fn mime(self) -> &'static str {
        match self {
            FileKind::Pdf => "application/pdf",
            FileKind::Png => "image/png",
            FileKind::Jpeg => "image/jpeg",
            FileKind::Webp => "image/webp",
            FileKind::Gif => "image/gif",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Pdf => "pdf",
            FileKind::Png => "png",
            FileKind::Jpeg => "jpeg",
            FileKind::Webp => "webp",
            FileKind::Gif => "gif",
        }
    }

    pub fn is_image(self) -> bool {
        self != FileKind::Pdf
    }

    /// What the bytes are, if a supported type.
    pub fn detect(bytes: &[u8]) -> Option<FileKind> {
        let found = infer::get(bytes)?;
        Self::from_mime(found.mime_type())
    }

    /// A declared MIME type (parameters ignored); `None` for anything unsupported.
    pub fn from_mime(mime: &str) -> Option<FileKind> {
        let mime = mime
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/pdf" => Some(FileKind::Pdf),
            "image/png" => Some(FileKind::Png),
            "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(FileKind::Jpeg),
            "image/webp" => Some(FileKind::Webp),
            "image/gif" => Some(FileKind::Gif),
            _ => None,
        }
    }

    /// The type a file name's extension claims; `None` for no or another extension.
    pub fn from_file_name(name: &str) -> Option<FileKind> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "pdf" => Some(FileKind::Pdf),
            "png" => Some(FileKind::Png),
            "jpg" | "jpeg" => Some(FileKind::Jpeg),
            "webp" => Some(FileKind::Webp),
            "gif" => Some(FileKind::Gif),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<FileKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Why a file's type is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    #[error("the content is not a supported document type (PDF, PNG, JPEG, WebP or GIF)")]
    Unsupported,
    #[error("the content is {actual}, but the file was declared as {declared}")]
    Mismatch {
        actual: &'static str,
        declared: &'static str,
    },
    #[error("the file name's extension is not one of .pdf, .png, .jpg, .jpeg, .webp, .gif")]
    UnsupportedName,
}

/// Checks content against what the client declared (a file name and/or a content type;
/// `application/octet-stream` and no type at all declare nothing). Returns the detected type.
pub fn check(
    bytes: &[u8],
    file_name: Option<&str>,
    content_type: Option<&str>,
) -> Result<FileKind, KindError> {
    let actual = FileKind::detect(bytes).ok_or(KindError::Unsupported)?;
    if let Some(name) = file_name.filter(|n| n.contains('.')) {
        let declared = FileKind::from_file_name(name).ok_or(KindError::UnsupportedName)?;
        if declared != actual {
            return Err(KindError::Mismatch {
                actual: actual.label(),
                declared: declared.label(),
            });
        }
    }
    if let Some(ct) = content_type {
        let base = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !base.is_empty() && base != "application/octet-stream" {
            match FileKind::from_mime(&base) {
                Some(declared) if declared != actual => {
                    return Err(KindError::Mismatch {
                        actual: actual.label(),
                        declared: declared.label(),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(KindError::Mismatch {
                        actual: actual.label(),
                        declared: "an unsupported content type",
                    });
                }
            }
        }
    }
    Ok(actual)
}

impl FileKind {
    fn label(self) -> &'static str {
        match self {
            FileKind::Pdf => "PDF",
            FileKind::Png => "PNG",
            FileKind::Jpeg => "JPEG",
            FileKind::Webp => "WebP",
            FileKind::Gif => "GIF",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";
    const PDF: &[u8] = b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n";

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(FileKind::detect(PNG), Some(FileKind::Png));
        assert_eq!(FileKind::detect(PDF), Some(FileKind::Pdf));
        assert_eq!(FileKind::detect(b"GIF89a\x01\0\x01\0"), Some(FileKind::Gif));
        assert_eq!(
            FileKind::detect(b"\xff\xd8\xff\xe0\0\x10JFIF\0"),
            Some(FileKind::Jpeg)
        );
        assert_eq!(
            FileKind::detect(b"RIFF\x24\0\0\0WEBPVP8 "),
            Some(FileKind::Webp)
        );
        assert_eq!(FileKind::detect(b"<!DOCTYPE html><html></html>"), None);
    }

    #[test]
    fn a_png_named_pdf_is_a_png_and_refused_when_declared_otherwise() {
        assert_eq!(
            check(PNG, Some("invoice.pdf"), None),
            Err(KindError::Mismatch {
                actual: "PNG",
                declared: "PDF"
            })
        );
        assert_eq!(
            check(PNG, None, Some("application/pdf")),
            Err(KindError::Mismatch {
                actual: "PNG",
                declared: "PDF"
            })
        );
        assert_eq!(
            check(PNG, Some("scan.PNG"), Some("image/png")),
            Ok(FileKind::Png)
        );
        assert_eq!(
            check(PNG, Some("scan"), Some("application/octet-stream")),
            Ok(FileKind::Png)
        );
    }

    #[test]
    fn html_named_pdf_is_refused() {
        assert_eq!(
            check(
                b"<html><body>pay here</body></html>",
                Some("invoice.pdf"),
                None
            ),
            Err(KindError::Unsupported)
        );
    }
}
