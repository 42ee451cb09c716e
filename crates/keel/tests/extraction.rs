//! File storage and document extraction over HTTP: uploads checked by content, files served
//! only inside their organization, invoices read by the PDF text layer and by Tesseract (from
//! images and scanned PDFs the test renders itself), validation, review and corrections, and
//! the S3 backend against a local S3-compatible server (moto).
//!
//! Needs `tesseract` (eng), poppler-utils (`pdftoppm`, `pdftotext`, `pdfinfo`) and, for the S3
//! test, `moto_server` (`pip install 'moto[server]'`); `.ci/run` installs them. The S3 test
//! fails, rather than skips, when `moto_server` is missing, so CI cannot pass without it.

use std::time::{Duration, Instant};

use keel_testkit::{Session, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};

// ---- documents the test renders -------------------------------------------------------

/// A one-object-per-page PDF of monospaced text lines (Courier 11 pt on A4), optionally
/// rotated by `degrees` and sprinkled with `specks` of noise.
fn text_pdf(pages: &[Vec<String>], degrees: f64, specks: usize) -> Vec<u8> {
    let mut objects: Vec<Vec<u8>> = Vec::new();
    let page_ids: Vec<usize> = (0..pages.len()).map(|i| 4 + i * 2).collect();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    let kids: Vec<String> = page_ids.iter().map(|id| format!("{id} 0 R")).collect();
    objects.push(
        format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            pages.len()
        )
        .into_bytes(),
    );
    objects.push(b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>".to_vec());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 10_000) as f64 / 10_000.0
    };
    for lines in pages {
        let mut ops = String::new();
        for _ in 0..specks {
            let (x, y, s) = (rand() * 595.0, rand() * 842.0, 0.6 + rand());
            ops.push_str(&format!("{x:.1} {y:.1} {s:.1} {s:.1} re f\n"));
        }
        let (c, s) = (degrees.to_radians().cos(), degrees.to_radians().sin());
        ops.push_str(&format!(
            "q {c:.4} {s:.4} {:.4} {c:.4} 0 0 cm BT /F1 11 Tf 14 TL 60 780 Td\n",
            -s
        ));
        for l in lines {
            let esc = l
                .replace('\\', "\\\\")
                .replace('(', "\\(")
                .replace(')', "\\)");
            ops.push_str(&format!("({esc}) Tj T*\n"));
        }
        ops.push_str("ET Q");
        let content_id = objects.len() + 2;
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>"
            )
            .into_bytes(),
        );
        let mut stream = format!("<< /Length {} >>\nstream\n", ops.len()).into_bytes();
        stream.extend_from_slice(ops.as_bytes());
        stream.extend_from_slice(b"\nendstream");
        objects.push(stream);
    }
    assemble_pdf(&objects)
}

fn assemble_pdf(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn run(cmd: &str, args: &[&str]) {
    let status = std::process::Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (install poppler-utils): {e}"));
    assert!(status.success(), "{cmd} {args:?} failed");
}

/// Renders a PDF's first page to an image with pdftoppm (`png` or `jpeg`).
fn rasterise(pdf: &[u8], dpi: u32, format: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.pdf");
    std::fs::write(&input, pdf).expect("write");
    let out = dir.path().join("page");
    let dpi = dpi.to_string();
    run(
        "pdftoppm",
        &[
            "-r",
            &dpi,
            "-gray",
            &format!("-{format}"),
            "-singlefile",
            input.to_str().expect("path"),
            out.to_str().expect("path"),
        ],
    );
    let ext = if format == "jpeg" { "jpg" } else { format };
    std::fs::read(dir.path().join(format!("page.{ext}"))).expect("rendered page")
}

/// A scanned PDF: the page as a greyscale image, no text layer.
fn scanned_pdf(pdf: &[u8], dpi: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.pdf");
    std::fs::write(&input, pdf).expect("write");
    let out = dir.path().join("page");
    let dpi_s = dpi.to_string();
    run(
        "pdftoppm",
        &[
            "-r",
            &dpi_s,
            "-gray",
            "-singlefile",
            input.to_str().expect("path"),
            out.to_str().expect("path"),
        ],
    );
    let pgm = std::fs::read(dir.path().join("page.pgm")).expect("pgm");
    let (width, height, pixels) = parse_pgm(&pgm);
    let mut image = format!(
        "<< /Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace /DeviceGray /BitsPerComponent 8 /Length {} >>\nstream\n",
        pixels.len()
    )
    .into_bytes();
    image.extend_from_slice(pixels);
    image.extend_from_slice(b"\nendstream");
    let draw = "q 595 0 0 842 0 0 cm /Im1 Do Q";
    let mut content = format!("<< /Length {} >>\nstream\n", draw.len()).into_bytes();
    content.extend_from_slice(draw.as_bytes());
    content.extend_from_slice(b"\nendstream");
    assemble_pdf(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /XObject << /Im1 4 0 R >> >> /Contents 5 0 R >>".to_vec(),
        image,
        content,
    ])
}

