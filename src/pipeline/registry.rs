//! Registration of the event schemas in a Confluent-compatible schema
//! registry (through `schema_registry_converter`), and the resulting id per
//! event, which the hot path uses without further registry calls.
//!
//! The registry is not needed to accept an event: records are converted
//! with the local schema, and one whose schema has no id yet (the registry
//! was down since start-up) is spooled with id 0 in its wire header and the
//! schema's fingerprint in `superfone-schema-pending`. `SchemaIds::stamp`
//! writes the id in just before the record is sent. Registration goes on in
//! the background until every schema has its id, and the last known ids are
//! kept in the spool directory, so a restart during a registry outage still
//! publishes straight away.

use crate::config::{RegistryConfig, SubjectStrategy, TopicsConfig};
use crate::pipeline::convert::ABSENT_FIELD;
use crate::pipeline::schema::EventSchema;
use crate::vocabulary::headers::{SCHEMA_ID_HEADER, SCHEMA_PENDING_HEADER};
use crate::vocabulary::EventKind;
use crate::vocabulary::Record;
use schema_registry_converter::async_impl::schema_registry::{
    perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SrCall, SuppliedSchema,
};
use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The last known ids, in the spool directory.
const IDS_FILE: &str = "schema_ids.json";
const MAX_REGISTRATION_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry settings: {0}")]
    Settings(String),
    #[error("schema registry rejected the schema for subject {subject}: {message}")]
    Rejected { subject: String, message: String },
    #[error("subject {subject} has no matching schema in the registry and auto-registration is off: {message}")]
    Missing { subject: String, message: String },
    #[error("schema registry call for subject {subject} failed: {cause}")]
    Unavailable { subject: String, cause: String },
    #[error("schema registry {url} unreachable: {cause}")]
    Unreachable { url: String, cause: String },
}

impl RegistryError {
    /// The registry answered, and said no: no retry of the same call helps.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RegistryError::Rejected { .. } | RegistryError::Missing { .. }
        )
    }
}

pub fn subject_for(strategy: SubjectStrategy, topic: &str, schema: &EventSchema) -> String {
    subject_name(strategy, topic, &schema.full_name)
}

/// The subject of the record type `full_name` on `topic`, named as
/// Confluent's serializers name it under each strategy, so their
/// deserializers and `use.latest.version` find the same subject.
pub fn subject_name(strategy: SubjectStrategy, topic: &str, full_name: &str) -> String {
    match strategy {
        SubjectStrategy::Topic => format!("{topic}-value"),
        SubjectStrategy::Record => full_name.to_owned(),
        SubjectStrategy::TopicRecord => format!("{topic}-{full_name}"),
    }
}

/// Client settings for the configured registry (URL, timeout, basic auth).
pub fn settings(config: &RegistryConfig) -> Result<SrSettings, RegistryError> {
    let mut builder = SrSettings::new_builder(config.url.clone());
    builder.set_timeout(config.timeout_ms);
    if let Some(user) = &config.username {
        let password = std::env::var(&config.password_env).ok();
        builder.set_basic_authorization(user, password.as_deref());
    }
    builder
        .build()
        .map_err(|error| RegistryError::Settings(error.error))
}

/// Confluent error codes extend the HTTP status (40401, 42201); some registries send the bare status.
fn http_status_of(error_code: u32) -> u32 {
    if error_code >= 10_000 {
        error_code / 100
    } else {
        error_code
    }
}

/// The registry's own `{error_code, message}`, when the call got that far.
fn registry_message(error: &SRCError) -> Option<&RawError> {
    error.source()?.downcast_ref::<RawError>()
}

/// Registers (or, with auto-registration off, looks up) one schema that
/// is not an event's: its id under `subject`.
pub async fn register_one(
    config: &RegistryConfig,
    subject: &str,
    full_name: &str,
    text: &str,
) -> Result<u32, RegistryError> {
    let settings = settings(config)?;
    if config.auto_register {
        register(&settings, subject, full_name, text).await
    } else {
        look_up(&settings, subject, text).await
    }
}

