//! The auth header check. Superfone does not sign bodies; the only proof of
//! origin is a static header configured in its dashboard
//! (`Authorization: Bearer <secret>`), so every request must carry one of the
//! accepted secrets.
//!
//! Several secrets may be accepted at once, so one can be rotated without
//! downtime, and `auth.secrets_file` is read again when its content changes
//! (a Kubernetes secret mount is updated in place), so rotation needs no
//! restart; a file that becomes unreadable, empty or weak keeps the secrets
//! in use and is logged at ERROR. Every secret must be at least
//! `MIN_SECRET_BYTES` long. Only SHA-256 digests of the secrets are kept, and
//! the presented credential is compared with every digest in constant time,
//! so neither its content nor its length (nor which secret matched) leaks
//! through timing.

use crate::config::AuthConfig;
use hyper::header::{HeaderMap, HeaderName};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// The shortest secret accepted: guessing one must stay out of reach.
pub const MIN_SECRET_BYTES: usize = 16;
/// How often `auth.secrets_file` is checked for a change.
const SECRETS_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no auth secret configured: set the {env} environment variable or auth.secrets_file")]
    NoSecrets { env: String },
    #[error("cannot read auth.secrets_file {path}: {source}")]
    ReadSecretsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{count} accepted auth secret(s) shorter than {MIN_SECRET_BYTES} bytes; use long random ones (e.g. `openssl rand -hex 24`)")]
    WeakSecret { count: usize },
    #[error("auth.header is not a valid header name")]
    HeaderName,
    #[error("the {0} header is missing")]
    Missing(String),
    #[error("the {0} header does not carry an accepted credential")]
    Invalid(String),
}

pub struct Authenticator {
    header: HeaderName,
    scheme: String,
    accepted: RwLock<Vec<[u8; 32]>>,
    config: AuthConfig,
    /// Digest of `auth.secrets_file`'s content when it was last read.
    file_digest: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("header", &self.header)
            .field("scheme", &self.scheme)
            .field(
                "accepted",
                &format_args!("<{} secrets>", self.secret_count()),
            )
            .finish()
    }
}

/// Splits a list of secrets on commas and newlines, dropping blanks.
fn split_secrets(list: &str) -> impl Iterator<Item = SecretString> + '_ {
    list.split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|secret| !secret.is_empty())
        .map(|secret| SecretString::from(secret.to_owned()))
}

/// Reads the accepted secrets from the configured environment variable and file.
pub fn load_secrets(config: &AuthConfig) -> Result<Vec<SecretString>, AuthError> {
    let mut secrets: Vec<SecretString> = std::env::var(&config.secrets_env)
        .map(|list| split_secrets(&list).collect())
        .unwrap_or_default();
    if let Some(path) = &config.secrets_file {
        let list = std::fs::read_to_string(path).map_err(|source| AuthError::ReadSecretsFile {
            path: path.clone(),
            source,
        })?;
        secrets.extend(split_secrets(&list));
    }
    Ok(secrets)
}

fn digest(credential: &[u8]) -> [u8; 32] {
    Sha256::digest(credential).into()
}

/// The digests of the accepted secrets, if there are some and all are long enough.
fn accepted_digests(
    config: &AuthConfig,
    secrets: &[SecretString],
) -> Result<Vec<[u8; 32]>, AuthError> {
    if secrets.is_empty() {
        return Err(AuthError::NoSecrets {
            env: config.secrets_env.clone(),
        });
    }
    let weak = secrets
        .iter()
        .filter(|secret| secret.expose_secret().len() < MIN_SECRET_BYTES)
        .count();
    if weak > 0 {
        return Err(AuthError::WeakSecret { count: weak });
    }
    Ok(secrets
        .iter()
        .map(|secret| digest(secret.expose_secret().as_bytes()))
        .collect())
}

/// The digest of the secrets file's content, `None` if it cannot be read.
fn file_digest(config: &AuthConfig) -> Option<[u8; 32]> {
    let path = config.secrets_file.as_ref()?;
    std::fs::read(path).ok().map(|content| digest(&content))
}

impl Authenticator {
    pub fn new(config: &AuthConfig, secrets: &[SecretString]) -> Result<Self, AuthError> {
        let accepted = accepted_digests(config, secrets)?;
        let header =
            HeaderName::from_bytes(config.header.as_bytes()).map_err(|_| AuthError::HeaderName)?;
        Ok(Authenticator {
            header,
            scheme: config.scheme.trim().to_owned(),
            accepted: RwLock::new(accepted),
            config: config.clone(),
            file_digest: Mutex::new(file_digest(config)),
        })
    }

