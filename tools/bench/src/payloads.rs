//! The load's request bodies: the ten seed payloads (tests/fixtures), each
//! turned into a template whose identifying fields vary with a sequence
//! number, so no two requests are duplicates of each other and the records
//! spread over many leads (Kafka keys).
//!
//! Templates are rendered by concatenation, so the generator spends about the
//! same small effort on every target it drives.

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::Value;
use std::path::Path;

/// Contact ids of existing leads start here; CUSTOMER_CREATE gets fresh ones.
const CONTACT_BASE: u64 = 1_000_000;
const NEW_CONTACT_BASE: u64 = 500_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The sequence number: `cdr_id`, `task_id`, a changed value.
    Seq,
    /// One of `contacts` existing leads.
    Contact,
    /// A lead created by this event.
    NewContact,
    /// A UUID-shaped string derived from the sequence number (`cdr_uuid`).
    Uuid,
}

impl Slot {
    const ALL: [Slot; 4] = [Slot::Seq, Slot::Contact, Slot::NewContact, Slot::Uuid];

    fn name(self) -> &'static str {
        match self {
            Slot::Seq => "@@bench-seq@@",
            Slot::Contact => "@@bench-contact@@",
            Slot::NewContact => "@@bench-new-contact@@",
            Slot::Uuid => "@@bench-uuid@@",
        }
    }

    /// How the placeholder appears in serialised JSON.
    fn marker(self) -> String {
        format!("\"{}\"", self.name())
    }

    fn placeholder(self) -> Value {
        Value::String(self.name().into())
    }
}

#[derive(Debug)]
enum Part {
    Text(String),
    Slot(Slot),
}

#[derive(Debug)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Debug)]
pub struct Payloads {
    templates: Vec<Template>,
    contacts: u64,
}

impl Payloads {
    /// Loads every `*.json` in `dir` (sorted by name).
    pub fn load(dir: &Path, contacts: u64) -> anyhow::Result<Payloads> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading fixtures in {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            bail!("no *.json fixtures in {}", dir.display());
        }
        let templates = paths
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let payload: Value = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                template(payload).with_context(|| format!("templating {}", path.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Payloads {
            templates,
            contacts: contacts.max(1),
        })
    }

    /// Only the templates about an existing lead: not CUSTOMER_CREATE (a
    /// fresh contact id each) nor an event without a contact
    /// (CDR_SUMMARY_READY, keyed by its call, so a fresh key each). The
    /// records then have exactly `contacts` Kafka keys. Their identities
    /// (`cdr_id`, `task_id`, a changed value) still vary with the sequence
    /// number, so no event is a duplicate of another.
    pub fn existing_leads_only(mut self) -> anyhow::Result<Payloads> {
        self.templates.retain(|template| {
            template
                .parts
                .iter()
                .any(|part| matches!(part, Part::Slot(Slot::Contact)))
        });
        anyhow::ensure!(!self.templates.is_empty(), "every template creates a lead");
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The lead of request `seq`. Each row of `len()` consecutive requests
    /// (one of each template) spreads over leads `contacts / len()` apart,
    /// so requests in flight together are about different leads, as a
    /// webhook stream's mostly are; over a full cycle every lead gets every
    /// template. (A lead's records are made durable one at a time, each
    /// after its predecessor's ack: a load that sent a lead's ten events at
    /// once, as the bench's rows did until stop 35, measured that wait.)
    fn contact(&self, seq: u64) -> u64 {
        let count = self.templates.len() as u64;
        let spread = (self.contacts / count).max(1);
        let (row, column) = (seq / count, seq % count);
        CONTACT_BASE + (row + column * spread) % self.contacts
    }

    /// Request `seq`: the templates in rotation, leads in rotation.
    pub fn body(&self, seq: u64) -> Bytes {
        let count = self.templates.len() as u64;
        let template = &self.templates[(seq % count) as usize];
        let contact = self.contact(seq);
        let mut out = String::with_capacity(1536);
        for part in &template.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Slot(Slot::Seq) => out.push_str(&seq.to_string()),
                Part::Slot(Slot::Contact) => out.push_str(&contact.to_string()),
                Part::Slot(Slot::NewContact) => out.push_str(&(NEW_CONTACT_BASE + seq).to_string()),
                Part::Slot(Slot::Uuid) => {
                    out.push_str(&format!("\"00000000-0000-4000-8000-{seq:012}\""))
                }
            }
        }
        Bytes::from(out)
    }
}

