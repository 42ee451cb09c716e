//! Extraction engines behind one trait.
//!
//! An engine reads a document and returns either recognised **text** (lines with word
//! confidences, which the field parser turns into fields) or **fields** directly (an engine
//! that understands the document itself, such as a vision language model). Configuration
//! (`extraction.engines`) names the order; the first engine that reads the document wins and
//! the result records which one it was.
//!
//! Built in:
//! - `pdf_text` — a PDF's own text layer through `pdftotext -layout` (exact; a scanned PDF has
//!   none, and the next engine is tried);
//! - `tesseract` — local OCR through the `tesseract` CLI (`tsv` output gives each word's
//!   confidence); PDF pages are rasterised first with `pdftoppm -r <dpi>`.
//!
//! - `vision_llm` — the configured LLM reads the page images and returns the fields itself
//!   ([`super::vision`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::Command;

use super::fields::ExtractedFields;
use crate::storage::FileKind;

/// What an engine is given.
#[derive(Debug)]
pub struct EngineInput<'a> {
    pub bytes: &'a [u8],
    pub kind: FileKind,
    pub document_type: &'a str,
    /// The most pages to read; a longer document is refused.
    pub max_pages: u32,
    /// The organization the document belongs to (engines that call a per-organization
    /// service, such as the LLM with its cache, need it).
    pub scope: Option<&'a crate::tenancy::TenantScope>,
}

/// One word's place in its line's text and the engine's confidence in it (0–1).
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub start: usize,
    pub end: usize,
    pub confidence: f64,
}

/// One recognised line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub page: u32,
    pub text: String,
    pub words: Vec<Word>,
}

impl Line {
    /// A line whose every word is certain (a PDF text layer).
    pub fn exact(page: u32, text: &str) -> Self {
        let mut words = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    words.push(Word {
                        start: s,
                        end: i,
                        confidence: 1.0,
                    });
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            words.push(Word {
                start: s,
                end: text.len(),
                confidence: 1.0,
            });
        }
        Self {
            page,
            text: text.to_string(),
            words,
        }
    }

    /// The mean confidence of the words overlapping `start..end` of the text (1.0 if none).
    pub fn confidence_of(&self, start: usize, end: usize) -> f64 {
        let confs: Vec<f64> = self
            .words
            .iter()
            .filter(|w| w.start < end && w.end > start)
            .map(|w| w.confidence)
            .collect();
        if confs.is_empty() {
            1.0
        } else {
            confs.iter().sum::<f64>() / confs.len() as f64
        }
    }
}

/// Recognised text of a whole document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Text {
    pub pages: u32,
    pub lines: Vec<Line>,
}

impl Text {
    pub fn is_blank(&self) -> bool {
        self.lines
            .iter()
            .map(|l| l.text.chars().filter(|c| c.is_alphanumeric()).count())
            .sum::<usize>()
            < 8
    }
}

/// What an engine produced.
#[derive(Debug, Clone)]
pub enum EngineOutput {
    /// Text with word confidences; the field parser finds the fields.
    Text(Text),
    /// Fields found by the engine itself, with its own confidences.
    Fields { pages: u32, fields: ExtractedFields },
}

/// Why an engine did not read a document.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// This engine does not read this input (an image for `pdf_text`, a PDF without a text
    /// layer): the next engine is tried.
    #[error("{0}")]
    NotApplicable(String),
    /// The document breaks a limit (too many pages): no engine is tried.
    #[error("{0}")]
    Refused(String),
    /// The engine is missing or failed (not installed, timed out, crashed).
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// An extraction engine.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// The name configuration and results use, e.g. `tesseract`.
    fn name(&self) -> &'static str;
    /// Whether the engine can run here (its tools are installed, its service configured);
    /// `Err` says what is missing. Shown by `/health/ready`.
    fn available(&self) -> Result<(), String> {
        Ok(())
    }
    async fn extract(&self, input: &EngineInput<'_>) -> Result<EngineOutput, EngineError>;
}

/// Paths, languages and limits of the command-line tools.
#[derive(Debug, Clone)]
pub struct Tools {
    pub tesseract: PathBuf,
    pub pdftotext: PathBuf,
    pub pdftoppm: PathBuf,
    pub pdfinfo: PathBuf,
    /// Tesseract languages, e.g. `eng+ara`.
    pub languages: String,
    pub dpi: u32,
    /// Longest one tool call may run.
    pub timeout: Duration,
}

/// Whether a program is an existing file, or found on `PATH`.
pub fn installed(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn require(programs: &[&Path]) -> Result<(), String> {
    let missing: Vec<String> = programs
        .iter()
        .filter(|p| !installed(p))
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not installed: {}", missing.join(", ")))
    }
}