async fn register(
    settings: &SrSettings,
    subject: &str,
    full_name: &str,
    text: &str,
) -> Result<u32, RegistryError> {
    let supplied = SuppliedSchema::new(
        Some(full_name.to_owned()),
        SchemaType::Avro,
        text.to_owned(),
    );
    match post_schema(settings, subject.to_owned(), supplied).await {
        Ok(registered) => Ok(registered.id),
        // 409: incompatible with an earlier version; 422: invalid schema.
        Err(error) => Err(match registry_message(&error) {
            Some(raw) if matches!(http_status_of(raw.error_code), 409 | 422) => {
                RegistryError::Rejected {
                    subject: subject.to_owned(),
                    message: raw.message.clone(),
                }
            }
            _ => RegistryError::Unavailable {
                subject: subject.to_owned(),
                cause: error.to_string(),
            },
        }),
    }
}

async fn look_up(settings: &SrSettings, subject: &str, text: &str) -> Result<u32, RegistryError> {
    let body = serde_json::json!({ "schema": text, "schemaType": "AVRO" }).to_string();
    match perform_sr_call(settings, SrCall::PostForVersion(subject, &body)).await {
        Ok(raw) => raw.id.ok_or_else(|| RegistryError::Unavailable {
            subject: subject.to_owned(),
            cause: "lookup response has no id".into(),
        }),
        // 40401 subject not found, 40403 schema not found under it.
        Err(error) => Err(match registry_message(&error) {
            Some(raw) if http_status_of(raw.error_code) == 404 => RegistryError::Missing {
                subject: subject.to_owned(),
                message: raw.message.clone(),
            },
            _ => RegistryError::Unavailable {
                subject: subject.to_owned(),
                cause: error.to_string(),
            },
        }),
    }
}

/// One event schema and, once known, the registry's id for it.
#[derive(Debug)]
pub struct Subject {
    pub kind: EventKind,
    /// The registry subject, e.g. `superfone.all_calls-value`.
    pub name: String,
    /// Identifies the local schema a pending record was encoded with.
    pub fingerprint: String,
    schema: EventSchema,
    /// 0 until known (Confluent registries number schemas from 1).
    id: AtomicU32,
    /// The registry gave the id in this run: an id kept from the last run
    /// is used until then, and checked as soon as the registry answers (a
    /// rebuilt registry numbers schemas anew).
    confirmed: AtomicBool,
    /// Why the registry refused the schema, when it did.
    refused: Mutex<Option<String>>,
}