fn template(mut payload: Value) -> anyhow::Result<Template> {
    let Some(object) = payload.as_object_mut() else {
        bail!("not a JSON object");
    };
    let event = object
        .get("event")
        .and_then(Value::as_str)
        .context("no `event`")?
        .to_owned();
    let mut set_if_present = |field: &str, slot: Slot| {
        if object.get(field).is_some_and(|value| !value.is_null()) {
            object.insert(field.into(), slot.placeholder());
        }
    };
    set_if_present("cdr_id", Slot::Seq);
    set_if_present("task_id", Slot::Seq);
    set_if_present("cdr_uuid", Slot::Uuid);
    let contact = if event == "CUSTOMER_CREATE" {
        Slot::NewContact
    } else {
        Slot::Contact
    };
    set_if_present("contact_id", contact);
    if event == "CUSTOMER_CHANGE" {
        // Its identity is the lead plus the new value: vary the value.
        match object.get_mut("updated_value") {
            Some(Value::Object(value)) => {
                value.insert("id".into(), Slot::Seq.placeholder());
            }
            Some(other) => *other = Slot::Seq.placeholder(),
            None => {}
        }
    }
    let text = serde_json::to_string(&payload)?;
    Ok(Template {
        parts: split(&text),
    })
}

/// Splits serialised JSON at the (quoted) placeholders.
fn split(mut text: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    loop {
        let next = Slot::ALL
            .iter()
            .filter_map(|slot| text.find(&slot.marker()).map(|at| (at, *slot)))
            .min_by_key(|(at, _)| *at);
        let Some((at, slot)) = next else {
            parts.push(Part::Text(text.to_owned()));
            return parts;
        };
        parts.push(Part::Text(text[..at].to_owned()));
        parts.push(Part::Slot(slot));
        text = &text[at + slot.marker().len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> Payloads {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        Payloads::load(&dir, 100).unwrap()
    }

    #[test]
    fn existing_leads_only_keeps_every_event_on_the_given_leads() {
        let payloads = fixtures().existing_leads_only().unwrap();
        assert_eq!(payloads.len(), 8);
        for seq in 0..80 {
            let body: Value = serde_json::from_slice(&payloads.body(seq)).unwrap();
            assert_ne!(body["event"], "CUSTOMER_CREATE");
            let contact = body["contact_id"].as_u64().unwrap();
            assert!((CONTACT_BASE..CONTACT_BASE + 100).contains(&contact));
        }
    }

    #[test]
    fn requests_in_flight_together_are_about_different_leads_and_each_lead_gets_every_event() {
        let payloads = Payloads::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"),
            5_000,
        )
        .unwrap();
        let count = payloads.len() as u64;
        for start in (0..20_000).step_by(97) {
            let leads: std::collections::HashSet<u64> = (start..start + 256)
                .map(|seq| payloads.contact(seq))
                .collect();
            assert_eq!(leads.len(), 256, "256 consecutive requests from {start}");
        }
        let mut templates_of_lead = std::collections::HashMap::<u64, Vec<u64>>::new();
        for seq in 0..5_000 * count {
            templates_of_lead
                .entry(payloads.contact(seq))
                .or_default()
                .push(seq % count);
        }
        assert_eq!(templates_of_lead.len(), 5_000);
        for (lead, mut templates) in templates_of_lead {
            templates.sort_unstable();
            templates.dedup();
            assert_eq!(templates.len() as u64, count, "lead {lead}");
        }
    }

    #[test]
    fn bodies_are_valid_json_with_varied_identities() {
        let payloads = fixtures();
        assert_eq!(payloads.len(), 10);
        for seq in 0..40 {
            let body: Value = serde_json::from_slice(&payloads.body(seq)).unwrap();
            let event = body["event"].as_str().unwrap();
            for field in ["cdr_id", "task_id"] {
                if !body[field].is_null() {
                    assert_eq!(body[field], seq, "{event} {field}");
                }
            }
            if !body["cdr_uuid"].is_null() {
                assert!(body["cdr_uuid"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("{seq:012}")));
            }
            if event == "CUSTOMER_CHANGE" {
                assert_eq!(body["updated_value"]["id"], seq);
            }
            if event == "CUSTOMER_CREATE" {
                assert_eq!(body["contact_id"], NEW_CONTACT_BASE + seq);
            } else if !body["contact_id"].is_null() {
                assert_eq!(body["contact_id"], payloads.contact(seq));
            }
            assert!(!String::from_utf8_lossy(&payloads.body(seq)).contains("@@bench"));
        }
    }
}
