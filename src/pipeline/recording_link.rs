//! When a recording's link (`cdr_recording_url`) stops working, stamped on
//! the recording event as `superfone-recording-url-expires-at` and used by
//! the recording copier. The vendor promises 7 days from
//! delivery (payload reference, "Pre-signed URL expiry"); an S3 pre-signed
//! URL says exactly, in `X-Amz-Date` (when it was signed) plus
//! `X-Amz-Expires` (for how many seconds), so that wins when present.
//!
//! Both come from a request body: a link never counts as living longer than
//! SigV4 allows (7 days from signing) nor past the vendor's 7 days from
//! delivery, and no value overflows a date (a copy retried "until expiry"
//! must end, and a request must never panic).

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

/// How long the vendor keeps a recording link valid after delivery.
pub const LINK_LIFETIME: Duration = Duration::days(7);

/// When `url` expires: from its SigV4 query when it is a pre-signed S3 link,
/// else `received_at` (the event's `superfone-received-at`, RFC 3339) plus
/// `LINK_LIFETIME`. `None` only when neither can be read.
pub fn link_expiry(url: &str, received_at: Option<&str>) -> Option<OffsetDateTime> {
    let promised = received_at
        .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
        .and_then(|received| received.checked_add(LINK_LIFETIME));
    let expiry = match (sigv4_expiry(url), promised) {
        (Some(signed), Some(promised)) => signed.min(promised),
        (signed, promised) => signed.or(promised)?,
    };
    PLAUSIBLE_YEARS.contains(&expiry.year()).then_some(expiry)
}

/// Years an expiry can render in RFC 3339 (and a real link can have).
const PLAUSIBLE_YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// `X-Amz-Date` (`20260515T103000Z`) plus `X-Amz-Expires` (seconds).
fn sigv4_expiry(url: &str) -> Option<OffsetDateTime> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    let parameter = |wanted: &str| {
        query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            name.eq_ignore_ascii_case(wanted).then_some(value)
        })
    };
    let signed = PrimitiveDateTime::parse(
        parameter("X-Amz-Date")?,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()?
    .assume_utc();
    // SigV4 refuses more than 7 days; a larger value is not S3's.
    let seconds: i64 = parameter("X-Amz-Expires")?.parse().ok()?;
    let lifetime = Duration::seconds(seconds).min(LINK_LIFETIME);
    if seconds < 0 || !PLAUSIBLE_YEARS.contains(&signed.year()) {
        return None;
    }
    signed.checked_add(lifetime)
}

/// `at` as RFC 3339 UTC, for records and headers.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .expect("a UTC date-time always formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_presigned_link_says_when_it_expires() {
        let url = "https://recordings.s3.amazonaws.com/a/b.mp3?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                   &X-Amz-Date=20260515T103000Z&X-Amz-Expires=604800&X-Amz-Signature=abc";
        assert_eq!(
            link_expiry(url, Some("2026-05-20T00:00:00Z")),
            Some(datetime!(2026-05-22 10:30:00 UTC))
        );
        let lower_case = "https://h/x?x-amz-expires=60&x-amz-date=20260515T103000Z";
        assert_eq!(
            link_expiry(lower_case, None),
            Some(datetime!(2026-05-15 10:31:00 UTC))
        );
    }

    #[test]
    fn without_a_signature_date_the_vendor_s_seven_days_count_from_delivery() {
        for url in [
            "https://recordings.example.com/a.mp3",
            "https://h/x?X-Amz-Date=garbage&X-Amz-Expires=60",
            "https://h/x?X-Amz-Date=20260515T103000Z&X-Amz-Expires=-5",
            "https://h/x?X-Amz-Date=20260515T103000Z",
        ] {
            assert_eq!(
                link_expiry(url, Some("2026-05-15T10:30:00.250Z")),
                Some(datetime!(2026-05-22 10:30:00.250 UTC)),
                "{url}"
            );
        }
        assert_eq!(link_expiry("https://h/a.mp3", None), None);
        assert_eq!(link_expiry("https://h/a.mp3", Some("yesterday")), None);
    }

    #[test]
    fn hostile_numbers_neither_overflow_nor_outlive_seven_days() {
        let received = "2026-05-15T10:30:00Z";
        let week_after = datetime!(2026-05-22 10:30:00 UTC);
        for (query, expected) in [
            (
                "X-Amz-Date=20260515T103000Z&X-Amz-Expires=9223372036854775807",
                week_after,
            ),
            (
                "X-Amz-Date=20260515T103000Z&X-Amz-Expires=31536000000",
                week_after,
            ),
            ("X-Amz-Date=99991231T235959Z&X-Amz-Expires=2", week_after),
            ("X-Amz-Date=-00010101T000000Z&X-Amz-Expires=60", week_after),
            ("X-Amz-Date=+999991231T235959Z&X-Amz-Expires=60", week_after),
            (
                "X-Amz-Date=20260515T100000Z&X-Amz-Expires=700000",
                datetime!(2026-05-22 10:00:00 UTC),
            ),
        ] {
            let url = format!("https://h/a.mp3?{query}");
            let expiry = link_expiry(&url, Some(received));
            assert_eq!(expiry, Some(expected), "{query}");
            rfc3339(expiry.unwrap());
        }
        assert_eq!(
            link_expiry(
                "https://h/a?X-Amz-Date=99991231T235959Z&X-Amz-Expires=604800",
                None
            ),
            None,
            "past year 9999: no expiry rather than a panic"
        );
        assert_eq!(
            link_expiry("https://h/a", Some("9999-12-31T23:59:59Z")),
            None
        );
    }

    #[test]
    fn expiry_renders_as_rfc3339() {
        assert_eq!(
            rfc3339(datetime!(2026-05-22 10:30:00 UTC)),
            "2026-05-22T10:30:00Z"
        );
    }
}
