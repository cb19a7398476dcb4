//! The soak's verdict, from the records read back (`verify::read_topics`)
//! against what the load was answered: every 2xx-answered event found
//! (lost), repeats (duplicates), and per lead, in its partition's offset
//! order, the 2xx-answered events in the order they were answered (order
//! violations). Events answered otherwise, or not at all, may or may not be
//! there: they are counted apart and constrain nothing.

use super::load::{Outcome, Sent};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One record of this run on the broker.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub contact: u64,
    pub n: u32,
    pub partition: i32,
    pub offset: i64,
}

/// Parses a group id `<run>-<contact>-<n>` of this run.
pub fn parse_group_id(run: &str, group_id: &str) -> Option<(u64, u32)> {
    let rest = group_id.strip_prefix(run)?.strip_prefix('-')?;
    let (contact, n) = rest.split_once('-')?;
    Some((contact.parse().ok()?, n.parse().ok()?))
}

/// An accepted event found before one accepted earlier on its lead.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    pub contact: u64,
    pub partition: i32,
    /// The event out of place, and its offset.
    pub n: u32,
    pub offset: i64,
    /// The later-answered event already found before it, and its offset.
    pub after_n: u32,
    pub after_offset: i64,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Checked {
    pub consumed: usize,
    pub lost: usize,
    /// Up to 20 lost events as `contact-n`.
    pub lost_examples: Vec<String>,
    pub duplicate_records: usize,
    /// Repeats of an accepted event found after a later accepted event of
    /// its lead (its first copy was in order).
    pub repeats_after_later_events: usize,
    pub order_violations: usize,
    pub leads_with_violations: usize,
    /// Up to 20 violations, the first ones per lead.
    pub violation_examples: Vec<Violation>,
    pub leads_on_several_partitions: usize,
    /// Events not answered 2xx (or not at all) that are on the broker anyway.
    pub unaccepted_found: usize,
}

pub fn check(sent: &[Sent], records: &[Found]) -> Checked {
    let accepted: HashSet<(u64, u32)> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Accepted { .. }))
        .map(|s| (s.contact, s.n))
        .collect();
    let mut copies: HashMap<(u64, u32), usize> = HashMap::new();
    let mut by_lead: BTreeMap<u64, Vec<Found>> = BTreeMap::new();
    for record in records {
        *copies.entry((record.contact, record.n)).or_default() += 1;
        by_lead.entry(record.contact).or_default().push(*record);
    }
    let mut checked = Checked {
        consumed: records.len(),
        duplicate_records: copies.values().map(|n| n - 1).sum(),
        unaccepted_found: copies.keys().filter(|id| !accepted.contains(id)).count(),
        ..Checked::default()
    };
    let mut lost: Vec<(u64, u32)> = accepted
        .iter()
        .filter(|id| !copies.contains_key(id))
        .copied()
        .collect();
    lost.sort_unstable();
    checked.lost = lost.len();
    checked.lost_examples = lost
        .iter()
        .take(20)
        .map(|(contact, n)| format!("{contact}-{n}"))
        .collect();
    for (contact, mut found) in by_lead {
        found.sort_by_key(|f| (f.partition, f.offset));
        if found.windows(2).any(|w| w[0].partition != w[1].partition) {
            checked.leads_on_several_partitions += 1;
        }
        check_lead(contact, &found, &accepted, &mut checked);
    }
    checked
}

/// Walks one lead's records in offset order, its accepted events only.
fn check_lead(
    contact: u64,
    found: &[Found],
    accepted: &HashSet<(u64, u32)>,
    checked: &mut Checked,
) {
    let mut seen = HashSet::new();
    let mut latest: Option<Found> = None;
    let mut violations = 0;
    for record in found.iter().filter(|f| accepted.contains(&(contact, f.n))) {
        let first_copy = seen.insert(record.n);
        match latest {
            Some(before) if record.n < before.n && first_copy => {
                violations += 1;
                if checked.violation_examples.len() < 20 && violations <= 3 {
                    checked.violation_examples.push(Violation {
                        contact,
                        partition: record.partition,
                        n: record.n,
                        offset: record.offset,
                        after_n: before.n,
                        after_offset: before.offset,
                    });
                }
            }
            Some(before) if record.n < before.n => checked.repeats_after_later_events += 1,
            _ => latest = Some(*record),
        }
    }
    checked.order_violations += violations;
    checked.leads_with_violations += usize::from(violations > 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(contact: u64, n: u32, accepted: bool) -> Sent {
        Sent {
            contact,
            n,
            outcome: if accepted {
                Outcome::Accepted {
                    status: 202,
                    published: false,
                }
            } else {
                Outcome::NoAnswer
            },
            millis: 1,
        }
    }

    fn at(contact: u64, n: u32, offset: i64) -> Found {
        Found {
            contact,
            n,
            partition: 0,
            offset,
        }
    }

    #[test]
    fn counts_lost_repeats_and_order_on_accepted_events_only() {
        let sent = [
            sent(1, 0, true),
            sent(1, 1, true),
            sent(1, 2, false),
            sent(1, 3, true),
            sent(2, 0, true),
            sent(2, 1, true),
        ];
        let records = [
            at(1, 2, 0), // unanswered, found first: constrains nothing
            at(1, 0, 1),
            at(1, 1, 2),
            at(1, 0, 3), // a repeat after a later event
            at(1, 3, 4),
            at(1, 3, 5), // a repeat in place
            at(2, 1, 6),
            at(2, 0, 7), // out of order
        ];
        let checked = check(&sent, &records);
        assert_eq!(checked.consumed, 8);
        assert_eq!(checked.lost, 0);
        assert_eq!(checked.duplicate_records, 2);
        assert_eq!(checked.repeats_after_later_events, 1);
        assert_eq!(checked.unaccepted_found, 1);
        assert_eq!(checked.order_violations, 1);
        assert_eq!(checked.leads_with_violations, 1);
        assert_eq!(checked.violation_examples[0].n, 0);
        assert_eq!(checked.violation_examples[0].after_n, 1);
        let checked = check(&sent, &records[..3]);
        assert_eq!(checked.lost, 3);
        assert_eq!(checked.lost_examples, ["1-3", "2-0", "2-1"]);
    }

    #[test]
    fn group_ids_of_this_run_only() {
        assert_eq!(
            parse_group_id("soak1", "soak1-7000003-12"),
            Some((7000003, 12))
        );
        assert_eq!(parse_group_id("soak1", "soak12-7000003-12"), None);
        assert_eq!(parse_group_id("soak1", "other"), None);
    }
}
