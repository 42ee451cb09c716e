//! Trade documents through HTTP: multipart uploads checked by content (magic bytes), size and
//! type, stored and downloaded inside their organization, deleted with an audit event, and
//! extracted end to end — an invoice image the test renders is read by Tesseract through the
//! trade job, which records `trade.document.extracted` — then reviewed and corrected.
//!
//! Needs `tesseract` (eng) and poppler-utils (`pdftoppm`), as the kernel's extraction tests.

mod common;

use std::time::{Duration, Instant};

use common::{audit_events, create_shipment, id_of, spawn};
use keel_testkit::{Session, TestApp, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

// ---- documents the test renders (as the kernel's extraction tests do) ------------------

/// A one-page PDF of monospaced text lines (Courier 11 pt on A4).
fn text_pdf(lines: &[String]) -> Vec<u8> {
    let mut ops = String::from("BT /F1 11 Tf 14 TL 60 780 Td\n");
    for l in lines {
        let esc = l
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        ops.push_str(&format!("({esc}) Tj T*\n"));
    }
    ops.push_str("ET");
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>".to_vec(),
        {
            let mut stream = format!("<< /Length {} >>\nstream\n", ops.len()).into_bytes();
            stream.extend_from_slice(ops.as_bytes());
            stream.extend_from_slice(b"\nendstream");
            stream
        },
    ];
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

/// Renders a PDF's page to a greyscale PNG with pdftoppm: a scan without a text layer.
fn rasterise(pdf: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.pdf");
    std::fs::write(&input, pdf).expect("write");
    let out = dir.path().join("page");
    let status = std::process::Command::new("pdftoppm")
        .args([
            "-r",
            "300",
            "-gray",
            "-png",
            "-singlefile",
            input.to_str().expect("path"),
            out.to_str().expect("path"),
        ])
        .status()
        .expect("pdftoppm runs (install poppler-utils)");
    assert!(status.success(), "pdftoppm failed");
    std::fs::read(dir.path().join("page.png")).expect("rendered page")
}

fn invoice_lines(number: &str) -> Vec<String> {
    vec![
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
        "Steel bolts M8         100         2.50      250.00".into(),
        "Copper wire 2mm         20        15.00      300.00".into(),
        "Packing crates           4        37.50      150.00".into(),
        String::new(),
        "Subtotal: 700.00".into(),
        "Tax (5%): 35.00".into(),
        "Total: 735.00".into(),
    ]
}

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x3a, 0x7e, 0x9b,
    0x55, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x01, 0x48, 0xaf, 0xa4, 0x71, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

// ---- HTTP helpers ---------------------------------------------------------------------

const BOUNDARY: &str = "----keel-test-7MA4YWxkTrZu0gW";

/// A multipart form: text fields, then an optional file part.
fn form(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((name, content_type, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn upload(app: &TestApp, who: &Session, shipment: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/trade/shipments/{shipment}/documents")))
        .bearer_auth(&who.access_token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .expect("upload")
}

async fn uploaded(
    app: &TestApp,
    who: &Session,
    shipment: &str,
    doc_type: &str,
    file: (&str, &str, &[u8]),
) -> Value {
    let r = upload(
        app,
        who,
        shipment,
        form(&[("document_type", doc_type)], Some(file)),
    )
    .await;
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json")
}

fn fields_of(p: &Value) -> Vec<String> {
    let mut f: Vec<String> = p["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    f.sort();
    f
}

/// Polls the document's extraction until it is neither queued nor running.
async fn finished_extraction(app: &TestApp, who: &Session, document: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e = json_of(
            app.get_as(
                &format!("/api/v1/trade/documents/{document}/extraction"),
                &who.access_token,
            )
            .await,
        )
        .await;
        if !matches!(e["status"].as_str(), Some("queued" | "running")) {
            return e;
        }
        assert!(Instant::now() < deadline, "extraction did not finish: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- tests ----------------------------------------------------------------------------

#[tokio::test]
async fn documents_upload_list_download_and_delete_inside_their_organization() {
    let app = spawn().await;
    let admin = app.register_org("docs@acme.example", "Acme").await;
    let s = id_of(&create_shipment(&app, &admin, "DOC-1", json!({})).await);
    let pdf = text_pdf(&["Packing List No: PL-77".into()]);
    let doc = uploaded(
        &app,
        &admin,
        &s,
        "packing_list",
        ("packing list.pdf", "application/pdf", &pdf),
    )
    .await;
    assert_eq!(doc["document_type"], "packing_list");
    assert_eq!(doc["shipment_id"], s.as_str());
    assert_eq!(doc["content_type"], "application/pdf");
    assert_eq!(doc["size"], pdf.len());
    assert_eq!(
        doc["sha256"],
        keel_kernel::storage::sha256_hex(&pdf).as_str(),
        "checksummed"
    );
    assert!(doc["extraction_id"].is_null());
    let id = id_of(&doc);
    let png_doc = uploaded(&app, &admin, &s, "other", ("photo.png", "image/png", PNG)).await;

    let list = json_of(
        app.get_as(
            &format!("/api/v1/trade/shipments/{s}/documents"),
            &admin.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 2);
    assert_eq!(list["data"][0]["id"], png_doc["id"], "newest first");

    let r = app
        .get_as(
            &format!("/api/v1/trade/documents/{id}/content"),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("bytes").as_ref(), pdf.as_slice());
    let r = app
        .get_as(
            &format!("/api/v1/trade/documents/{id}/download"),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"packing_list.pdf\""
    );
    assert_eq!(r.bytes().await.expect("bytes").as_ref(), pdf.as_slice());

    // Another organization sees none of it.
    let other = app.register_org("docs-o@globex.example", "Globex").await;
    for path in [
        format!("/api/v1/trade/documents/{id}"),
        format!("/api/v1/trade/documents/{id}/download"),
        format!("/api/v1/trade/documents/{id}/content"),
        format!("/api/v1/trade/documents/{id}/extraction"),
        format!("/api/v1/trade/shipments/{s}/documents"),
    ] {
        let r = app.get_as(&path, &other.access_token).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = app
        .delete_as(
            &format!("/api/v1/trade/documents/{id}"),
            &other.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Deleting is audited.
    let r = app
        .delete_as(
            &format!("/api/v1/trade/documents/{id}"),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .get_as(
            &format!("/api/v1/trade/documents/{id}"),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let events = audit_events(&app, &admin, "trade.document.deleted").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["resource_id"], id.as_str());
    assert_eq!(
        audit_events(&app, &admin, "trade.document.uploaded")
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_and_store_nothing() {
    let app = common::builder()
        .configure(|c| c.files.max_bytes = 64 * 1024)
        .spawn()
        .await
        .expect("server");
    let admin = app.register_org("docs-bad@acme.example", "Acme").await;
    let s = id_of(&create_shipment(&app, &admin, "DOC-BAD-1", json!({})).await);

    // Wrong magic bytes: a "PDF" that is text.
    let r = upload(
        &app,
        &admin,
        &s,
        form(
            &[("document_type", "commercial_invoice")],
            Some((
                "invoice.pdf",
                "application/pdf",
                b"just some text, not a PDF",
            )),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(fields_of(&problem(r).await), ["file"]);
    // Content that contradicts its declared type.
    let r = upload(
        &app,
        &admin,
        &s,
        form(
            &[("document_type", "commercial_invoice")],
            Some(("invoice.pdf", "application/pdf", PNG)),
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields_of(&problem(r).await), ["file"]);
    // Too large.
    let mut big = PNG.to_vec();
    big.resize(100 * 1024, 0);
    let r = upload(
        &app,
        &admin,
        &s,
        form(&[("type", "other")], Some(("big.png", "image/png", &big))),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // An unknown type and no file: both named.
    let r = upload(
        &app,
        &admin,
        &s,
        form(&[("document_type", "invoice_copy")], None),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p = problem(r).await;
    assert_eq!(fields_of(&p), ["document_type", "file"]);
    assert!(
        p.to_string().contains("bank_realisation_certificate"),
        "{p}"
    );
    // Not a form at all.
    let r = app
        .post_as(
            &format!("/api/v1/trade/shipments/{s}/documents"),
            &admin.access_token,
            &json!({"type": "other"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A shipment of another organization is not found, and nothing is stored for it.
    let other = app
        .register_org("docs-bad-o@globex.example", "Globex")
        .await;
    let theirs = id_of(&create_shipment(&app, &other, "GLX-DOC-1", json!({})).await);
    let r = upload(
        &app,
        &admin,
        &theirs,
        form(&[("type", "other")], Some(("a.png", "image/png", PNG))),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let list = json_of(
        app.get_as(
            &format!("/api/v1/trade/shipments/{s}/documents"),
            &admin.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 0);
    let files = json_of(app.get_as("/api/v1/files", &admin.access_token).await).await;
    assert!(
        files["data"].as_array().is_none_or(Vec::is_empty),
        "no file stored: {files}"
    );
}

#[tokio::test]
async fn an_invoice_image_is_extracted_end_to_end_and_corrected() {
    let app = spawn().await;
    let admin = app.register_org("docs-ocr@acme.example", "Acme").await;
    let s = id_of(&create_shipment(&app, &admin, "DOC-OCR-1", json!({})).await);
    let png = rasterise(&text_pdf(&invoice_lines("INV-2025-0042")));
    let doc = uploaded(
        &app,
        &admin,
        &s,
        "commercial_invoice",
        ("invoice.png", "image/png", &png),
    )
    .await;
    let id = id_of(&doc);

    // Not extracted yet.
    let r = app
        .get_as(
            &format!("/api/v1/trade/documents/{id}/extraction"),
            &admin.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A member of the organization listens on its realtime channel.
    let listener = tokio::spawn(
        app.client
            .get(app.url(&format!(
                "/api/v1/realtime/poll?channels=org:{}&timeout=25",
                admin.org_id
            )))
            .bearer_auth(&admin.access_token)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let r = app
        .post_as(
            &format!("/api/v1/trade/documents/{id}/extract"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["ratelimit-limit"], "20");
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let started = json_of(r).await;
    assert_eq!(
        location,
        format!(
            "/api/v1/jobs/{}",
            started["job_id"].as_str().expect("job id")
        )
    );
    assert_eq!(started["status"], "queued");
    assert!(started["job_id"].is_string());

    // One extraction of a document at a time.
    let r = app
        .post_as(
            &format!("/api/v1/trade/documents/{id}/extract"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    let e = finished_extraction(&app, &admin, &id).await;
    assert_eq!(e["id"], started["extraction_id"]);
    assert_eq!(e["engine"], "tesseract", "{e}");
    assert_eq!(e["document_type"], "invoice");
    assert_eq!(
        e["result"]["fields"]["invoice_number"]["value"], "INV-2025-0042",
        "{e}"
    );
    assert_eq!(e["result"]["fields"]["total_minor"]["value"], 73500, "{e}");
    let c = e["result"]["fields"]["total_minor"]["confidence"]
        .as_f64()
        .expect("confidence");
    assert!((0.85..=1.0).contains(&c), "confidence {c}");
    assert_eq!(e["status"], "completed", "{e}");
    assert!(e["result"]["issues"].as_array().is_some_and(Vec::is_empty));

    // The job noted the outcome on the document and recorded the event (published on the
    // organization's channel).
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = audit_events(&app, &admin, "trade.document.extracted").await;
        if !events.is_empty() || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["resource_id"], id.as_str());
    let text = events[0].to_string();
    assert!(text.contains("completed"), "{text}");
    let d = json_of(
        app.get_as(
            &format!("/api/v1/trade/documents/{id}"),
            &admin.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(d["extraction_status"], "completed");
    assert_eq!(d["extraction_id"], started["extraction_id"]);
    let published: Value = listener
        .await
        .expect("listener")
        .expect("poll")
        .json()
        .await
        .expect("json");
    let text = published.to_string();
    assert!(text.contains("trade.document.extracted"), "{text}");
    assert!(text.contains(&id), "{text}");

    // A reviewer corrects a field: stored beside the original, re-scored, audited.
    let r = app
        .patch_as(
            &format!("/api/v1/trade/documents/{id}/extraction"),
            &admin.access_token,
            &json!({"fields": {"total_minor": "lots"}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields_of(&problem(r).await), ["fields.total_minor"]);
    let r = app
        .patch_as(
            &format!("/api/v1/trade/documents/{id}/extraction"),
            &admin.access_token,
            &json!({"fields": {"invoice_number": "INV-2025-0043"}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let corrected = json_of(r).await;
    assert_eq!(
        corrected["corrected"]["fields"]["invoice_number"]["value"],
        "INV-2025-0043"
    );
    assert_eq!(
        corrected["result"]["fields"]["invoice_number"]["value"], "INV-2025-0042",
        "the original stays"
    );
    assert_eq!(
        audit_events(&app, &admin, "extraction.corrected")
            .await
            .len(),
        1
    );

    // Extracting again makes a new extraction the document's current one.
    let r = app
        .post_as(
            &format!("/api/v1/trade/documents/{id}/extract"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let again = json_of(r).await;
    assert_ne!(again["extraction_id"], started["extraction_id"]);
    let e = finished_extraction(&app, &admin, &id).await;
    assert_eq!(e["id"], again["extraction_id"]);
    assert!(e["corrected"].is_null());
    let d = json_of(
        app.get_as(
            &format!("/api/v1/trade/documents/{id}"),
            &admin.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(d["extraction_id"], again["extraction_id"]);
}

#[tokio::test]
async fn trade_document_types_are_extracted_with_their_own_fields() {
    let app = spawn().await;
    let admin = app.register_org("docs-sb@acme.example", "Acme").await;
    let s = id_of(&create_shipment(&app, &admin, "DOC-SB-1", json!({})).await);
    let bill = text_pdf(&[
        "SHIPPING BILL FOR EXPORT OF DUTY FREE GOODS".into(),
        "Shipping Bill No: 4471982".into(),
        "Shipping Bill Date: 2025-03-10".into(),
        "Port Code: INNSA1".into(),
        "Port of Discharge: DEHAM".into(),
        "Invoice No: EXP-2025-118".into(),
        "Total: 12,500.00".into(),
        "Currency: EUR".into(),
    ]);
    let doc = uploaded(
        &app,
        &admin,
        &s,
        "shipping_bill",
        ("sb.pdf", "application/pdf", &bill),
    )
    .await;
    let id = id_of(&doc);
    let r = app
        .post_as(
            &format!("/api/v1/trade/documents/{id}/extract"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let e = finished_extraction(&app, &admin, &id).await;
    assert_eq!(e["document_type"], "shipping_bill");
    assert_eq!(e["engine"], "pdf_text", "{e}");
    let f = &e["result"]["fields"];
    assert_eq!(f["shipping_bill_number"]["value"], "4471982", "{e}");
    assert_eq!(f["shipping_bill_date"]["value"], "2025-03-10", "{e}");
    assert_eq!(f["port_code"]["value"], "INNSA1", "{e}");
    assert_eq!(f["port_of_discharge"]["value"], "DEHAM", "{e}");

    // A BRC without its realised amount needs review.
    let brc = text_pdf(&[
        "BANK REALISATION CERTIFICATE".into(),
        "BRC No: BRC/2025/000981".into(),
    ]);
    let doc = uploaded(
        &app,
        &admin,
        &s,
        "bank_realisation_certificate",
        ("brc.pdf", "application/pdf", &brc),
    )
    .await;
    let brc_id = id_of(&doc);
    let r = app
        .post_as(
            &format!("/api/v1/trade/documents/{brc_id}/extract"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let e = finished_extraction(&app, &admin, &brc_id).await;
    assert_eq!(
        e["result"]["fields"]["brc_number"]["value"], "BRC/2025/000981",
        "{e}"
    );
    assert_eq!(e["status"], "review_required", "{e}");
    assert!(
        e.to_string().contains("realised_amount"),
        "the missing field is named: {e}"
    );

    // Documents of type `other` are not extracted.
    let other = uploaded(&app, &admin, &s, "other", ("x.png", "image/png", PNG)).await;
    let r = app
        .post_as(
            &format!("/api/v1/trade/documents/{}/extract", id_of(&other)),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields_of(&problem(r).await), ["document_type"]);
}

#[tokio::test]
async fn the_isolation_probe_covers_the_trade_routes() {
    let app = common::builder()
        .without_probe_module()
        .spawn()
        .await
        .expect("server");
    let a = app.register_org("iso-a@tenant-a.example", "Tenant A").await;
    let b = app.register_org("iso-b@tenant-b.example", "Tenant B").await;
    let own = app.create_partner(&a, "Partner of the probing user").await;
    app.invite_and_register(&a, "iso-p@tenant-a.example", "partner", Some(own))
        .await;
    let partner_user = app
        .sign_in("iso-p@tenant-a.example", keel_testkit::PASSWORD)
        .await;
    let report = keel_testkit::isolation::probe(&app, &a, &b, &partner_user).await;
    assert!(
        report.uncovered.is_empty(),
        "routes without fixtures: {:?}",
        report.uncovered
    );
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
}

#[tokio::test]
async fn starting_extractions_is_rate_limited_per_organization() {
    let app = common::builder()
        .configure(|c| {
            c.rate_limits.policies.insert(
                "trade.extract".into(),
                keel_kernel::limits::PolicyOverride {
                    limit: Some(2),
                    ..Default::default()
                },
            );
        })
        .spawn()
        .await
        .expect("server");
    let admin = app.register_org("docs-rl@acme.example", "Acme").await;
    let s = id_of(&create_shipment(&app, &admin, "DOC-RL-1", json!({})).await);
    let doc = uploaded(&app, &admin, &s, "other", ("x.png", "image/png", PNG)).await;
    let path = format!("/api/v1/trade/documents/{}/extract", id_of(&doc));
    for _ in 0..2 {
        let r = app.post_as(&path, &admin.access_token, &json!({})).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let r = app.post_as(&path, &admin.access_token, &json!({})).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    // Another organization has its own allowance.
    let other = app.register_org("docs-rl-o@globex.example", "Globex").await;
    let r = app.post_as(&path, &other.access_token, &json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