impl Subject {
    pub fn id(&self) -> Option<u32> {
        Some(self.id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    /// The id to frame a record with (0 while unknown) and the header that
    /// names it, or the fingerprint that `stamp` will replace.
    pub fn schema_header(&self) -> (u32, (String, String)) {
        match self.id() {
            Some(id) => (id, (SCHEMA_ID_HEADER.to_owned(), id.to_string())),
            None => self.pending_header(),
        }
    }

    /// The header `stamp` replaces with the id it has when the record is
    /// sent (framed with 0 until then).
    pub fn pending_header(&self) -> (u32, (String, String)) {
        (
            0,
            (SCHEMA_PENDING_HEADER.to_owned(), self.fingerprint.clone()),
        )
    }

    fn refusal(&self) -> Option<String> {
        self.refused.lock().expect("subject lock").clone()
    }
}

/// Why a record cannot be stamped with its registry id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unstamped {
    /// Not yet: the registry has not been reached for this subject.
    Waiting { subject: String },
    /// Never as it is: the registry refused the schema, or the record was
    /// encoded with a schema this bridge no longer has.
    Refused { reason: String },
}

/// Writes `id` into a record waiting for one: its wire header and, in
/// place of the pending header, `superfone-schema-id`.
pub fn stamp_with(record: &mut Record, id: u32) -> Result<(), Unstamped> {
    let Some(position) = record
        .headers
        .iter()
        .position(|(name, _)| name == SCHEMA_PENDING_HEADER)
    else {
        return Ok(());
    };
    write_id(record, position, id)
}

fn write_id(record: &mut Record, position: usize, id: u32) -> Result<(), Unstamped> {
    let Some(wire_id) = record.payload.get_mut(1..5) else {
        return Err(Unstamped::Refused {
            reason: "value too short for a Confluent wire header".into(),
        });
    };
    wire_id.copy_from_slice(&id.to_be_bytes());
    record.headers[position] = (SCHEMA_ID_HEADER.to_owned(), id.to_string());
    Ok(())
}

/// An event schema's text as the bridge made it before `absent_fields`
/// was added (the same text without that field: it was appended last and
/// names no shared type); `None` for a schema without it.
fn without_absent_fields(text: &str) -> Option<String> {
    let mut json: serde_json::Value = serde_json::from_str(text).ok()?;
    let fields = json.get_mut("fields")?.as_array_mut()?;
    let before = fields.len();
    fields.retain(|field| field["name"] != ABSENT_FIELD);
    (fields.len() < before).then(|| json.to_string())
}

/// The fingerprint of a schema text: 16 hex digits of its SHA-256.
fn fingerprint(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The last known ids as kept on disk.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct KnownIds {
    registry: String,
    /// subject -> (fingerprint, id)
    subjects: std::collections::BTreeMap<String, (String, u32)>,
}

/// The registry ids of the event schemas, as far as they are known.
pub struct SchemaIds {
    subjects: Vec<Arc<Subject>>,
    config: RegistryConfig,
    /// The file keeping the last known ids; `None`: kept nowhere.
    known_ids: Option<PathBuf>,
}

impl SchemaIds {
    /// One subject per schema, in the order of `schemas`, with the ids kept
    /// in `keep_dir` (if any) for the same registry and schema text.
    pub fn new(
        config: &RegistryConfig,
        topics: &TopicsConfig,
        schemas: &[EventSchema],
        keep_dir: Option<&Path>,
    ) -> SchemaIds {
        let known_ids = keep_dir.map(|dir| dir.join(IDS_FILE));
        let known = known_ids
            .as_deref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|data| serde_json::from_slice::<KnownIds>(&data).ok())
            .filter(|known| known.registry == config.url)
            .unwrap_or_default();
        let subjects = schemas
            .iter()
            .map(|schema| {
                let name = subject_for(
                    config.subject_strategy,
                    &topics.topic_for(schema.kind),
                    schema,
                );
                let fingerprint = fingerprint(&schema.text);
                let id = known
                    .subjects
                    .get(&name)
                    .filter(|(known, _)| *known == fingerprint)
                    .map_or(0, |(_, id)| *id);
                Arc::new(Subject {
                    kind: schema.kind,
                    name,
                    fingerprint,
                    schema: schema.clone(),
                    id: AtomicU32::new(id),
                    confirmed: AtomicBool::new(false),
                    refused: Mutex::new(None),
                })
            })
            .collect();
        SchemaIds {
            subjects,
            config: config.clone(),
            known_ids,
        }
    }

    pub fn subjects(&self) -> &[Arc<Subject>] {
        &self.subjects
    }

    /// Subjects without an id yet.
    pub fn pending(&self) -> usize {
        self.subjects.iter().filter(|s| s.id().is_none()).count()
    }

    /// Subjects whose id the registry has not given in this run.
    fn unconfirmed(&self) -> usize {
        self.subjects
            .iter()
            .filter(|s| !s.confirmed.load(Ordering::Relaxed))
            .count()
    }

    /// Registers (or, with auto-registration off, looks up) every schema
    /// whose id the registry has not given in this run. Stops at the first
    /// call that cannot reach the registry; a refusal is recorded on its
    /// subject and returned after the others.
    pub async fn register_pending(&self) -> Result<(), RegistryError> {
        let settings = settings(&self.config)?;
        let mut refusal = None;
        let unconfirmed = self
            .subjects
            .iter()
            .filter(|s| !s.confirmed.load(Ordering::Relaxed));
        for subject in unconfirmed {
            let result = if self.config.auto_register {
                register(
                    &settings,
                    &subject.name,
                    &subject.schema.full_name,
                    &subject.schema.text,
                )
                .await
            } else {
                look_up(&settings, &subject.name, &subject.schema.text).await
            };
            match result {
                Ok(id) => {
                    tracing::info!(event = %subject.kind, subject = %subject.name, schema_id = id, "schema ready");
                    let kept = subject.id.swap(id, Ordering::Relaxed);
                    if kept != 0 && kept != id {
                        tracing::warn!(
                            subject = %subject.name, kept, schema_id = id,
                            "the registry gives another id than the last run did (a rebuilt registry?); \
                             records sent meanwhile carry the old one"
                        );
                    }
                    subject.confirmed.store(true, Ordering::Relaxed);
                    *subject.refused.lock().expect("subject lock") = None;
                    self.keep_known_ids();
                }
                Err(error) => {
                    metrics::counter!(crate::observe::metrics::REGISTRY_ERRORS).increment(1);
                    if !error.is_refusal() {
                        return Err(error);
                    }
                    *subject.refused.lock().expect("subject lock") = Some(error.to_string());
                    refusal.get_or_insert(error);
                }
            }
        }
        refusal.map_or(Ok(()), Err)
    }

    /// Retries registration with backoff until the registry has given
    /// every schema's id in this run.
    pub async fn register_until_done(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        while self.unconfirmed() > 0 {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {},
                () = stop.cancelled() => return,
            }
            match self.register_pending().await {
                Ok(()) => tracing::info!("schema registry reached: every schema has its id"),
                Err(error) if error.is_refusal() => {
                    tracing::error!(%error, "schema registry refused a schema; its events are parked until it is fixed");
                }
                Err(error) => tracing::debug!(%error, "schema registry still unreachable"),
            }
            backoff = (backoff * 2).min(MAX_REGISTRATION_BACKOFF);
        }
    }

