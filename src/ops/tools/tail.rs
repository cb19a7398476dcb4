//! `tail`: a topic's records as JSON lines, values decoded through the
//! schema registry.

use crate::config::Config;
use crate::ops::tools::topics::{resolve_topic, topic_consumer};
use crate::ops::tools::ToolError;
use crate::pipeline::avro_json;
use crate::recordings::source;
use rdkafka::message::{Headers, Message};
use rdkafka::Offset;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// What `tail` reads and when it stops.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// An event name (`ALL_CALLS`), `dead_letter`, or a topic name.
    pub target: String,
    pub from_beginning: bool,
    /// Stop after this many records.
    pub max: Option<usize>,
    /// Stop after this long without a record.
    pub idle_exit: Option<Duration>,
    /// Print recording links whole, signature included.
    pub show_secrets: bool,
}

/// A recording link is a credential for a week: shown without its query
/// (the signature) unless asked for.
fn without_link_secrets(mut value: Value) -> Value {
    if let Some(link) = value.get_mut("cdr_recording_url") {
        if let Some(text) = link.as_str() {
            *link = Value::String(source::redact(text));
        }
    }
    value
}

/// Prints the records of a topic as JSON lines; returns how many.
pub async fn tail(
    config: &Config,
    options: TailOptions,
    mut out: impl Write,
) -> Result<usize, ToolError> {
    let topic = resolve_topic(config, &options.target);
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let group_id = format!("superfone-bridge-tail-{}", uuid::Uuid::now_v7());
    let consumer = topic_consumer(config, &topic, &group_id, start)?;
    let decoder = AvroDecoder::new(crate::pipeline::registry::settings(&config.registry)?);
    let mut count = 0;
    while options.max.is_none_or(|max| count < max) {
        let message = match options.idle_exit {
            Some(idle) => match tokio::time::timeout(idle, consumer.recv()).await {
                Ok(message) => message?,
                Err(_) => break,
            },
            None => consumer.recv().await?,
        };
        let payload = message.payload().unwrap_or_default();
        let value = if payload.len() >= 5 && payload[0] == 0 {
            match decoder.decode(Some(payload)).await {
                Ok(decoded) => avro_json::to_json(&decoded.value),
                Err(error) => json!({"undecodable": error.to_string()}),
            }
        } else {
            serde_json::from_slice(payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
        };
        let value = if options.show_secrets {
            value
        } else {
            without_link_secrets(value)
        };
        let headers: serde_json::Map<String, Value> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            Value::String(
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let line = json!({
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "key": key,
            "headers": headers,
            "value": value,
        });
        // Whatever the shape: a dead letter's raw body, a nested link.
        let line = if options.show_secrets {
            line.to_string()
        } else {
            source::redact_link_secrets(&line.to_string())
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        count += 1;
    }
    Ok(count)
}