/// Runs a tool with a time limit; the process is killed if the limit passes or the caller
/// goes away (a job's time limit, shutdown).
async fn run(tools: &Tools, program: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<Vec<u8>> {
    let name = program.display().to_string();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Tesseract's OpenMP threads fight each other when the `ocr` queue runs several
        // jobs at once; one thread per process is faster overall (measured: about 0.7 s of
        // CPU for an A4 page at 300 dpi).
        .env("OMP_THREAD_LIMIT", "1")
        .spawn()
        .with_context(|| format!("cannot run `{name}` (is it installed?)"))?;
    let output = tokio::time::timeout(tools.timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("`{name}` did not finish within {:?}", tools.timeout))?
        .with_context(|| format!("`{name}` failed"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        anyhow::bail!("`{name}` exited with {}: {first}", output.status);
    }
    Ok(output.stdout)
}

/// A scratch directory for one extraction, removed when dropped.
fn scratch() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("keel-extract-")
        .tempdir()
        .context("cannot create a scratch directory")
}

/// The page count of a PDF (`pdfinfo`).
pub async fn pdf_pages(tools: &Tools, pdf: &Path) -> Result<u32, EngineError> {
    let out = run(tools, &tools.pdfinfo, &[pdf.as_os_str()])
        .await
        .map_err(|e| EngineError::Refused(format!("the PDF cannot be read: {e:#}")))?;
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| EngineError::Refused("the PDF's page count cannot be read".into()))
}

fn check_pages(pages: u32, max: u32) -> Result<(), EngineError> {
    if pages > max {
        return Err(EngineError::Refused(format!(
            "the document has {pages} pages; the limit is {max}"
        )));
    }
    Ok(())
}

/// A PDF's own text layer.
#[derive(Debug)]
pub struct PdfText {
    pub tools: Tools,
}

#[async_trait::async_trait]
impl Engine for PdfText {
    fn name(&self) -> &'static str {
        "pdf_text"
    }

    fn available(&self) -> Result<(), String> {
        require(&[&self.tools.pdftotext, &self.tools.pdfinfo])
    }

    async fn extract(&self, input: &EngineInput<'_>) -> Result<EngineOutput, EngineError> {
        if input.kind != FileKind::Pdf {
            return Err(EngineError::NotApplicable("not a PDF".into()));
        }
        let dir = scratch().map_err(EngineError::Failed)?;
        let pdf = dir.path().join("in.pdf");
        tokio::fs::write(&pdf, input.bytes)
            .await
            .map_err(|e| EngineError::Failed(e.into()))?;
        let pages = pdf_pages(&self.tools, &pdf).await?;
        check_pages(pages, input.max_pages)?;
        let out = run(
            &self.tools,
            &self.tools.pdftotext,
            &[
                "-layout".as_ref(),
                "-enc".as_ref(),
                "UTF-8".as_ref(),
                pdf.as_os_str(),
                "-".as_ref(),
            ],
        )
        .await
        .map_err(EngineError::Failed)?;
        let all = String::from_utf8_lossy(&out);
        let mut lines = Vec::new();
        // Pages are separated by form feeds.
        for (i, page) in all.split('\u{c}').enumerate() {
            let page_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
            for l in page.lines().filter(|l| !l.trim().is_empty()) {
                lines.push(Line::exact(page_no, l.trim_end()));
            }
        }
        let text = Text { pages, lines };
        if text.is_blank() {
            return Err(EngineError::NotApplicable(
                "the PDF has no text layer (a scan)".into(),
            ));
        }
        Ok(EngineOutput::Text(text))
    }
}

/// Local OCR with Tesseract.
#[derive(Debug)]
pub struct Tesseract {
    pub tools: Tools,
}

impl Tesseract {
    async fn ocr_image(&self, image: &Path, page: u32) -> Result<Vec<Line>, EngineError> {
        // --psm 4: a single column of text of variable sizes, which keeps an invoice's label
        // and value (and a line item's cells) on one line.
        let out = run(
            &self.tools,
            &self.tools.tesseract,
            &[
                image.as_os_str(),
                "stdout".as_ref(),
                "-l".as_ref(),
                self.tools.languages.as_ref(),
                "--psm".as_ref(),
                "4".as_ref(),
                "tsv".as_ref(),
            ],
        )
        .await
        .map_err(EngineError::Failed)?;
        Ok(parse_tsv(&String::from_utf8_lossy(&out), page))
    }
}