    /// Writes the registry id into a record spooled before its schema had
    /// one: the wire header's id and the `superfone-schema-id` header.
    /// Records that carry their id already are left as they are.
    pub fn stamp(&self, record: &mut Record) -> Result<(), Unstamped> {
        let Some(position) = record
            .headers
            .iter()
            .position(|(name, _)| name == SCHEMA_PENDING_HEADER)
        else {
            return Ok(());
        };
        let fingerprint = &record.headers[position].1;
        let Some(subject) = self.subjects.iter().find(|s| s.fingerprint == *fingerprint) else {
            return Err(Unstamped::Refused {
                reason: format!(
                    "encoded with a schema this bridge no longer has (fingerprint {fingerprint})"
                ),
            });
        };
        if let Some(reason) = subject.refusal() {
            return Err(Unstamped::Refused { reason });
        }
        let Some(id) = subject.id() else {
            return Err(Unstamped::Waiting {
                subject: subject.name.clone(),
            });
        };
        write_id(record, position, id)
    }

    /// The id for a record that the version of this bridge before
    /// `absent_fields` spooled while its schema had no id: `stamp` refuses
    /// it (its fingerprint is of that earlier text), so it was parked.
    /// Registers (or looks up) the earlier text under the event's subject,
    /// a version the new one reads (BACKWARD), so the record can go out byte
    /// for byte as it was encoded (`stamp_with`). `None`: the record is not
    /// one of those.
    pub async fn earlier_version_id(&self, record: &Record) -> Result<Option<u32>, RegistryError> {
        let Some(pending) = record.header(SCHEMA_PENDING_HEADER) else {
            return Ok(None);
        };
        let earlier = self.subjects.iter().find_map(|subject| {
            let text = without_absent_fields(&subject.schema.text)?;
            (fingerprint(&text) == pending).then_some((subject, text))
        });
        let Some((subject, text)) = earlier else {
            return Ok(None);
        };
        let id = register_one(
            &self.config,
            &subject.name,
            &subject.schema.full_name,
            &text,
        )
        .await?;
        Ok(Some(id))
    }

    /// Each subject's id (or why it has none), for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let subjects: Vec<serde_json::Value> = self
            .subjects
            .iter()
            .map(|subject| {
                serde_json::json!({
                    "event": subject.kind.as_str(),
                    "subject": subject.name,
                    "schema_id": subject.id(),
                    "confirmed": subject.confirmed.load(Ordering::Relaxed),
                    "refused": subject.refusal(),
                })
            })
            .collect();
        serde_json::json!({ "url": self.config.url, "pending": self.pending(), "subjects": subjects })
    }

    /// Keeps the known ids for the next start (temporary file, fsync, rename).
    fn keep_known_ids(&self) {
        let Some(path) = &self.known_ids else {
            return;
        };
        let known = KnownIds {
            registry: self.config.url.clone(),
            subjects: self
                .subjects
                .iter()
                .filter_map(|s| Some((s.name.clone(), (s.fingerprint.clone(), s.id()?))))
                .collect(),
        };
        let temporary = path.with_extension("json.tmp");
        let written = serde_json::to_vec(&known)
            .map_err(std::io::Error::other)
            .and_then(|data| {
                let mut file = std::fs::File::create(&temporary)?;
                std::io::Write::write_all(&mut file, &data)?;
                file.sync_all()?;
                std::fs::rename(&temporary, path)
            });
        if let Err(error) = written {
            tracing::warn!(%error, path = %path.display(), "cannot keep the schema ids for the next start");
        }
    }
}

/// How a local schema stands in the registry (`check-config --online`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// This exact schema is registered under the subject.
    Registered { id: u32, version: u32 },
    /// The subject does not exist yet.
    NewSubject,
    /// Not registered yet; the registry accepts it as the next version.
    Compatible,
    /// The registry would refuse it, for these reasons.
    Incompatible(Vec<String>),
}

