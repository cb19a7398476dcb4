//! In-memory subjects, versions and schema ids, with Confluent's rules:
//! one global id per distinct schema, re-registering an existing schema under
//! a subject returns its id without a new version, and a new version must pass
//! the subject's compatibility level, checked by apache-avro.

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Compatibility {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

/// Confluent's error codes: the HTTP status followed by two digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema not found")]
    SchemaNotFound,
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error("The specified version '{0}' is not a valid version id.")]
    InvalidVersion(String),
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{details}]")]
    Incompatible { subject: String, details: String },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
}

impl StoreError {
    pub(crate) fn error_code(&self) -> u32 {
        match self {
            StoreError::SubjectNotFound(_) => 40401,
            StoreError::VersionNotFound(_) => 40402,
            StoreError::SchemaNotFound => 40403,
            StoreError::SubjectConfigNotFound(_) => 40408,
            StoreError::Incompatible { .. } => 409,
            StoreError::InvalidSchema(_) => 42201,
            StoreError::InvalidVersion(_) => 42202,
        }
    }

    pub(crate) fn http_status(&self) -> u16 {
        match self.error_code() {
            code if code >= 10_000 => (code / 100) as u16,
            code => code as u16,
        }
    }
}

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubjectVersion {
    pub(crate) subject: String,
    pub(crate) version: u32,
    pub(crate) id: u32,
    pub(crate) schema: String,
}

#[derive(Debug)]
pub(crate) struct Store {
    /// Schema texts; id = index + 1.
    schemas: Vec<String>,
    ids_by_text: HashMap<String, u32>,
    /// Subject -> schema ids, version = index + 1.
    subjects: BTreeMap<String, Vec<u32>>,
    global: Compatibility,
    per_subject: HashMap<String, Compatibility>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            schemas: Vec::new(),
            ids_by_text: HashMap::new(),
            subjects: BTreeMap::new(),
            global: Compatibility::Backward,
            per_subject: HashMap::new(),
        }
    }
}

/// Parses and normalises a schema text (compact JSON), or says why it is invalid.
fn parse(text: &str) -> Result<(String, Schema), StoreError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|error| StoreError::InvalidSchema(error.to_string()))?;
    let schema =
        Schema::parse(&json).map_err(|error| StoreError::InvalidSchema(error.to_string()))?;
    Ok((json.to_string(), schema))
}

fn compatible(level: Compatibility, existing: &Schema, candidate: &Schema) -> Result<(), String> {
    let backward = || SchemaCompatibility::can_read(existing, candidate).map(|_| ());
    let forward = || SchemaCompatibility::can_read(candidate, existing).map(|_| ());
    let result = match level {
        Compatibility::None => Ok(()),
        Compatibility::Backward | Compatibility::BackwardTransitive => backward(),
        Compatibility::Forward | Compatibility::ForwardTransitive => forward(),
        Compatibility::Full | Compatibility::FullTransitive => backward().and_then(|()| forward()),
    };
    result.map_err(|error| error.to_string())
}

impl Store {
    pub(crate) fn subjects(&self) -> Vec<String> {
        self.subjects.keys().cloned().collect()
    }

    fn ids(&self, subject: &str) -> Result<&Vec<u32>, StoreError> {
        self.subjects
            .get(subject)
            .ok_or_else(|| StoreError::SubjectNotFound(subject.to_owned()))
    }

    pub(crate) fn versions(&self, subject: &str) -> Result<Vec<u32>, StoreError> {
        Ok((1..=self.ids(subject)?.len() as u32).collect())
    }

    pub(crate) fn schema_by_id(&self, id: u32) -> Result<&str, StoreError> {
        id.checked_sub(1)
            .and_then(|index| self.schemas.get(index as usize))
            .map(String::as_str)
            .ok_or(StoreError::SchemaNotFound)
    }

