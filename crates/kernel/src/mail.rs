//! The mail seam. Until a real transport is configured, [`FileMailer`] writes each message
//! as a file under `<data_dir>/mail/` (owner-only), so sign-up, verification, reset and
//! invitation links reach a developer without ever passing through the logs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    /// What the message is for (`verify_email`, `password_reset`, `invitation`, …).
    pub kind: String,
    /// The one-time token it carries, if any (also inside `text`).
    pub token: Option<String>,
}

#[async_trait::async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send(&self, mail: Mail) -> anyhow::Result<()>;
}

/// Writes messages as JSON files in a directory.
#[derive(Debug, Clone)]
pub struct FileMailer {
    dir: PathBuf,
}

impl FileMailer {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}

#[async_trait::async_trait]
impl Mailer for FileMailer {
    async fn send(&self, mail: Mail) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            }
            let name = format!(
                "{}-{}.json",
                uuid::Uuid::now_v7().simple(),
                mail.kind
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "-")
            );
            let body = serde_json::to_vec_pretty(&mail)?;
            crate::config::write_owner_only(&dir.join(name), &body)?;
            Ok::<_, anyhow::Error>(())
        })
        .await??;
        Ok(())
    }
}

/// Reads the messages a [`FileMailer`] wrote, oldest first (for tests and local use).
pub fn read_mailbox(dir: &std::path::Path) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}
