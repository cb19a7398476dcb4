//! The auth header check. Superfone does not sign bodies; the only proof of
//! origin is a static header configured in its dashboard
//! (`Authorization: Bearer <secret>`), so every request must carry one of the
//! accepted secrets.
//!
//! Several secrets may be accepted at once, so one can be rotated without
//! downtime. Only SHA-256 digests of the secrets are kept, and the presented
//! credential is compared with every digest in constant time, so neither its
//! content nor its length (nor which secret matched) leaks through timing.

use crate::config::AuthConfig;
use hyper::header::{HeaderMap, HeaderName};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no auth secret configured: set the {env} environment variable or auth.secrets_file")]
    NoSecrets { env: String },
    #[error("cannot read auth.secrets_file {path}: {source}")]
    ReadSecretsFile {
        path: PathBuf,
        source: std::io::Error,
    },
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
    accepted: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("header", &self.header)
            .field("scheme", &self.scheme)
            .field(
                "accepted",
                &format_args!("<{} secrets>", self.accepted.len()),
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

impl Authenticator {
    pub fn new(config: &AuthConfig, secrets: &[SecretString]) -> Result<Self, AuthError> {
        if secrets.is_empty() {
            return Err(AuthError::NoSecrets {
                env: config.secrets_env.clone(),
            });
        }
        let header =
            HeaderName::from_bytes(config.header.as_bytes()).map_err(|_| AuthError::HeaderName)?;
        Ok(Authenticator {
            header,
            scheme: config.scheme.trim().to_owned(),
            accepted: secrets
                .iter()
                .map(|secret| digest(secret.expose_secret().as_bytes()))
                .collect(),
        })
    }

    /// Reads the secrets (environment and file) and builds the checker.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        Self::new(config, &load_secrets(config)?)
    }

    pub fn secret_count(&self) -> usize {
        self.accepted.len()
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
        let auth = authenticator(&["old-secret", "new-secret"]);
        assert!(auth.check(&headers("Bearer old-secret")).is_ok());
        assert!(auth.check(&headers("bearer  new-secret")).is_ok());
        assert!(matches!(
            auth.check(&headers("Bearer other")),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.check(&headers("new-secret")),
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
        let auth = Authenticator::new(&config, &[SecretString::from("k1".to_owned())]).unwrap();
        let mut map = HeaderMap::new();
        map.insert("x-api-key", "k1".parse().unwrap());
        assert!(auth.check(&map).is_ok());
    }

    #[test]
    fn refuses_to_run_without_secrets_and_never_prints_them() {
        assert!(matches!(
            Authenticator::new(&AuthConfig::default(), &[]),
            Err(AuthError::NoSecrets { .. })
        ));
        let shown = format!("{:?}", authenticator(&["s3cr3t"]));
        assert!(!shown.contains("s3cr3t"));
        assert_eq!(split_secrets(" a, b\nc ,\n").count(), 3);
    }
}