    /// `version` is a number, `latest` or `-1`.
    pub(crate) fn version(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<SubjectVersion, StoreError> {
        let ids = self.ids(subject)?;
        let number = match version {
            "latest" | "-1" => ids.len() as u32,
            other => other
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| StoreError::InvalidVersion(other.to_owned()))?,
        };
        let id = *ids
            .get(number as usize - 1)
            .ok_or_else(|| StoreError::VersionNotFound(version.to_owned()))?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version: number,
            id,
            schema: self.schemas[id as usize - 1].clone(),
        })
    }

    pub(crate) fn compatibility(&self, subject: Option<&str>) -> Compatibility {
        subject
            .and_then(|subject| self.per_subject.get(subject))
            .copied()
            .unwrap_or(self.global)
    }

    pub(crate) fn subject_compatibility(&self, subject: &str) -> Result<Compatibility, StoreError> {
        self.per_subject
            .get(subject)
            .copied()
            .ok_or_else(|| StoreError::SubjectConfigNotFound(subject.to_owned()))
    }

    pub(crate) fn set_compatibility(&mut self, subject: Option<&str>, level: Compatibility) {
        match subject {
            Some(subject) => {
                self.per_subject.insert(subject.to_owned(), level);
            }
            None => self.global = level,
        }
    }

    /// The versions a candidate must be compatible with under the subject's level.
    fn check_against(&self, subject: &str, candidate: &Schema) -> Result<(), String> {
        let Some(ids) = self.subjects.get(subject) else {
            return Ok(());
        };
        let level = self.compatibility(Some(subject));
        let transitive = matches!(
            level,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        );
        let to_check = if transitive {
            &ids[..]
        } else {
            &ids[ids.len().saturating_sub(1)..]
        };
        for id in to_check {
            let (_, existing) =
                parse(&self.schemas[*id as usize - 1]).expect("stored schemas parse");
            compatible(level, &existing, candidate)?;
        }
        Ok(())
    }

    pub(crate) fn register(&mut self, subject: &str, text: &str) -> Result<u32, StoreError> {
        let (normalized, schema) = parse(text)?;
        if let Ok(existing) = self.lookup(subject, text) {
            return Ok(existing.id);
        }
        self.check_against(subject, &schema)
            .map_err(|details| StoreError::Incompatible {
                subject: subject.to_owned(),
                details,
            })?;
        let id = match self.ids_by_text.get(&normalized) {
            Some(id) => *id,
            None => {
                self.schemas.push(normalized.clone());
                let id = self.schemas.len() as u32;
                self.ids_by_text.insert(normalized, id);
                id
            }
        };
        self.subjects
            .entry(subject.to_owned())
            .or_default()
            .push(id);
        Ok(id)
    }

    /// The version of `subject` holding exactly this schema.
    pub(crate) fn lookup(&self, subject: &str, text: &str) -> Result<SubjectVersion, StoreError> {
        let (normalized, _) = parse(text)?;
        let ids = self.ids(subject)?;
        let id = self
            .ids_by_text
            .get(&normalized)
            .ok_or(StoreError::SchemaNotFound)?;
        let index = ids
            .iter()
            .position(|v| v == id)
            .ok_or(StoreError::SchemaNotFound)?;
        self.version(subject, &(index + 1).to_string())
    }

    pub(crate) fn is_compatible(
        &self,
        subject: &str,
        version: &str,
        text: &str,
    ) -> Result<Result<(), String>, StoreError> {
        let (_, candidate) = parse(text)?;
        let existing = self.version(subject, version)?;
        let (_, existing) = parse(&existing.schema).expect("stored schemas parse");
        Ok(compatible(
            self.compatibility(Some(subject)),
            &existing,
            &candidate,
        ))
    }

    pub(crate) fn delete_subject(&mut self, subject: &str) -> Result<Vec<u32>, StoreError> {
        let versions = self.versions(subject)?;
        self.subjects.remove(subject);
        self.per_subject.remove(subject);
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
    const V2_WITH_DEFAULT: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":["null","long"],"default":null}]}"#;
    const V2_REQUIRED: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"long"}]}"#;

    #[test]
    fn registers_versions_and_dedupes_ids() {
        let mut store = Store::default();
        let id = store.register("s-value", V1).unwrap();
        assert_eq!(
            store.register("s-value", V1).unwrap(),
            id,
            "same schema, same id, no new version"
        );
        assert_eq!(store.versions("s-value").unwrap(), vec![1]);
        assert_eq!(
            store.register("other-value", V1).unwrap(),
            id,
            "ids are global"
        );
        let id2 = store.register("s-value", V2_WITH_DEFAULT).unwrap();
        assert_ne!(id, id2);
        assert_eq!(store.version("s-value", "latest").unwrap().version, 2);
        assert_eq!(store.lookup("s-value", V1).unwrap().version, 1);
    }

    #[test]
    fn backward_rejects_a_new_required_field_unless_level_is_none() {
        let mut store = Store::default();
        store.register("s", V1).unwrap();
        let error = store.register("s", V2_REQUIRED).unwrap_err();
        assert_eq!(error.error_code(), 409);
        assert!(store
            .is_compatible("s", "latest", V2_REQUIRED)
            .unwrap()
            .is_err());
        store.set_compatibility(Some("s"), Compatibility::None);
        assert!(store.register("s", V2_REQUIRED).is_ok());
    }

    #[test]
    fn confluent_error_codes() {
        let mut store = Store::default();
        assert_eq!(
            store.register("s", "{nope").unwrap_err().error_code(),
            42201
        );
        assert_eq!(store.versions("missing").unwrap_err().error_code(), 40401);
        store.register("s", V1).unwrap();
        assert_eq!(store.version("s", "7").unwrap_err().error_code(), 40402);
        assert_eq!(
            store.lookup("s", V2_WITH_DEFAULT).unwrap_err().error_code(),
            40403
        );
        assert_eq!(store.schema_by_id(99).unwrap_err().http_status(), 404);
    }
}
