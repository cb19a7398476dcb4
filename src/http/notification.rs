//! Which notification sent a delivery. Superfone fires every notification
//! configured for an event on its own, each with its own filters and custom
//! headers ("You can configure multiple notifications per event — each one
//! fires independently", event-notifications docs), and all of them can
//! post to one URL. Posted to `<ingest path>/<name>` instead, a delivery
//! says which one sent it; with the request headers `ingest.forward_headers`
//! allows, that goes onto its record as headers.

use crate::vocabulary::headers::{FORWARDED_HEADER_PREFIX, NOTIFICATION_HEADER};
use hyper::header::{HeaderMap, HeaderName};

/// The longest notification name.
pub const MAX_NOTIFICATION_NAME_BYTES: usize = 64;
/// The longest forwarded header value kept: a longer one is cut, as group
/// ids are, since hyper lets a request carry headers far larger than the
/// room a record has for them (`RECORD_OVERHEAD_BYTES`).
pub const MAX_FORWARDED_VALUE_BYTES: usize = 1024;

/// A request path that is neither the ingest path nor it with a
/// notification name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherPath;

/// The notification named by a request `path`: `None` for the ingest path
/// itself, the name for `<ingest path>/<name>`. The path is taken as sent,
/// never decoded or normalised, and a name is 1 to 64 characters of
/// `[a-z0-9-]`; so a trailing slash, a percent-encoded character, a dot
/// segment (`..`) or a second segment is another path (404), and no two
/// spellings name one notification.
pub fn notification_in_path<'a>(
    ingest_path: &str,
    path: &'a str,
) -> Result<Option<&'a str>, OtherPath> {
    if path == ingest_path {
        return Ok(None);
    }
    let name = path
        .strip_prefix(ingest_path.trim_end_matches('/'))
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(OtherPath)?;
    let valid = (1..=MAX_NOTIFICATION_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if valid {
        Ok(Some(name))
    } else {
        Err(OtherPath)
    }
}

/// The record headers naming where a delivery came from: the notification
/// (`superfone-notification`) when the path named one, and each header of
/// `forward` the request has, as `superfone-h-<name>` (names are lower
/// case). A header sent more than once is joined with ", ", as HTTP
/// combines it; bytes that are no UTF-8 become U+FFFD; a value is cut at
/// `MAX_FORWARDED_VALUE_BYTES`.
pub fn delivery_headers(
    notification: Option<&str>,
    request: &HeaderMap,
    forward: &[HeaderName],
) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    if let Some(name) = notification {
        headers.push((NOTIFICATION_HEADER.to_owned(), name.to_owned()));
    }
    for name in forward {
        let values: Vec<_> = request
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()))
            .collect();
        if values.is_empty() {
            continue;
        }
        let value = values.join(", ");
        headers.push((
            format!("{FORWARDED_HEADER_PREFIX}{name}"),
            cut(&value, MAX_FORWARDED_VALUE_BYTES).to_owned(),
        ));
    }
    headers
}

/// `text` cut to at most `limit` bytes, on a character boundary.
fn cut(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn a_path_names_a_notification_only_in_its_one_spelling() {
        let of = |path| notification_in_path("/superfone/events", path);
        assert_eq!(of("/superfone/events"), Ok(None));
        assert_eq!(of("/superfone/events/sales-2"), Ok(Some("sales-2")));
        let longest = format!("/superfone/events/{}", "a".repeat(64));
        assert_eq!(of(&longest), Ok(Some(&longest[18..])));
        for other in [
            "/superfone/events/",
            "/superfone/events//",
            "/superfone/events/sales/",
            "/superfone/events/a/b",
            "/superfone/events/Sales",
            "/superfone/events/sales_team",
            "/superfone/events/sal%65s",
            "/superfone/events/..",
            "/superfone/events/../events",
            "/superfone/events/%2e%2e",
            "/superfone/events/a.b",
            "/superfone/eventsx",
            "/superfone/event",
            "/",
            &format!("/superfone/events/{}", "a".repeat(65)),
        ] {
            assert_eq!(of(other), Err(OtherPath), "{other}");
        }
        assert_eq!(
            notification_in_path("/hooks/", "/hooks/crm"),
            Ok(Some("crm")),
            "an ingest path with a trailing slash takes names too"
        );
    }

    #[test]
    fn allowed_headers_are_forwarded_lower_case_joined_and_cut() {
        let mut request = HeaderMap::new();
        request.insert("x-team", HeaderValue::from_static("growth"));
        request.append("x-region", HeaderValue::from_static("south"));
        request.append("x-region", HeaderValue::from_static("west"));
        request.insert("x-other", HeaderValue::from_static("not forwarded"));
        let long = "é".repeat(600);
        request.insert("x-long", HeaderValue::from_bytes(long.as_bytes()).unwrap());
        let forward: Vec<HeaderName> = ["X-Team", "x-region", "x-long", "x-absent"]
            .iter()
            .map(|name| name.parse().unwrap())
            .collect();
        let headers = delivery_headers(Some("sales"), &request, &forward);
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "superfone-notification",
                "superfone-h-x-team",
                "superfone-h-x-region",
                "superfone-h-x-long"
            ]
        );
        assert_eq!(headers[0].1, "sales");
        assert_eq!(headers[1].1, "growth");
        assert_eq!(headers[2].1, "south, west");
        assert_eq!(headers[3].1, "é".repeat(512), "cut on a character boundary");
        assert!(delivery_headers(None, &request, &[]).is_empty());
    }
}