#[async_trait::async_trait]
impl Engine for Tesseract {
    fn name(&self) -> &'static str {
        "tesseract"
    }

    fn available(&self) -> Result<(), String> {
        require(&[
            &self.tools.tesseract,
            &self.tools.pdftoppm,
            &self.tools.pdfinfo,
        ])
    }

    async fn extract(&self, input: &EngineInput<'_>) -> Result<EngineOutput, EngineError> {
        let pages = page_images(&self.tools, input, true).await?;
        let mut lines = Vec::new();
        for (i, image) in pages.images.iter().enumerate() {
            let page = u32::try_from(i + 1).unwrap_or(u32::MAX);
            lines.extend(self.ocr_image(image, page).await?);
        }
        Ok(EngineOutput::Text(Text {
            pages: pages.count,
            lines,
        }))
    }
}

/// A document as page images on disk (kept while this lives).
pub struct PageImages {
    _dir: tempfile::TempDir,
    pub count: u32,
    /// One file per page, in order; the input itself when it is an image.
    pub images: Vec<PathBuf>,
}

/// The pages of a document as images: an image as it is; a PDF rasterised with
/// `pdftoppm -r <dpi>` (grey when `gray`), refused beyond `input.max_pages`.
pub async fn page_images(
    tools: &Tools,
    input: &EngineInput<'_>,
    gray: bool,
) -> Result<PageImages, EngineError> {
    let dir = scratch().map_err(EngineError::Failed)?;
    if input.kind != FileKind::Pdf {
        let image = dir.path().join(format!("in.{}", input.kind.as_str()));
        tokio::fs::write(&image, input.bytes)
            .await
            .map_err(|e| EngineError::Failed(e.into()))?;
        return Ok(PageImages {
            _dir: dir,
            count: 1,
            images: vec![image],
        });
    }
    let pdf = dir.path().join("in.pdf");
    tokio::fs::write(&pdf, input.bytes)
        .await
        .map_err(|e| EngineError::Failed(e.into()))?;
    let count = pdf_pages(tools, &pdf).await?;
    check_pages(count, input.max_pages)?;
    let prefix = dir.path().join("page");
    let dpi = tools.dpi.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec!["-r".as_ref(), dpi.as_ref()];
    if gray {
        args.push("-gray".as_ref());
    }
    args.extend(["-png".as_ref(), pdf.as_os_str(), prefix.as_os_str()]);
    run(tools, &tools.pdftoppm, &args)
        .await
        .map_err(EngineError::Failed)?;
    // pdftoppm names pages page-1.png … (zero-padded to the page count's width).
    let mut images: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .map_err(|e| EngineError::Failed(e.into()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("page-") && n.ends_with(".png"))
        })
        .collect();
    images.sort();
    Ok(PageImages {
        _dir: dir,
        count,
        images,
    })
}

/// Tesseract's TSV: one row per word (level 5) with its block, paragraph and line numbers and
/// a confidence 0–100. Words of one line are joined with single spaces.
pub fn parse_tsv(tsv: &str, page: u32) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    let mut current: Option<(u32, u32, u32)> = None;
    for row in tsv.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        if cols.len() < 12 || cols[0] != "5" {
            continue;
        }
        let text = cols[11].trim();
        if text.is_empty() {
            continue;
        }
        let key = (
            cols[2].parse().unwrap_or(0),
            cols[3].parse().unwrap_or(0),
            cols[4].parse().unwrap_or(0),
        );
        let conf = cols[10].parse::<f64>().unwrap_or(0.0).clamp(0.0, 100.0) / 100.0;
        if current != Some(key) || lines.is_empty() {
            lines.push(Line {
                page,
                text: String::new(),
                words: Vec::new(),
            });
            current = Some(key);
        }
        if let Some(line) = lines.last_mut() {
            if !line.text.is_empty() {
                line.text.push(' ');
            }
            let start = line.text.len();
            line.text.push_str(text);
            line.words.push(Word {
                start,
                end: line.text.len(),
                confidence: conf,
            });
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_words_become_lines_with_confidences() {
        let tsv = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n\
                   1\t1\t0\t0\t0\t0\t0\t0\t10\t10\t-1\t\n\
                   5\t1\t1\t1\t1\t1\t0\t0\t1\t1\t96.5\tInvoice\n\
                   5\t1\t1\t1\t1\t2\t0\t0\t1\t1\t60\tNo:\n\
                   5\t1\t1\t1\t2\t1\t0\t0\t1\t1\t90\tTotal\n";
        let lines = parse_tsv(tsv, 1);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text, "Invoice No:");
        assert!((lines[0].confidence_of(8, 11) - 0.6).abs() < 1e-9);
        assert_eq!(lines[1].text, "Total");
    }

    #[test]
    fn exact_lines_split_words_on_whitespace() {
        let l = Line::exact(1, "Total    735.00");
        assert_eq!(l.words.len(), 2);
        assert_eq!(&l.text[l.words[1].start..l.words[1].end], "735.00");
    }
}