fn parse_pgm(pgm: &[u8]) -> (usize, usize, &[u8]) {
    // P5\n<w> <h>\n<max>\n<pixels>
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while pgm[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while !pgm[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&pgm[start..i]).to_string());
    }
    i += 1;
    assert_eq!(fields[0], "P5", "binary greyscale PGM");
    let w: usize = fields[1].parse().expect("width");
    let h: usize = fields[2].parse().expect("height");
    (w, h, &pgm[i..i + w * h])
}

fn invoice_lines(
    number: &str,
    items: &[(&str, &str, &str, &str)],
    totals: (&str, &str, &str),
) -> Vec<String> {
    let mut lines: Vec<String> = vec![
        "ACME Export Trading LLC".into(),
        String::new(),
        format!("Invoice No: {number}"),
        "Invoice Date: 2025-03-14".into(),
        "Due Date: 2025-04-13".into(),
        "Seller: ACME Export Trading LLC".into(),
        "Buyer: Blue Harbor Imports Ltd".into(),
        "Currency: USD".into(),
        String::new(),
        "Description            Qty   Unit Price      Amount".into(),
    ];
    for (d, q, u, a) in items {
        lines.push(format!("{d:<20} {q:>5} {u:>12} {a:>11}"));
    }
    lines.push(String::new());
    lines.push(format!("Subtotal: {}", totals.0));
    lines.push(format!("Tax (5%): {}", totals.1));
    lines.push(format!("Total: {}", totals.2));
    lines
}

const ITEMS: &[(&str, &str, &str, &str)] = &[
    ("Steel bolts M8", "100", "2.50", "250.00"),
    ("Copper wire 2mm", "20", "15.00", "300.00"),
    ("Packing crates", "4", "37.50", "150.00"),
];

fn invoice_pdf(number: &str) -> Vec<u8> {
    text_pdf(
        &[invoice_lines(number, ITEMS, ("700.00", "35.00", "735.00"))],
        0.0,
        0,
    )
}

// ---- HTTP helpers ---------------------------------------------------------------------

