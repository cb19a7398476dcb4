//! Start-up registration of the event schemas in a Confluent-compatible schema
//! registry (through `schema_registry_converter`), and the resulting id per
//! event, which the hot path uses without further registry calls.

use crate::config::{RegistryConfig, SubjectStrategy, TopicsConfig};
use crate::schema::EventSchema;
use schema_registry_converter::async_impl::schema_registry::{
    perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SrCall, SuppliedSchema,
};
use std::error::Error as _;
use std::time::Duration;

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
}

/// An event schema as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSubject {
    pub subject: String,
    pub id: u32,
}

pub fn subject_for(strategy: SubjectStrategy, topic: &str, schema: &EventSchema) -> String {
    match strategy {
        SubjectStrategy::Topic => format!("{topic}-value"),
        SubjectStrategy::Record => schema.full_name.clone(),
    }
}

/// Client settings for the configured registry (URL, timeout, basic auth).
pub fn settings(config: &RegistryConfig) -> Result<SrSettings, RegistryError> {
    let mut builder = SrSettings::new_builder(config.url.clone());
    builder.set_timeout(Duration::from_millis(config.timeout_ms));
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

/// Registers (or, with auto-registration off, looks up) each event schema under
/// its subject; returns the ids in the order of `schemas`.
pub async fn register_all(
    config: &RegistryConfig,
    topics: &TopicsConfig,
    schemas: &[EventSchema],
) -> Result<Vec<RegisteredSubject>, RegistryError> {
    let settings = settings(config)?;
    let mut registered = Vec::with_capacity(schemas.len());
    for schema in schemas {
        let subject = subject_for(
            config.subject_strategy,
            &topics.topic_for(schema.kind),
            schema,
        );
        let id = if config.auto_register {
            register(&settings, &subject, schema).await
        } else {
            look_up(&settings, &subject, schema).await
        }
        .inspect_err(|_| metrics::counter!(crate::metrics::REGISTRY_ERRORS).increment(1))?;
        tracing::info!(event = %schema.kind, subject = %subject, schema_id = id, "schema ready");
        registered.push(RegisteredSubject { subject, id });
    }
    Ok(registered)
}

async fn register(
    settings: &SrSettings,
    subject: &str,
    schema: &EventSchema,
) -> Result<u32, RegistryError> {
    let supplied = SuppliedSchema::new(
        Some(schema.full_name.clone()),
        SchemaType::Avro,
        schema.text.clone(),
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

async fn look_up(
    settings: &SrSettings,
    subject: &str,
    schema: &EventSchema,
) -> Result<u32, RegistryError> {
    let body = serde_json::json!({ "schema": schema.text, "schemaType": "AVRO" }).to_string();
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
