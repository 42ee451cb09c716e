//! Signing in from tests: one typed helper per identity endpoint a test leans on.

use keel_kernel::mail::{Mail, read_mailbox};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::TestApp;

/// A password that passes the policy.
pub const PASSWORD: &str = "correct-horse-battery-staple";

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub email: String,
    pub user_id: Uuid,
    pub org_id: Uuid,
    pub access_token: String,
    pub refresh_token: String,
    pub session_id: Uuid,
    pub csrf_token: String,
}

impl Session {
    pub fn from_login(email: &str, body: &Value) -> Session {
        let uuid = |v: &Value| {
            Uuid::parse_str(v.as_str().unwrap_or(""))
                .unwrap_or_else(|_| panic!("not a uuid in {body}"))
        };
        Session {
            email: email.to_string(),
            user_id: uuid(&body["user"]["id"]),
            org_id: uuid(&body["user"]["org_id"]),
            access_token: body["access_token"]
                .as_str()
                .unwrap_or_else(|| panic!("no access_token in {body}"))
                .to_string(),
            refresh_token: body["refresh_token"].as_str().unwrap_or("").to_string(),
            session_id: uuid(&body["session_id"]),
            csrf_token: body["csrf_token"].as_str().unwrap_or("").to_string(),
        }
    }
}

impl TestApp {
    /// Sends a request with a bearer token (and a JSON body when given).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.client.request(method.clone(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post_as(&self, path: &str, token: &str, body: &Value) -> Response {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch_as(&self, path: &str, token: &str, body: &Value) -> Response {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete_as(&self, path: &str, token: &str) -> Response {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// `POST /api/v1/auth/login`.
    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/api/v1/auth/login",
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    /// Signs in and returns the session (panics unless 200 with tokens).
    pub async fn sign_in(&self, email: &str, password: &str) -> Session {
        let response = self.login(email, password).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "sign-in of {email} failed: {body}");
        Session::from_login(email, &body)
    }

    /// Runs first-time setup and signs the super admin in.
    pub async fn setup_super_admin(&self) -> Session {
        let email = "root@keel.example";
        let response = self
            .post_json(
                "/api/v1/setup",
                &json!({ "email": email, "password": PASSWORD, "name": "Root", "organization_name": "Platform" }),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap_or_default()
        );
        self.sign_in(email, PASSWORD).await
    }

    /// Registers a new organization with `email` as its admin and signs in.
    pub async fn register_org(&self, email: &str, org: &str) -> Session {
        let response = self
            .post_json(
                "/api/v1/auth/register",
                &json!({ "email": email, "password": PASSWORD, "name": "Admin", "organization_name": org }),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap_or_default()
        );
        self.sign_in(email, PASSWORD).await
    }

    /// Invites `email` into the admin's organization with `role` and registers them.
    /// Returns the registration response body.
    pub async fn invite_and_register(
        &self,
        admin: &Session,
        email: &str,
        role: &str,
        partner: Option<Uuid>,
    ) -> Value {
        let mut body = json!({ "email": email, "role": role });
        if let Some(p) = partner {
            body["partner_id"] = json!(p);
        }
        let response = self
            .post_as(
                &format!("/api/v1/orgs/{}/invitations", admin.org_id),
                &admin.access_token,
                &body,
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap_or_default()
        );
        let invitation: Value = response.json().await.unwrap_or(Value::Null);
        let token = invitation["token"].as_str().unwrap_or("").to_string();
        let response = self
            .post_json(
                "/api/v1/auth/register",
                &json!({ "email": email, "password": PASSWORD, "name": "Invited", "invitation_token": token }),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap_or_default()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    /// Creates a business partner in the admin's organization.
    pub async fn create_partner(&self, admin: &Session, name: &str) -> Uuid {
        let response = self
            .post_as(
                "/api/v1/partners",
                &admin.access_token,
                &json!({ "name": name, "kind": "buyer" }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Uuid::parse_str(body["id"].as_str().unwrap_or(""))
            .unwrap_or_else(|_| panic!("partner id in {body}"))
    }

    /// Messages the development mailer wrote to `to`, oldest first.
    pub fn mail_to(&self, to: &str) -> Vec<Mail> {
        read_mailbox(&self.state.config.data_dir.join("mail"))
            .into_iter()
            .filter(|m| m.to == to)
            .collect()
    }

    /// The newest one-time token of `kind` mailed to `to`.
    pub fn mailed_token(&self, to: &str, kind: &str) -> String {
        self.mail_to(to)
            .into_iter()
            .rev()
            .find(|m| m.kind == kind)
            .and_then(|m| m.token)
            .unwrap_or_else(|| panic!("no {kind} message for {to}"))
    }
}