    /// Reads the secrets (environment and file) and builds the checker.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        Self::new(config, &load_secrets(config)?)
    }

    pub fn secret_count(&self) -> usize {
        self.accepted.read().expect("secrets lock").len()
    }

    /// Reads the secrets again when `auth.secrets_file` changed. Returns
    /// whether the accepted secrets were replaced; on an error the ones in
    /// use are kept.
    pub fn reload_if_changed(&self) -> Result<bool, AuthError> {
        let current = file_digest(&self.config);
        if *self.file_digest.lock().expect("digest lock") == current {
            return Ok(false);
        }
        *self.file_digest.lock().expect("digest lock") = current;
        let accepted = accepted_digests(&self.config, &load_secrets(&self.config)?)?;
        *self.accepted.write().expect("secrets lock") = accepted;
        Ok(true)
    }

    /// Watches `auth.secrets_file` until `stop`, reloading on a change.
    pub async fn watch_secrets_file(self: Arc<Self>, stop: CancellationToken) {
        if self.config.secrets_file.is_none() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(SECRETS_FILE_CHECK_INTERVAL) => {},
                () = stop.cancelled() => return,
            }
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(
                    accepted = self.secret_count(),
                    "auth secrets file changed: secrets reloaded"
                ),
                Ok(false) => {}
                Err(error) => tracing::error!(
                    %error,
                    accepted = self.secret_count(),
                    "auth secrets file changed but cannot be used; the secrets in use are kept"
                ),
            }
        }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let value = headers
            .get(&self.header)
            .ok_or_else(|| AuthError::Missing(self.header.to_string()))?
            .as_bytes();
        let credential = if self.scheme.is_empty() {
            value
        } else {
            // RFC 9110: the scheme is case-insensitive, followed by one or more spaces.
            let scheme_len = self.scheme.len();
            let has_scheme = value.len() > scheme_len
                && value[..scheme_len].eq_ignore_ascii_case(self.scheme.as_bytes())
                && value[scheme_len] == b' ';
            if !has_scheme {
                return Err(AuthError::Invalid(self.header.to_string()));
            }
            value[scheme_len..].trim_ascii_start()
        };
        let presented = digest(credential);
        let matched = self
            .accepted
            .read()
            .expect("secrets lock")
            .iter()
            .fold(subtle::Choice::from(0), |any, accepted| {
                any | accepted.ct_eq(&presented)
            });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(AuthError::Invalid(self.header.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("authorization", value.parse().unwrap());
        map
    }

    fn authenticator(secrets: &[&str]) -> Authenticator {
        let secrets: Vec<SecretString> = secrets
            .iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect();
        Authenticator::new(&AuthConfig::default(), &secrets).unwrap()
    }

    #[test]
    fn accepts_any_rotated_secret_with_the_scheme() {
        let auth = authenticator(&["old-secret-0123456", "new-secret-0123456"]);
        assert!(auth.check(&headers("Bearer old-secret-0123456")).is_ok());
        assert!(auth.check(&headers("bearer  new-secret-0123456")).is_ok());
        assert!(matches!(
            auth.check(&headers("Bearer other")),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.check(&headers("new-secret-0123456")),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.check(&HeaderMap::new()),
            Err(AuthError::Missing(_))
        ));
    }

    #[test]
    fn empty_scheme_compares_the_whole_value() {
        let config = AuthConfig {
            header: "x-api-key".into(),
            scheme: String::new(),
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(
            &config,
            &[SecretString::from("key-0123456789abcdef".to_owned())],
        )
        .unwrap();
        let mut map = HeaderMap::new();
        map.insert("x-api-key", "key-0123456789abcdef".parse().unwrap());
        assert!(auth.check(&map).is_ok());
    }

    #[test]
    fn refuses_to_run_without_secrets_and_never_prints_them() {
        assert!(matches!(
            Authenticator::new(&AuthConfig::default(), &[]),
            Err(AuthError::NoSecrets { .. })
        ));
        let shown = format!("{:?}", authenticator(&["s3cr3t-s3cr3t-s3cr3t"]));
        assert!(!shown.contains("s3cr3t"));
        assert_eq!(split_secrets(" a, b\nc ,\n").count(), 3);
    }

    #[test]
    fn refuses_secrets_shorter_than_sixteen_bytes() {
        let secrets = [
            SecretString::from("long-enough-secret".to_owned()),
            SecretString::from("short".to_owned()),
        ];
        assert!(matches!(
            Authenticator::new(&AuthConfig::default(), &secrets),
            Err(AuthError::WeakSecret { count: 1 })
        ));
    }

    /// Rotation through the secrets file needs no restart; a file that
    /// turns weak or empty keeps the secrets in use.
    #[test]
    fn a_changed_secrets_file_is_reloaded_and_a_bad_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets");
        std::fs::write(&file, "first-secret-0123456\n").unwrap();
        let config = AuthConfig {
            secrets_env: "SUPERFONE_TEST_NO_SUCH_VARIABLE".into(),
            secrets_file: Some(file.clone()),
            ..AuthConfig::default()
        };
        let auth = Authenticator::from_config(&config).unwrap();
        assert!(!auth.reload_if_changed().unwrap(), "unchanged");
        std::fs::write(&file, "first-secret-0123456\nsecond-secret-012345\n").unwrap();
        assert!(auth.reload_if_changed().unwrap());
        assert!(auth.check(&headers("Bearer second-secret-012345")).is_ok());
        std::fs::write(&file, "second-secret-012345\n").unwrap();
        assert!(auth.reload_if_changed().unwrap());
        assert!(auth.check(&headers("Bearer first-secret-0123456")).is_err());
        std::fs::write(&file, "short\n").unwrap();
        assert!(matches!(
            auth.reload_if_changed(),
            Err(AuthError::WeakSecret { .. })
        ));
        assert!(
            auth.check(&headers("Bearer second-secret-012345")).is_ok(),
            "kept"
        );
    }
}
