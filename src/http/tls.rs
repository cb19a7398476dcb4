//! HTTPS on the ingest listener: rustls (no OpenSSL), HTTP/2 and HTTP/1.1
//! offered through ALPN, optional client certificates (mutual TLS).
//!
//! The certificate, key and client CA files are re-read every
//! `reload_interval_ms` and, when their contents changed (cert-manager and
//! certbot renewals, a Secret's symlink swap), a new rustls config is built:
//! new connections get it, open ones keep the session they have, nothing
//! restarts. Files that cannot be used at start-up stop the start; on reload
//! they are logged at ERROR and the config in use is kept.

use crate::config::TlsConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not usable PEM: {source}")]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("client CA {path} cannot verify clients: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("{path}: a certificate cannot be parsed: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} cannot be used together: {source}")]
    Rustls {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The files' contents as last loaded: a reload compares them, so a
/// renewal is seen whatever it does to timestamps.
#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The TLS side of the ingest listener.
pub struct Tls {
    settings: TlsConfig,
    current: RwLock<(Contents, TlsAcceptor)>,
}

impl Tls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(settings: &TlsConfig) -> Result<Tls, TlsError> {
        let contents = read_contents(settings)?;
        let acceptor = acceptor(settings, &contents)?;
        show_expiry(leaf_expiry(settings, &contents)?);
        Ok(Tls {
            settings: settings.clone(),
            current: RwLock::new((contents, acceptor)),
        })
    }

    /// The acceptor for a new connection: the certificate loaded last.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().expect("tls lock").1.clone()
    }

    /// Re-reads the files; true when they changed and the new ones are in
    /// use. On error the config in use is kept.
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let contents = read_contents(&self.settings)?;
        if self.current.read().expect("tls lock").0 == contents {
            return Ok(false);
        }
        let acceptor = acceptor(&self.settings, &contents)?;
        let expiry = leaf_expiry(&self.settings, &contents)?;
        *self.current.write().expect("tls lock") = (contents, acceptor);
        show_expiry(expiry);
        Ok(true)
    }

    /// Checks the files for a renewal every `reload_interval_ms` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let interval = self
            .settings
            .reload_interval_ms
            .max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {},
                () = stop.cancelled() => return,
            }
            let tls = Arc::clone(&self);
            let reloaded = tokio::task::spawn_blocking(move || tls.reload_if_changed())
                .await
                .expect("tls reload task panicked");
            match reloaded {
                Ok(true) => tracing::info!(
                    cert_file = %self.settings.cert_file.display(),
                    "TLS certificate reloaded: new connections use it"
                ),
                Ok(false) => {}
                Err(error) => {
                    metrics::counter!(crate::observe::metrics::TLS_RELOAD_FAILURES).increment(1);
                    tracing::error!(
                        %error,
                        "TLS files changed but cannot be used; the certificate in use is kept"
                    );
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_contents(settings: &TlsConfig) -> Result<Contents, TlsError> {
    Ok(Contents {
        cert: read(&settings.cert_file)?,
        key: read(&settings.key_file)?,
        client_ca: settings.client_ca_file.as_deref().map(read).transpose()?,
    })
}

/// When one certificate of a PEM file may be used.
#[derive(Debug, Clone)]
pub struct Validity {
    pub subject: String,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

/// The validity of every certificate in a PEM file, in file order (the
/// leaf first in a chain): an expired intermediate breaks the chain too.
pub fn validity(path: &Path) -> Result<Vec<Validity>, TlsError> {
    certificates(path, &read(path)?)?
        .iter()
        .map(|der| parse_validity(path, der))
        .collect()
}

fn parse_validity(path: &Path, der: &CertificateDer<'_>) -> Result<Validity, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|error| TlsError::Certificate {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    Ok(Validity {
        subject: cert.subject().to_string(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// When the served certificate expires: the leaf's (the file's first)
/// notAfter. An intermediate expiring first is `check-config`'s to report.
fn leaf_expiry(settings: &TlsConfig, contents: &Contents) -> Result<OffsetDateTime, TlsError> {
    let path = &settings.cert_file;
    let certs = certificates(path, &contents.cert)?;
    Ok(parse_validity(path, &certs[0])?.not_after)
}

/// Exports the served certificate's expiry, so an alert can warn days
/// before clients start refusing it.
fn show_expiry(not_after: OffsetDateTime) {
    metrics::gauge!(crate::observe::metrics::TLS_CERTIFICATE_EXPIRY)
        .set(not_after.unix_timestamp() as f64);
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A rustls server config from the files' contents: TLS 1.3 and 1.2,
/// ALPN h2 then http/1.1, client certificates required when a client CA
/// is set.
fn acceptor(settings: &TlsConfig, contents: &Contents) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&settings.cert_file, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|source| TlsError::Pem {
        path: settings.key_file.clone(),
        source,
    })?;
    let unusable = |source| TlsError::Rustls {
        cert: settings.cert_file.clone(),
        key: settings.key_file.clone(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(unusable)?;
    let builder = match (&settings.client_ca_file, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            let client_ca = |reason: String| TlsError::ClientCa {
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, pem)? {
                roots
                    .add(cert)
                    .map_err(|error| client_ca(error.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| client_ca(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(unusable)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