/// Read-only calls a person's check makes, beside the hot path's client.
pub struct Probe {
    client: reqwest::Client,
    base: reqwest::Url,
    username: Option<String>,
    password: Option<String>,
}

impl Probe {
    pub fn new(config: &RegistryConfig) -> Result<Probe, RegistryError> {
        let base = reqwest::Url::parse(config.url.trim_end_matches('/'))
            .map_err(|error| RegistryError::Settings(format!("registry.url: {error}")))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout_ms)
            .build()
            .map_err(|error| RegistryError::Settings(error.to_string()))?;
        Ok(Probe {
            client,
            base,
            username: config.username.clone(),
            password: std::env::var(&config.password_env).ok(),
        })
    }

    /// The registry's global compatibility level: proves it answers.
    pub async fn compatibility_level(&self) -> Result<String, RegistryError> {
        let (status, body) = self
            .call(reqwest::Method::GET, &["config"], None, None)
            .await?;
        match body
            .get("compatibilityLevel")
            .and_then(|level| level.as_str())
        {
            Some(level) if status.is_success() => Ok(level.to_owned()),
            _ => Err(unexpected("(none: GET /config)", status, &body)),
        }
    }

    /// Whether `schema` is registered under `subject`, or would be accepted.
    pub async fn standing(
        &self,
        subject: &str,
        schema: &EventSchema,
    ) -> Result<Standing, RegistryError> {
        let request = serde_json::json!({ "schema": schema.text, "schemaType": "AVRO" });
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &["subjects", subject],
                None,
                Some(&request),
            )
            .await?;
        let number = |field: &str| body.get(field).and_then(|v| v.as_u64()).map(|v| v as u32);
        match (status.as_u16(), number("error_code")) {
            (200, _) => {
                return Ok(Standing::Registered {
                    id: number("id").unwrap_or_default(),
                    version: number("version").unwrap_or_default(),
                })
            }
            (404, Some(40401)) => return Ok(Standing::NewSubject),
            (404, _) => {}
            _ => return Err(unexpected(subject, status, &body)),
        }
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &["compatibility", "subjects", subject, "versions", "latest"],
                // The registry's reasons, not only a yes or no.
                Some("verbose=true"),
                Some(&request),
            )
            .await?;
        match body.get("is_compatible").and_then(|v| v.as_bool()) {
            Some(true) => Ok(Standing::Compatible),
            Some(false) => Ok(Standing::Incompatible(
                body.get("messages")
                    .and_then(|messages| messages.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|message| message.as_str().map(str::to_owned))
                    .collect(),
            )),
            None => Err(unexpected(subject, status, &body)),
        }
    }

    /// One call under the registry's base URL (path segments escaped).
    async fn call(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(reqwest::StatusCode, serde_json::Value), RegistryError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| RegistryError::Settings("registry.url cannot be a base".into()))?
            .pop_if_empty()
            .extend(segments);
        url.set_query(query);
        let mut request = self
            .client
            .request(method, url)
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_deref());
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(body.to_string());
        }
        let unreachable = |error: reqwest::Error| RegistryError::Unreachable {
            url: self.base.to_string(),
            cause: error_chain(&error),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }
}

/// An answer the checks cannot read: the status and the registry's message.
fn unexpected(
    subject: &str,
    status: reqwest::StatusCode,
    body: &serde_json::Value,
) -> RegistryError {
    RegistryError::Unavailable {
        subject: subject.to_owned(),
        cause: format!(
            "HTTP {status}{}",
            body.get("message")
                .and_then(|message| message.as_str())
                .map(|message| format!(": {message}"))
                .unwrap_or_default()
        ),
    }
}

/// An error and its causes on one line ("error sending request: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names Confluent's `TopicNameStrategy`, `RecordNameStrategy` and
    /// `TopicRecordNameStrategy` give (io.confluent.kafka.serializers.subject).
    #[test]
    fn subjects_are_named_as_confluents_strategies_name_them() {
        let name = "com.superfone.events.AllCalls";
        let topic = "superfone.events";
        assert_eq!(
            subject_name(SubjectStrategy::Topic, topic, name),
            "superfone.events-value"
        );
        assert_eq!(subject_name(SubjectStrategy::Record, topic, name), name);
        assert_eq!(
            subject_name(SubjectStrategy::TopicRecord, topic, name),
            "superfone.events-com.superfone.events.AllCalls"
        );
    }
}