async fn upload(
    app: &TestApp,
    who: &Session,
    name: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/files?name={name}")))
        .bearer_auth(&who.access_token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload")
}

async fn stored(app: &TestApp, who: &Session, name: &str, ct: &str, bytes: Vec<u8>) -> String {
    let r = upload(app, who, name, ct, bytes).await;
    assert!(r.status().is_success(), "upload {name}: {}", r.status());
    let body: Value = r.json().await.expect("json");
    body["sha256"].as_str().expect("sha256").to_string()
}

async fn extract(app: &TestApp, who: &Session, sha256: &str) -> Value {
    let r = app
        .post_as(
            "/api/v1/extractions",
            &who.access_token,
            &json!({"file": sha256, "document_type": "invoice"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The route that starts OCR work is under the `ocr` rate-limit policy.
    assert_eq!(r.headers()["ratelimit-limit"], "20");
    let started: Value = r.json().await.expect("json");
    assert_eq!(started["status"], "queued");
    assert!(started["job_id"].is_string());
    let id = started["extraction_id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e: Value = app
            .get_as(&format!("/api/v1/extractions/{id}"), &who.access_token)
            .await
            .json()
            .await
            .expect("json");
        let status = e["status"].as_str().unwrap_or("").to_string();
        if !matches!(status.as_str(), "queued" | "running") {
            return e;
        }
        assert!(Instant::now() < deadline, "extraction did not finish: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn field<'a>(e: &'a Value, name: &str) -> &'a Value {
    &e["result"]["fields"][name]
}

// ---- tests ----------------------------------------------------------------------------

#[tokio::test]
async fn an_invoice_image_is_read_by_tesseract_with_its_number_and_total() {
    let app = TestApp::spawn().await;
    let admin = app.register_org("ocr@acme.example", "Acme").await;
    let png = rasterise(&invoice_pdf("INV-2025-0042"), 300, "png");
    let sha = stored(&app, &admin, "invoice.png", "image/png", png).await;

    let e = extract(&app, &admin, &sha).await;
    assert_eq!(e["engine"], "tesseract", "{e}");
    assert_eq!(field(&e, "invoice_number")["value"], "INV-2025-0042", "{e}");
    assert_eq!(field(&e, "total_minor")["value"], 73500, "{e}");
    assert_eq!(field(&e, "currency")["value"], "USD");
    assert_eq!(field(&e, "invoice_date")["value"], "2025-03-14");
    assert_eq!(
        e["result"]["line_items"].as_array().map(Vec::len),
        Some(3),
        "{e}"
    );
    for name in ["invoice_number", "total_minor"] {
        let c = field(&e, name)["confidence"].as_f64().expect("confidence");
        assert!((0.85..=1.0).contains(&c), "{name} confidence {c}");
        assert_eq!(field(&e, name)["method"], "label");
    }
    assert_eq!(e["status"], "completed", "{e}");
    assert!(e["confidence"].as_f64().expect("overall") >= 0.85);

    // Readiness shows the engines and that their tools are installed.
    let ready: Value = app.get("/health/ready").await.json().await.expect("json");
    assert_eq!(ready["checks"]["extraction"]["status"], "up", "{ready}");
    assert_eq!(
        ready["checks"]["extraction"]["detail"],
        "engines: pdf_text, tesseract"
    );
}

#[tokio::test]
async fn a_rotated_noisy_scan_still_yields_the_number_and_total_with_confidence() {
    let app = TestApp::spawn().await;
    let admin = app.register_org("noisy@acme.example", "Acme").await;
    let pdf = text_pdf(
        &[invoice_lines(
            "INV-7731-B",
            ITEMS,
            ("700.00", "35.00", "735.00"),
        )],
        2.0,
        400,
    );
    let jpeg = rasterise(&pdf, 200, "jpeg");
    let sha = stored(&app, &admin, "scan.jpg", "image/jpeg", jpeg).await;

    let e = extract(&app, &admin, &sha).await;
    assert_eq!(e["engine"], "tesseract", "{e}");
    assert_eq!(field(&e, "invoice_number")["value"], "INV-7731-B", "{e}");
    assert_eq!(field(&e, "total_minor")["value"], 73500, "{e}");
    for name in ["invoice_number", "total_minor"] {
        let c = field(&e, name)["confidence"].as_f64().expect("confidence");
        assert!(c > 0.5 && c <= 1.0, "{name} confidence {c}"); // a noisy scan scores lower
    }
    assert!(matches!(
        e["status"].as_str(),
        Some("completed" | "review_required")
    ));
}

#[tokio::test]
async fn a_scanned_pdf_is_rasterised_and_read_by_ocr() {
    // An uncompressed 200 dpi scan is about 4 MB: both limits are raised together.
    let app = TestApp::builder()
        .configure(|c| {
            c.http.body_limit_bytes = 8 * 1024 * 1024;
            c.files.max_bytes = 8 * 1024 * 1024;
        })
        .spawn()
        .await
        .expect("server");
    let admin = app.register_org("scan@acme.example", "Acme").await;
    let scan = scanned_pdf(&invoice_pdf("INV-2025-0099"), 200);
    let sha = stored(&app, &admin, "scan.pdf", "application/pdf", scan).await;

    let e = extract(&app, &admin, &sha).await;
    // The PDF has no text layer, so the text-layer engine passes it on to OCR.
    assert_eq!(e["engine"], "tesseract", "{e}");
    assert_eq!(field(&e, "invoice_number")["value"], "INV-2025-0099", "{e}");
    assert_eq!(field(&e, "total_minor")["value"], 73500, "{e}");
}

#[tokio::test]
async fn a_pdf_text_layer_is_read_directly_and_a_sum_mismatch_needs_review_until_corrected() {
    let app = TestApp::spawn().await;
    let admin = app.register_org("text@acme.example", "Acme").await;
    // The items add up to 700.00 but the subtotal says 800.00.
    let pdf = text_pdf(
        &[invoice_lines(
            "INV-2025-0100",
            ITEMS,
            ("800.00", "40.00", "840.00"),
        )],
        0.0,
        0,
    );
    let sha = stored(&app, &admin, "invoice.pdf", "application/pdf", pdf).await;

    let e = extract(&app, &admin, &sha).await;
    assert_eq!(e["engine"], "pdf_text", "{e}");
    assert_eq!(field(&e, "invoice_number")["value"], "INV-2025-0100");
    assert_eq!(field(&e, "total_minor")["value"], 84000);
    assert_eq!(field(&e, "total_minor")["confidence"], 1.0);
    assert_eq!(e["status"], "review_required", "{e}");
    let issues: Vec<&str> = e["result"]["issues"]
        .as_array()
        .expect("issues")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert_eq!(issues, vec!["line_items_sum_mismatch"], "{e}");

    // A reviewer corrects the subtotal, tax and total: stored beside the original, audited.
    let id = e["id"].as_str().expect("id");
    let bad = app
        .patch_as(
            &format!("/api/v1/extractions/{id}"),
            &admin.access_token,
            &json!({"fields": {"total_minor": "a lot"}}),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem = keel_testkit::problem(bad).await;
    assert_eq!(problem["errors"][0]["field"], "fields.total_minor");

    let r = app
        .patch_as(
            &format!("/api/v1/extractions/{id}"),
            &admin.access_token,
            &json!({"fields": {"subtotal_minor": 70000, "tax_minor": 3500, "total_minor": 73500},
                    "version": e["version"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let c: Value = r.json().await.expect("json");
    assert_eq!(c["status"], "completed", "{c}");
    assert_eq!(c["result"]["fields"]["total_minor"]["value"], 84000);
    assert_eq!(c["corrected"]["fields"]["total_minor"]["value"], 73500);
    assert_eq!(
        c["corrected"]["fields"]["total_minor"]["method"],
        "reviewer"
    );
    assert_eq!(c["reviewed_by"], json!(admin.user_id));

    // The same stale version again changes nothing.
    let stale = app
        .patch_as(
            &format!("/api/v1/extractions/{id}"),
            &admin.access_token,
            &json!({"fields": {"total_minor": 1}, "version": e["version"]}),
        )
        .await;
    assert_eq!(stale.status(), StatusCode::CONFLICT);

    let events: Value = app
        .get_as(
            "/api/v1/audit/events?action=extraction.corrected",
            &admin.access_token,
        )
        .await
        .json()
        .await
        .expect("json");
    let event = &events["data"][0];
    assert_eq!(event["resource_id"], id, "{events}");
    assert!(
        event["changes"].to_string().contains("total_minor"),
        "{event}"
    );
}

/// An app with a document type of its own: a shipping bill with a required number and a port
/// code.
struct ShippingApp;

impl keel_kernel::Module for ShippingApp {
    fn name(&self) -> &'static str {
        "shipping"
    }

    fn document_fields(&self) -> Vec<keel_kernel::extract::DocumentField> {
        vec![
            keel_kernel::extract::DocumentField {
                document_type: "shipping_bill",
                name: "shipping_bill_number",
                pattern: r"shipping\s+bill\s+no\.?\s*[:#]?\s*([A-Z0-9/-]+)",
                required: true,
            },
            keel_kernel::extract::DocumentField {
                document_type: "shipping_bill",
                name: "port_code",
                pattern: r"port\s+code\s*:\s*([A-Z0-9]{5,6})",
                required: false,
            },
        ]
    }
}

#[tokio::test]
async fn apps_register_document_types_with_fields_of_their_own() {
    let app = TestApp::builder()
        .module(std::sync::Arc::new(ShippingApp))
        .spawn()
        .await
        .expect("server");
    let admin = app.register_org("bills@acme.example", "Acme").await;
    let mut lines = invoice_lines("INV-SB-1", ITEMS, ("700.00", "35.00", "735.00"));
    lines.insert(1, "Shipping Bill No: SB/4471/2025".into());
    lines.insert(2, "Port Code: INNSA1".into());
    let sha = stored(
        &app,
        &admin,
        "bill.pdf",
        "application/pdf",
        text_pdf(&[lines], 0.0, 0),
    )
    .await;

    let unknown = app
        .post_as(
            "/api/v1/extractions",
            &admin.access_token,
            &json!({"file": sha, "document_type": "bill_of_lading"}),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = keel_testkit::problem(unknown).await;
    assert_eq!(p["errors"][0]["field"], "document_type");

    let r = app
        .post_as(
            "/api/v1/extractions",
            &admin.access_token,
            &json!({"file": sha, "document_type": "shipping_bill"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.expect("json")["extraction_id"]
        .as_str()
        .expect("id")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let e = loop {
        let e: Value = app
            .get_as(&format!("/api/v1/extractions/{id}"), &admin.access_token)
            .await
            .json()
            .await
            .expect("json");
        if !matches!(e["status"].as_str(), Some("queued" | "running")) {
            break e;
        }
        assert!(Instant::now() < deadline, "extraction did not finish: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(e["document_type"], "shipping_bill");
    assert_eq!(
        field(&e, "shipping_bill_number")["value"],
        "SB/4471/2025",
        "{e}"
    );
    assert_eq!(field(&e, "port_code")["value"], "INNSA1");
    assert_eq!(field(&e, "total_minor")["value"], 73500);
    assert_eq!(e["status"], "completed", "{e}");
}

#[tokio::test]
async fn a_document_over_the_page_limit_fails_with_the_reason() {
    let app = TestApp::builder()
        .configure(|c| c.extraction.max_pages = 1)
        .spawn()
        .await
        .expect("server");
    let admin = app.register_org("pages@acme.example", "Acme").await;
    let lines = invoice_lines("INV-1", ITEMS, ("700.00", "35.00", "735.00"));
    let pdf = text_pdf(&[lines.clone(), lines], 0.0, 0);
    let sha = stored(&app, &admin, "long.pdf", "application/pdf", pdf).await;
    let e = extract(&app, &admin, &sha).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(
        e["failure_reason"],
        "the document has 2 pages; the limit is 1"
    );
}

#[tokio::test]
async fn files_are_typed_by_content_not_by_name() {
    let app = TestApp::spawn().await;
    let admin = app.register_org("types@acme.example", "Acme").await;
    let png = rasterise(&invoice_pdf("INV-1"), 72, "png");

    // A PNG renamed .pdf is a PNG: refused where the name says otherwise.
    let r = upload(
        &app,
        &admin,
        "invoice.pdf",
        "application/octet-stream",
        png.clone(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = keel_testkit::problem(r).await;
    assert_eq!(p["errors"][0]["field"], "file");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("PNG"),
        "{p}"
    );
    // … or where the declared content type does.
    let r = upload(&app, &admin, "scan", "application/pdf", png.clone()).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // HTML with a PDF name is not a document at all.
    let html = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>".to_vec();
    let r = upload(&app, &admin, "invoice.pdf", "application/pdf", html).await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let p = keel_testkit::problem(r).await;
    assert_eq!(p["errors"][0]["field"], "file");

    // Nothing was stored.
    let r = upload(&app, &admin, "scan.png", "image/png", png).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["kind"], "png");
    assert_eq!(body["content_type"], "image/png");

    // Over the size limit: 413.
    let big = {
        let mut b = b"%PDF-1.4\n".to_vec();
        b.resize(2 * 1024 * 1024 + 1, b' ');
        b
    };
    let r = upload(&app, &admin, "big.pdf", "application/pdf", big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

async fn round_trip(app: &TestApp) {
    let admin = app.register_org("files@acme.example", "Acme").await;
    let other = app.register_org("files@rival.example", "Rival").await;
    let pdf = invoice_pdf("INV-RT-1");

    let r = upload(app, &admin, "invoice.pdf", "application/pdf", pdf.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let file: Value = r.json().await.expect("json");
    let sha = file["sha256"].as_str().expect("sha").to_string();
    assert_eq!(location, format!("/api/v1/files/{sha}"));
    assert_eq!(file["size"], pdf.len());
    assert_eq!(file["file_name"], "invoice.pdf");

    // The same content again is the same file.
    let again = upload(app, &admin, "copy.pdf", "application/pdf", pdf.clone()).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["sha256"], sha.as_str());
    assert_eq!(again["file_name"], "invoice.pdf");

    let content = app
        .get_as(&format!("/api/v1/files/{sha}/content"), &admin.access_token)
        .await;
    assert_eq!(content.status(), StatusCode::OK);
    assert_eq!(content.headers()["content-type"], "application/pdf");
    assert!(
        content.headers()["content-disposition"]
            .to_str()
            .unwrap_or("")
            .starts_with("attachment")
    );
    assert_eq!(
        content.bytes().await.expect("bytes").as_ref(),
        pdf.as_slice()
    );

    // Another organization sees nothing, exactly like a missing file.
    for path in [
        format!("/api/v1/files/{sha}"),
        format!("/api/v1/files/{sha}/content"),
    ] {
        assert_eq!(
            app.get_as(&path, &other.access_token).await.status(),
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        app.delete_as(&format!("/api/v1/files/{sha}"), &other.access_token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let r = app
        .post_as(
            "/api/v1/extractions",
            &other.access_token,
            &json!({"file": sha, "document_type": "invoice"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // No anonymous access at all.
    assert_eq!(
        app.get(&format!("/api/v1/files/{sha}/content"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    let e = extract(app, &admin, &sha).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(
        app.get_as(
            &format!("/api/v1/extractions/{}", e["id"].as_str().expect("id")),
            &other.access_token
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        app.delete_as(&format!("/api/v1/files/{sha}"), &admin.access_token)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get_as(&format!("/api/v1/files/{sha}/content"), &admin.access_token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn files_round_trip_on_local_disk_deduplicated_and_inside_their_organization() {
    let app = TestApp::spawn().await;
    round_trip(&app).await;
    let stored_under = app.db.data_dir().join("files").join("orgs");
    assert!(stored_under.is_dir(), "files live under the data directory");
}

/// A local S3-compatible server (moto), stopped when dropped.
struct Moto {
    child: tokio::process::Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn moto() -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let child = tokio::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "the S3 test needs moto_server (pip install 'moto[server]'; .ci/run installs it): {e}"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto { child, port }
}

#[tokio::test]
async fn files_round_trip_through_an_s3_compatible_server() {
    let server = moto().await;
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    // moto creates a bucket on an unsigned PUT.
    let created = keel_testkit::client()
        .put(format!("{endpoint}/keel-files"))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success(), "{}", created.status());

    let app = TestApp::builder()
        .configure(move |c| {
            c.files.backend = keel_kernel::storage::Backend::S3;
            c.files.s3.bucket = Some("keel-files".into());
            c.files.s3.endpoint = Some(endpoint);
            c.files.s3.allow_http = true;
            c.files.s3.prefix = "tenant-files".into();
            c.files.s3.access_key_id = Some(keel_kernel::config::Secret::new("testing"));
            c.files.s3.secret_access_key = Some(keel_kernel::config::Secret::new("testing"));
        })
        .spawn()
        .await
        .expect("server");
    assert_eq!(app.state.files.backend(), "s3");
    round_trip(&app).await;

    // Objects live in the bucket under the prefix and their organization.
    let admin = app.register_org("s3@acme.example", "Acme S3").await;
    let sha = stored(
        &app,
        &admin,
        "a.pdf",
        "application/pdf",
        invoice_pdf("INV-S3"),
    )
    .await;
    let listing = keel_testkit::client()
        .get(format!(
            "http://127.0.0.1:{}/keel-files?list-type=2",
            server.port
        ))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    let key = format!(
        "<Key>tenant-files/orgs/{}/{}/{sha}</Key>",
        admin.org_id,
        &sha[..2]
    );
    assert!(listing.contains(&key), "{listing}");

    // Storage down: uploads answer 503 and store nothing.
    drop(server);
    let down = upload(
        &app,
        &admin,
        "b.pdf",
        "application/pdf",
        invoice_pdf("INV-S3-2"),
    )
    .await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let sha2 = keel_kernel::storage::sha256_hex(&invoice_pdf("INV-S3-2"));
    assert_eq!(
        app.get_as(&format!("/api/v1/files/{sha2}"), &admin.access_token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// A fake OpenAI-compatible API that reads invoices: it checks the request carries the page
/// image and answers with the fields, counting calls.
async fn fake_vision_llm(
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> keel_testkit::FakeServer {
    use axum::Json as AxumJson;
    keel_testkit::FakeServer::start(axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |AxumJson(body): AxumJson<Value>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let has_image = body.to_string().contains("data:image/png;base64,");
                let answer = json!({
                    "invoice_number": if has_image { "INV-V-77" } else { "NO IMAGE" },
                    "invoice_date": "2025-03-14", "seller": "Acme Exports Ltd",
                    "buyer": "Globex GmbH", "currency": "usd",
                    "subtotal": "700.00", "tax": "35.00", "total": "735.00",
                    "line_items": [
                        {"description": "Cotton bales", "quantity": "2", "unit_price": "250.00", "amount": "500.00"},
                        {"description": "Freight", "quantity": "1", "unit_price": "200.00", "amount": "200.00"}
                    ],
                    "confidence": {"invoice_number": 0.98, "invoice_date": 0.95, "seller": 0.93,
                        "buyer": 0.93, "currency": 0.99, "subtotal": 0.95, "tax": 0.95,
                        "total": 0.97, "line_items": 0.92}
                });
                AxumJson(json!({
                    "choices": [{ "message": { "role": "assistant", "content": answer.to_string() } }],
                    "usage": { "prompt_tokens": 900, "completion_tokens": 120 }
                }))
            }
        }),
    ))
    .await
}

#[tokio::test]
async fn a_vision_llm_reads_a_scan_once_per_organization_and_its_fields_are_assessed() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fake = fake_vision_llm(calls.clone()).await;
    let base = fake.url("");
    let app = TestApp::builder()
        .configure(move |c| {
            c.extraction.engines = vec!["vision_llm".into()];
            c.llm.base_url = base.trim_end_matches('/').to_string();
            c.llm.api_key = Some(keel_kernel::config::Secret::new("test-llm-key"));
        })
        .spawn()
        .await
        .expect("spawn");
    let admin = app.register_org("vision@acme.example", "Acme").await;
    // A scanned (image-only) PDF: the engine rasterises its page and sends the image.
    let scan = rasterise(&invoice_pdf("INV-V-77"), 100, "png");
    let sha = stored(&app, &admin, "scan.png", "image/png", scan).await;

    let e = extract(&app, &admin, &sha).await;
    assert_eq!(e["engine"], "vision_llm", "{e}");
    assert_eq!(field(&e, "invoice_number")["value"], "INV-V-77", "{e}");
    assert_eq!(field(&e, "total_minor")["value"], 73500);
    assert_eq!(field(&e, "currency")["value"], "USD");
    assert_eq!(field(&e, "invoice_number")["method"], "engine");
    assert_eq!(field(&e, "invoice_number")["confidence"], 0.98);
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The same document again is answered from the organization's LLM cache.
    let again = extract(&app, &admin, &sha).await;
    assert_eq!(field(&again, "invoice_number")["value"], "INV-V-77");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no second call"
    );

    // Readiness lists the engine as configured.
    let ready: Value = app.get("/health/ready").await.json().await.expect("json");
    assert_eq!(
        ready["checks"]["extraction"]["detail"],
        "engines: vision_llm"
    );
}
