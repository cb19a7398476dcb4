//! Bad input is kept, never dropped: why a body was rejected, and the headers
//! that say so on the dead-letter record (which carries the body unchanged).

use crate::pipeline::convert::ConvertError;
use crate::pipeline::event::DispatchError;
use crate::vocabulary::headers::{
    DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_FIELD_HEADER, DEAD_LETTER_REASON_HEADER,
};
use crate::vocabulary::EventKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The body is not JSON at all.
    InvalidJson,
    /// JSON nested deeper than the parser's limit (serde_json's 128 levels).
    TooDeep,
    /// JSON, but not an object.
    NotAnObject,
    /// An object without a string `event`.
    MissingEvent,
    /// An `event` this bridge does not know.
    UnknownEvent,
    /// A known event whose payload does not fit its schema.
    ConversionFailed,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::InvalidJson => "invalid_json",
            DeadLetterReason::TooDeep => "too_deep",
            DeadLetterReason::NotAnObject => "not_an_object",
            DeadLetterReason::MissingEvent => "missing_event",
            DeadLetterReason::UnknownEvent => "unknown_event",
            DeadLetterReason::ConversionFailed => "conversion_failed",
        }
    }
}

/// Why one body goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub error: String,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    pub event: Option<EventKind>,
}

impl Rejection {
    /// A body serde_json could not parse: not JSON, or JSON nested deeper
    /// than its recursion limit (128 levels), which no Superfone payload is.
    pub fn unparsable(error: &serde_json::Error) -> Self {
        // serde_json reports its recursion limit as a syntax error; its
        // message is the only thing that tells it apart.
        let (reason, error) = if error.to_string().starts_with("recursion limit exceeded") {
            (
                DeadLetterReason::TooDeep,
                format!("JSON nested 128 levels or deeper is not accepted: {error}"),
            )
        } else {
            (
                DeadLetterReason::InvalidJson,
                format!("body is not valid JSON: {error}"),
            )
        };
        Rejection {
            reason,
            error,
            field: None,
            event: None,
        }
    }

    pub fn conversion(event: EventKind, error: ConvertError) -> Self {
        Rejection {
            reason: DeadLetterReason::ConversionFailed,
            error: format!("{event} payload does not match its schema: {error}"),
            field: Some(error.field).filter(|field| !field.is_empty()),
            event: Some(event),
        }
    }

    /// The dead-letter-specific headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (DEAD_LETTER_REASON_HEADER, self.reason.as_str().to_owned()),
            (DEAD_LETTER_ERROR_HEADER, self.error.clone()),
        ];
        if let Some(field) = &self.field {
            headers.push((DEAD_LETTER_FIELD_HEADER, field.clone()));
        }
        headers
    }
}

impl From<DispatchError> for Rejection {
    fn from(error: DispatchError) -> Self {
        let reason = match error {
            DispatchError::NotAnObject => DeadLetterReason::NotAnObject,
            DispatchError::MissingEvent => DeadLetterReason::MissingEvent,
            DispatchError::UnknownEvent(_) => DeadLetterReason::UnknownEvent,
        };
        let field = (reason != DeadLetterReason::NotAnObject).then(|| "event".to_owned());
        Rejection {
            reason,
            error: error.to_string(),
            field,
            event: None,
        }
    }
}
