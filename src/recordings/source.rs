//! The guarded downloader: opens a recording's pre-signed URL and streams
//! its body, refusing every place an untrusted URL could point at that is
//! not a recording. The URL comes from a webhook body, so it is an SSRF
//! surface: https only, allowed hosts only (no userinfo), public addresses
//! only (checked inside the connector's DNS resolution, so a rebinding name
//! cannot swap addresses between check and connect; IP literals, which skip
//! the resolver, checked before each request and redirect), redirects held
//! to the same rules, no proxy from the environment, a size cap and
//! timeouts. Errors say what the caller must do: never retry, decide on the
//! status, or retry later. The URL's query is a credential: [`redact`] it for
//! logs, and no [`SourceError`] ever prints it.

use bytes::Bytes;
use futures::Stream;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::CONTENT_TYPE;
use reqwest::{redirect, Certificate, Client, Response, StatusCode, Url};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many redirects one download may follow. Object stores redirect once
/// at most (a region move); a longer chain is a loop or someone probing.
pub const MAX_REDIRECTS: usize = 5;

/// Where recordings may come from and how much of them to take.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    /// Hosts a recording URL (and every redirect) may name: an exact host
    /// (`recordings.s3.amazonaws.com`, or an IP literal such as `127.0.0.1`)
    /// or `*.amazonaws.com` for any subdomain (not the apex unless listed).
    /// Matched case-insensitively, after IDNA and trailing-dot normalisation.
    pub allowed_hosts: Vec<String>,
    /// Let loopback, private, link-local and other non-public addresses
    /// through. For tests and `scripts/dev` only: in production this would
    /// open the metadata service and the cluster to anyone who can send a
    /// webhook.
    pub allow_private_networks: bool,
    /// Allow `http:` as well as `https:`. For tests and `scripts/dev` only.
    pub allow_plain_http: bool,
    /// The largest recording taken, declared or streamed, in bytes.
    pub max_bytes: u64,
    /// How long establishing a TCP connection may take.
    pub connect_timeout: Duration,
    /// How long the server may stay silent: waiting for the answer, and
    /// between two reads of the body.
    pub read_timeout: Duration,
    /// The slowest body taken: at least `bytes` in every `window`, else the
    /// download fails (transient). A server trickling a byte just inside
    /// `read_timeout` would otherwise hold a copy slot for ever.
    pub low_speed: LowSpeedLimit,
}

/// At least `bytes` in every `window` of a download.
#[derive(Debug, Clone, Copy)]
pub struct LowSpeedLimit {
    pub bytes: u64,
    pub window: Duration,
}

/// Why a recording could not be downloaded, classified by what the caller
/// must do about it. No variant's text contains the URL's query or userinfo.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The URL, a redirect, an address or the size is against the policy:
    /// never retry, the same URL will be refused again.
    #[error("recording download refused: {reason}")]
    Refused { reason: String },
    /// The server answered with an error status. The caller decides: 403 or
    /// 404 after the link's expiry means expired; 5xx and 429 are transient.
    #[error("recording server answered {status}")]
    Status { status: StatusCode },
    /// Connecting, resolving or reading failed or timed out: retry later.
    #[error("recording download failed, worth retrying: {reason}")]
    Transient { reason: String },
    /// The policy or the HTTP client is unusable (at start-up, not per URL).
    #[error("recording source could not be built: {reason}")]
    Setup { reason: String },
}

impl SourceError {
    /// Whether trying the same URL again later may succeed: connection
    /// failures and timeouts, and the statuses that mean "not now" (5xx,
    /// 429, 408).
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Transient { .. } => true,
            SourceError::Status { status } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            SourceError::Refused { .. } | SourceError::Setup { .. } => false,
        }
    }

    fn refused(reason: impl Into<String>) -> Self {
        SourceError::Refused {
            reason: reason.into(),
        }
    }
}

/// The URL without what authorises it: query (`X-Amz-Signature`), fragment
/// and userinfo removed, for logs and traces. A string that does not parse
/// is not echoed at all, since we cannot tell where its credential is.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.set_fragment(None);
            // Both fail only for URLs that cannot have userinfo at all.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => format!("<unparseable URL of {} bytes>", url.len()),
    }
}

/// The query parameters that authorise a pre-signed link (SigV4's, and
/// GCS's and Azure's equivalents).
const SECRET_PARAMETERS: [&str; 5] = [
    "x-amz-signature=",
    "x-amz-credential=",
    "x-amz-security-token=",
    "x-goog-signature=",
    "sig=",
];

/// `text` with the value of every link-authorising query parameter
/// replaced by `REDACTED`, wherever it appears: for text that is no URL
/// (a dead letter's raw body, a nested field) where `redact` cannot apply.
pub fn redact_link_secrets(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while at < text.len() {
        let found = SECRET_PARAMETERS
            .iter()
            .filter_map(|name| {
                lower[at..]
                    .find(name)
                    .map(|offset| (at + offset, name.len()))
            })
            .min();
        let Some((start, name_len)) = found else {
            break;
        };
        let value_start = start + name_len;
        let value_end = text[value_start..]
            .find(|c: char| matches!(c, '&' | '"' | '\'' | '#' | '\\') || c.is_whitespace())
            .map_or(text.len(), |offset| value_start + offset);
        // `sig=` inside a longer name (`x-sig=`) is not Azure's.
        let own_name = name_len != 4
            || start == 0
            || matches!(text.as_bytes()[start - 1], b'?' | b'&' | b';' | b'"' | b' ');
        if own_name && value_end > value_start {
            out.push_str(&text[copied..value_start]);
            out.push_str("REDACTED");
            copied = value_end;
        }
        at = value_end.max(value_start);
    }
    out.push_str(&text[copied..]);
    out
}

/// Downloads recordings under one [`SourcePolicy`]. Build once and share:
/// it holds the connection pool.
#[derive(Debug)]
pub struct RecordingSource {
    client: Client,
    targets: Arc<TargetRules>,
    max_bytes: u64,
    low_speed: LowSpeedLimit,
}

impl RecordingSource {
    /// A source for `policy`; fails on an unusable `allowed_hosts` entry or
    /// if the TLS backend cannot start.
    pub fn new(policy: &SourcePolicy) -> Result<Self, SourceError> {
        let permits = if policy.allow_private_networks {
            any_address
        } else {
            is_public
        };
        // Test and dev servers live on loopback at ephemeral ports.
        let any_port = policy.allow_private_networks;
        Self::build(policy, permits, any_port, Vec::new())
    }

    /// `new` with the address and port rules given
    /// (`policy.allow_private_networks` is not read) and extra trusted
    /// roots: the seams tests use to reach servers that can only live on
    /// loopback.
    fn build(
        policy: &SourcePolicy,
        permits: fn(IpAddr) -> bool,
        any_port: bool,
        extra_roots: Vec<Certificate>,
    ) -> Result<Self, SourceError> {
        let hosts = policy
            .allowed_hosts
            .iter()
            .map(|pattern| HostPattern::parse(pattern))
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err(SourceError::Setup {
                reason: "allowed_hosts is empty: every recording would be refused".to_owned(),
            });
        }
        let targets = Arc::new(TargetRules {
            hosts,
            allow_plain_http: policy.allow_plain_http,
            any_port,
            permits,
        });
        let client = Client::builder()
            .tls_backend_native()
            .tls_certs_merge(extra_roots)
            // A proxy from HTTPS_PROXY would connect for us, past the
            // resolver that checks the addresses.
            .no_proxy()
            .dns_resolver(PublicOnlyResolver { permits })
            .redirect(redirect_policy(Arc::clone(&targets)))
            // reqwest's Referer keeps the query: it would hand the
            // signature to whatever host the redirect names.
            .referer(false)
            // A second guard: TargetRules already refuses http.
            .https_only(!policy.allow_plain_http)
            .connect_timeout(policy.connect_timeout)
            .read_timeout(policy.read_timeout)
            .user_agent(concat!("superfone-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| SourceError::Setup {
                reason: describe(&error.without_url()),
            })?;
        Ok(RecordingSource {
            client,
            targets,
            max_bytes: policy.max_bytes,
            low_speed: policy.low_speed,
        })
    }

    /// Requests `url` and returns its body unread, once the answer is a
    /// success whose declared length (if any) is within `max_bytes`.
    pub async fn open(&self, url: &str) -> Result<Download, SourceError> {
        // The url crate's messages never quote the input.
        let url = Url::parse(url)
            .map_err(|error| SourceError::refused(format!("not a valid URL ({error})")))?;
        self.targets.check(&url)?;
        let response = self.client.get(url).send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(SourceError::Status { status });
        }
        let content_length = response.content_length();
        if let Some(declared) = content_length.filter(|&length| length > self.max_bytes) {
            return Err(SourceError::refused(format!(
                "declared Content-Length {declared} is over max_bytes ({})",
                self.max_bytes
            )));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(Download {
            response,
            content_type,
            content_length,
            received: 0,
            max_bytes: self.max_bytes,
            low_speed: self.low_speed,
            window_started: Instant::now(),
            window_bytes: 0,
        })
    }
}

/// A recording's body, read a chunk at a time: never held whole.
pub struct Download {
    response: Response,
    content_type: Option<String>,
    content_length: Option<u64>,
    received: u64,
    max_bytes: u64,
    low_speed: LowSpeedLimit,
    window_started: Instant,
    window_bytes: u64,
}

impl Download {
    /// The `Content-Type` the server declared, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The `Content-Length` the server declared, if any (already within
    /// `max_bytes`).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The next piece of the body, `None` at its end. After an error the
    /// download is finished: drop it.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        let Some(chunk) = self.response.chunk().await.map_err(classify)? else {
            return Ok(None);
        };
        self.received += chunk.len() as u64;
        if self.received > self.max_bytes {
            return Err(SourceError::refused(format!(
                "the body grew past max_bytes ({})",
                self.max_bytes
            )));
        }
        self.check_speed(chunk.len() as u64)?;
        Ok(Some(chunk))
    }

    /// Fails a body slower than `low_speed`, counted in whole windows.
    fn check_speed(&mut self, bytes: u64) -> Result<(), SourceError> {
        self.window_bytes += bytes;
        if self.window_started.elapsed() < self.low_speed.window {
            return Ok(());
        }
        if self.window_bytes < self.low_speed.bytes {
            return Err(SourceError::Transient {
                reason: format!(
                    "the body came slower than {} bytes in {:?} ({} bytes)",
                    self.low_speed.bytes, self.low_speed.window, self.window_bytes
                ),
            });
        }
        self.window_started = Instant::now();
        self.window_bytes = 0;
        Ok(())
    }

    /// The body as a stream, for uploaders that take one; it ends after
    /// the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, SourceError>> + Send + 'static {
        futures::stream::try_unfold(self, |mut download| async move {
            let chunk = download.next_chunk().await?;
            Ok(chunk.map(|chunk| (chunk, download)))
        })
    }
}

// By hand: reqwest's `Response` prints its URL, signature included.
impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("status", &self.response.status())
            .field("content_type", &self.content_type)
            .field("content_length", &self.content_length)
            .field("received", &self.received)
            .finish()
    }
}

/// The checks every URL gets before a request is sent to it, the first
/// and each redirect alike.
#[derive(Debug)]
struct TargetRules {
    hosts: Vec<HostPattern>,
    allow_plain_http: bool,
    /// Whether a URL may name a port other than its scheme's (443, 80):
    /// not in production, where an allowed host's other ports are no
    /// object store's, and probing them is what an SSRF is for.
    any_port: bool,
    /// Whether an address may be connected to: [`is_public`] in production.
    permits: fn(IpAddr) -> bool,
}

impl TargetRules {
    fn check(&self, url: &Url) -> Result<(), SourceError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_plain_http => {}
            other => {
                return Err(SourceError::refused(format!(
                    "scheme {other:?} is not allowed (https only)"
                )))
            }
        }
        // Userinfo has no business in a pre-signed URL, and `a.com@b.com`
        // is the classic way to make a reader see the wrong host.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SourceError::refused("userinfo in the URL is not allowed"));
        }
        let host = UrlHost::of(url).ok_or_else(|| SourceError::refused("the URL has no host"))?;
        // The URL parser keeps `.a.com` and `x..a.com`; no real name has an
        // empty label, and `.a.com` would otherwise be a subdomain of a.com.
        if host.address.is_none() && host.normalized.split('.').any(str::is_empty) {
            return Err(SourceError::refused(format!(
                "host {:?} has an empty label",
                host.normalized
            )));
        }
        if !self.hosts.iter().any(|pattern| pattern.matches(&host)) {
            return Err(SourceError::refused(format!(
                "host {:?} is not in allowed_hosts",
                host.normalized
            )));
        }
        // An IP literal never reaches the resolver, so its address is
        // checked here.
        if let Some(address) = host.address.filter(|&address| !(self.permits)(address)) {
            return Err(SourceError::refused(format!(
                "address {address} is not a public address"
            )));
        }
        // `port()` is `None` for the scheme's own port, spelled or not.
        match url.port().filter(|_| !self.any_port) {
            Some(port) => Err(SourceError::refused(format!(
                "port {port} is not allowed (only the scheme's own)"
            ))),
            None => Ok(()),
        }
    }
}

/// A URL's host as the rules compare it. `reqwest::Url` has already applied
/// IDNA (punycode), lower-cased names and rewritten every IPv4 spelling
/// (`0x7f.1`, `2130706433`) to dotted quads, so this is the host reqwest
/// will connect to.
#[derive(Debug)]
struct UrlHost {
    /// Names lose one trailing dot (the same host in DNS); IPv6 keeps its
    /// brackets.
    normalized: String,
    /// Set when the host is an IP literal.
    address: Option<IpAddr>,
}

impl UrlHost {
    fn of(url: &Url) -> Option<Self> {
        let host = url.host_str()?;
        let address = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        };
        let normalized = match address {
            Some(_) => host.to_owned(),
            None => host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
        };
        Some(UrlHost {
            normalized,
            address,
        })
    }
}

/// One `allowed_hosts` entry, normalised the way URLs' hosts are.
#[derive(Debug, PartialEq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    AnySubdomainOf(String),
}

impl HostPattern {
    fn parse(pattern: &str) -> Result<Self, SourceError> {
        let invalid = |why: &str| SourceError::Setup {
            reason: format!("allowed_hosts entry {pattern:?} {why}"),
        };
        let (wildcard, name) = match pattern.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, pattern),
        };
        let bracketed_ipv6 = name.starts_with('[') && name.ends_with(']');
        let stray = name.contains(['*', '/', '\\', '@', '?', '#', '%', ' '])
            || (name.contains(':') && !bracketed_ipv6);
        if name.is_empty() || stray {
            return Err(invalid("is neither a host nor *.domain"));
        }
        // Through the URL parser, so IDNA, case and IPv4 spellings come out
        // exactly as they will for a URL naming the same host.
        let parsed = Url::parse(&format!("https://{name}/"))
            .map_err(|error| invalid(&format!("is not a valid host ({error})")))?;
        let host = UrlHost::of(&parsed).ok_or_else(|| invalid("has no host"))?;
        Ok(match (wildcard, host.address) {
            (true, Some(_)) => return Err(invalid("puts a wildcard on an IP address")),
            (true, None) => HostPattern::AnySubdomainOf(format!(".{}", host.normalized)),
            (false, _) => HostPattern::Exact(host.normalized),
        })
    }

    fn matches(&self, host: &UrlHost) -> bool {
        match self {
            HostPattern::Exact(exact) => host.normalized == *exact,
            // An IP literal never matches: a pattern whose last label is
            // numeric parses as IPv4 and was refused as a wildcard.
            HostPattern::AnySubdomainOf(suffix) => host
                .normalized
                .strip_suffix(suffix.as_str())
                .is_some_and(|subdomain| !subdomain.is_empty()),
        }
    }
}

/// Follows a redirect only to a place the first URL could have named.
fn redirect_policy(targets: Arc<TargetRules>) -> redirect::Policy {
    redirect::Policy::custom(move |attempt| {
        // `previous` holds the first URL and every hop followed so far.
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(SourceError::refused(format!(
                "more than {MAX_REDIRECTS} redirects"
            )));
        }
        match targets.check(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refusal) => attempt.error(refusal),
        }
    })
}

/// The connector's resolver: the addresses it returns are the ones
/// connected to, so checking here leaves no gap for DNS rebinding.
struct PublicOnlyResolver {
    permits: fn(IpAddr) -> bool,
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let permits = self.permits;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addresses = screen_addresses(&host, found.collect(), permits)?;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// A resolution passes only whole: one non-public address among public ones
/// is how a rebinding name gets a chance at the inside.
fn screen_addresses(
    host: &str,
    addresses: Vec<SocketAddr>,
    permits: fn(IpAddr) -> bool,
) -> Result<Vec<SocketAddr>, SourceError> {
    if addresses.is_empty() {
        return Err(SourceError::Transient {
            reason: format!("{host:?} resolved to no address"),
        });
    }
    match addresses.iter().find(|address| !permits(address.ip())) {
        Some(address) => Err(SourceError::refused(format!(
            "{host:?} resolves to {}, which is not a public address",
            address.ip()
        ))),
        None => Ok(addresses),
    }
}

fn any_address(_: IpAddr) -> bool {
    true
}

/// IPv4 networks that are not the public internet (IANA's special-purpose
/// address registry, RFC 6890 and its successors).
const NON_PUBLIC_V4: &[(Ipv4Addr, u32)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", unspecified
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // CGNAT, RFC 6598
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // RFC 1918
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// The parts of IPv6 global unicast (2000::/3) that are not public.
const NON_PUBLIC_V6_IN_GLOBAL_UNICAST: &[(Ipv6Addr, u32)] = &[
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF assignments, Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4: a tunnel to any IPv4
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation, RFC 9637
];

/// NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4
/// address the gateway connects to.
const NAT64: (Ipv6Addr, u32) = (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);

/// Whether connecting to `address` reaches the public internet. IPv6 is
/// judged by allow-list (global unicast only, so loopback, unspecified,
/// fc00::/7, fe80::/10, multicast and the deprecated forms all fail), and
/// addresses that carry an IPv4 address (mapped, NAT64) by that address.
fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            if in_v6_network(v6, NAT64) {
                return is_public_v4(Ipv4Addr::from(u128::from(v6) as u32));
            }
            let global_unicast = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);
            in_v6_network(v6, global_unicast)
                && !NON_PUBLIC_V6_IN_GLOBAL_UNICAST
                    .iter()
                    .any(|&network| in_v6_network(v6, network))
        }
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    !NON_PUBLIC_V4.iter().any(|&(network, prefix)| {
        let mask = u32::MAX << (32 - prefix);
        u32::from(address) & mask == u32::from(network) & mask
    })
}

fn in_v6_network(address: Ipv6Addr, (network, prefix): (Ipv6Addr, u32)) -> bool {
    let mask = u128::MAX << (128 - prefix);
    u128::from(address) & mask == u128::from(network) & mask
}

/// Sorts a reqwest failure by what the caller must do. A refusal raised
/// inside reqwest (by the resolver or the redirect policy) travels as the
/// error's source and comes back out as itself.
fn classify(error: reqwest::Error) -> SourceError {
    // reqwest prints the URL, and the URL carries the signature.
    let error = error.without_url();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(ours) = current.downcast_ref::<SourceError>() {
            return ours.clone();
        }
        cause = current.source();
    }
    let reason = describe(&error);
    if error.is_builder() || error.is_redirect() {
        SourceError::Refused { reason }
    } else {
        SourceError::Transient { reason }
    }
}

/// An error and its causes on one line, `outer: inner: root`.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        text.push_str(": ");
        text.push_str(&current.to_string());
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    //! Every rule is attacked through a real connection where one can be
    //! made. All test servers live on loopback, which the production address
    //! rule refuses, so: the rule itself is tested on a table; "refused with
    //! zero connections" is tested with the real rule against a loopback
    //! listener; and the plumbing (redirects, the resolver) is tested with
    //! an injected rule that calls one loopback address private and another
    //! public (127.0.0.2 is loopback too on Linux).

    use super::*;
    use futures::StreamExt;
    use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::header::{CONTENT_LENGTH, LOCATION, REFERER};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::Request;
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    type TestBody = BoxBody<Bytes, std::io::Error>;
    type Answer = hyper::Response<TestBody>;
    type Handler = Arc<dyn Fn(&Request<Incoming>) -> Answer + Send + Sync>;

    /// Stands for the credential in a pre-signed URL's query.
    const SECRET: &str = "5ec7e75ec7e7";

    fn signed(url: String) -> String {
        format!("{url}?X-Amz-Expires=3600&X-Amz-Signature={SECRET}")
    }

    /// A request as a test server saw it.
    #[derive(Debug, Clone)]
    struct SeenRequest {
        target: String,
        referer: Option<String>,
    }

    /// A local HTTP(S) server that counts the connections and requests
    /// reaching it, so a test can assert that none did.
    struct TestServer {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<SeenRequest>>>,
    }

    impl TestServer {
        async fn start(
            ip: &str,
            handler: impl Fn(&Request<Incoming>) -> Answer + Send + Sync + 'static,
        ) -> Self {
            Self::spawn(ip, None, Arc::new(handler)).await
        }

        async fn start_tls(
            ip: &str,
            acceptor: TlsAcceptor,
            handler: impl Fn(&Request<Incoming>) -> Answer + Send + Sync + 'static,
        ) -> Self {
            Self::spawn(ip, Some(acceptor), Arc::new(handler)).await
        }

        async fn spawn(ip: &str, acceptor: Option<TlsAcceptor>, handler: Handler) -> Self {
            let listener = TcpListener::bind((ip, 0)).await.unwrap();
            let server = TestServer {
                addr: listener.local_addr().unwrap(),
                connections: Arc::default(),
                seen: Arc::default(),
            };
            tokio::spawn(accept_loop(
                listener,
                acceptor,
                handler,
                Arc::clone(&server.connections),
                Arc::clone(&server.seen),
            ));
            server
        }

        /// `http://{host}:{port}{path}`: the host as the URL spells it.
        fn url(&self, host: &str, path: &str) -> String {
            format!("http://{host}:{}{path}", self.addr.port())
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        fn seen(&self) -> Vec<SeenRequest> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn accept_loop(
        listener: TcpListener,
        acceptor: Option<TlsAcceptor>,
        handler: Handler,
        connections: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<SeenRequest>>>,
    ) {
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (handler, seen, acceptor) =
                (Arc::clone(&handler), Arc::clone(&seen), acceptor.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    seen.lock().unwrap().push(SeenRequest {
                        target: request.uri().to_string(),
                        referer: request
                            .headers()
                            .get(REFERER)
                            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
                    });
                    let answer = handler(&request);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let http = http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    }

    /// Accepts connections and never says a word.
    async fn silent_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    fn full(bytes: impl Into<Bytes>) -> TestBody {
        Full::new(bytes.into())
            .map_err(|never| match never {})
            .boxed()
    }

    /// 200 with the body and its Content-Length.
    fn ok(bytes: impl Into<Bytes>) -> Answer {
        hyper::Response::new(full(bytes))
    }

    fn status(code: u16) -> Answer {
        let mut answer = ok("");
        *answer.status_mut() = StatusCode::from_u16(code).unwrap();
        answer
    }

    fn redirect_to(location: &str) -> Answer {
        let mut answer = status(302);
        answer
            .headers_mut()
            .insert(LOCATION, location.parse().unwrap());
        answer
    }

    /// 200 with a chunked body (no Content-Length) of `chunks` pieces.
    fn chunked(chunks: usize, size: usize) -> Answer {
        let pieces = (0..chunks).map(move |_| Ok(Frame::data(Bytes::from(vec![b'r'; size]))));
        hyper::Response::new(BodyExt::boxed(StreamBody::new(futures::stream::iter(
            pieces,
        ))))
    }

    /// 200 declaring `declared` bytes, sending `first` and then nothing.
    fn stalls_after(first: &'static [u8], declared: u64) -> Answer {
        let frames = futures::stream::iter([Ok(Frame::data(Bytes::from_static(first)))])
            .chain(futures::stream::pending());
        let mut answer = hyper::Response::new(BodyExt::boxed(StreamBody::new(frames)));
        answer
            .headers_mut()
            .insert(CONTENT_LENGTH, declared.to_string().parse().unwrap());
        answer
    }

    /// A body of `total` bytes, one byte every `every`: inside any read
    /// timeout, and far below any useful speed.
    fn trickles(total: usize, every: Duration) -> Answer {
        let frames = futures::stream::unfold(0, move |sent| async move {
            if sent == total {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Frame::data(Bytes::from_static(b"x"))), sent + 1))
        });
        hyper::Response::new(BodyExt::boxed(StreamBody::new(frames)))
    }

    /// A policy for loopback test servers: private addresses and plain
    /// http allowed, so each test takes away the one it attacks.
    fn local_policy(hosts: &[&str]) -> SourcePolicy {
        SourcePolicy {
            allowed_hosts: hosts.iter().map(|host| host.to_string()).collect(),
            allow_private_networks: true,
            allow_plain_http: true,
            max_bytes: 1 << 20,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            low_speed: LowSpeedLimit {
                bytes: 1,
                window: Duration::from_secs(60),
            },
        }
    }

    fn source(policy: &SourcePolicy) -> RecordingSource {
        RecordingSource::new(policy).unwrap()
    }

    async fn read_all(download: Download) -> Result<Vec<u8>, SourceError> {
        let mut body = Vec::new();
        let mut chunks = std::pin::pin!(download.into_stream());
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(body)
    }

    fn refusal(result: Result<Download, SourceError>) -> String {
        match result {
            Err(SourceError::Refused { reason }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Calls 127.0.0.2 private and every other address public.
    fn all_but_127_0_0_2(address: IpAddr) -> bool {
        address != IpAddr::from([127, 0, 0, 2])
    }

    /// Calls only 127.0.0.2 public.
    fn only_127_0_0_2(address: IpAddr) -> bool {
        address == IpAddr::from([127, 0, 0, 2])
    }

    /// A CA the test client trusts and a server certificate for
    /// `localhost` it signed.
    fn tls_for_localhost() -> (TlsAcceptor, Certificate) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "recording source test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let root = Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap();
        (TlsAcceptor::from(Arc::new(config)), root)
    }

    #[test]
    fn the_address_rule_sorts_public_from_the_rest() {
        let public = [
            "8.8.8.8 52.216.1.1 11.0.0.1 223.255.255.255",
            // just outside CGNAT, RFC 1918, benchmarking
            "100.63.255.255 100.128.0.0 172.15.255.255 172.32.0.0 192.167.255.255",
            "192.169.0.1 198.17.255.255 198.20.0.0",
            "2600:1f18::1 2a00:1450:4001::1 ::ffff:8.8.8.8 64:ff9b::808:808",
        ];
        let not_public = [
            "0.0.0.0 0.1.2.3 127.0.0.1 127.255.255.254 255.255.255.255",
            "10.0.0.1 10.255.255.255 172.16.0.1 172.31.255.255 192.168.1.1",
            "100.64.0.1 100.127.255.255 169.254.169.254 169.254.0.1",
            "192.0.0.1 192.0.2.1 192.88.99.1 198.18.0.1 198.19.255.255 198.51.100.1",
            "203.0.113.1 224.0.0.1 239.255.255.250 240.0.0.1",
            ":: ::1 fc00::1 fd12:3456::1 fe80::1 febf::1 fec0::1 ff02::1 ff0e::1",
            "100::1 2001::1 2001:db8::1 2002:7f00:1::1 3fff::1 ::127.0.0.1",
            // IPv4 inside IPv6: mapped and NAT64
            "::ffff:127.0.0.1 ::ffff:169.254.169.254 ::ffff:10.0.0.1 ::ffff:100.64.0.1",
            "::ffff:0.0.0.0 ::ffff:255.255.255.255",
            "64:ff9b::a9fe:a9fe 64:ff9b::7f00:1 64:ff9b:1::1",
        ];
        let expected = (public.iter().map(|group| (group, true)))
            .chain(not_public.iter().map(|group| (group, false)))
            .flat_map(|(group, public)| group.split_whitespace().map(move |text| (text, public)));
        let wrong: Vec<_> = expected
            .filter(|(text, public)| is_public(text.parse().unwrap()) != *public)
            .collect();
        assert!(
            wrong.is_empty(),
            "misjudged (address, expected public): {wrong:?}"
        );
    }

    #[test]
    fn a_resolution_passes_only_if_every_address_is_public() {
        let at = |text: &str| SocketAddr::new(text.parse().unwrap(), 0);
        let public = vec![at("8.8.8.8"), at("2600:1f18::1")];
        assert_eq!(
            screen_addresses("r.example", public.clone(), is_public).unwrap(),
            public
        );
        // A rebinding name answers with a public address and an inside one.
        for inside in ["127.0.0.1", "169.254.169.254", "::ffff:10.0.0.1", "fd00::2"] {
            let mixed = vec![at("8.8.8.8"), at(inside)];
            match screen_addresses("r.example", mixed, is_public) {
                Err(SourceError::Refused { reason }) => assert!(reason.contains(inside)),
                other => panic!("{inside} among public addresses passed: {other:?}"),
            }
        }
        let nothing = screen_addresses("r.example", Vec::new(), is_public);
        assert!(matches!(nothing, Err(SourceError::Transient { .. })));
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
        let resolver = PublicOnlyResolver { permits: is_public };
        let error = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addresses) => panic!("resolved to {:?}", addresses.collect::<Vec<_>>()),
            Err(error) => error,
        };
        assert!(
            matches!(error.downcast_ref(), Some(SourceError::Refused { .. })),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_before_connecting() {
        let server = TestServer::start("127.0.0.1", |_| ok("recording")).await;
        let policy = SourcePolicy {
            allow_private_networks: false,
            ..local_policy(&["localhost"])
        };
        // Any port, so that only the address stands in the way.
        let guarded = RecordingSource::build(&policy, is_public, true, Vec::new()).unwrap();
        for host in ["localhost", "LOCALHOST"] {
            let reason = refusal(guarded.open(&server.url(host, "/r.mp3")).await);
            assert!(reason.contains("not a public address"), "{reason}");
        }
        assert_eq!(server.connections(), 0);
        // The control: with private networks allowed, the same URL is fetched.
        let allowed = source(&local_policy(&["localhost"]));
        let download = allowed.open(&server.url("localhost", "/r.mp3")).await;
        assert_eq!(read_all(download.unwrap()).await.unwrap(), b"recording");
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn an_ip_literal_is_refused_before_connecting() {
        let server = TestServer::start("127.0.0.1", |_| ok("recording")).await;
        let policy = SourcePolicy {
            allow_private_networks: false,
            ..local_policy(&["127.0.0.1", "[::ffff:127.0.0.1]"])
        };
        let guarded = RecordingSource::build(&policy, is_public, true, Vec::new()).unwrap();
        // Every spelling of 127.0.0.1 the URL parser accepts.
        for host in [
            "127.0.0.1",
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
            "[::ffff:127.0.0.1]",
        ] {
            let reason = refusal(guarded.open(&server.url(host, "/r.mp3")).await);
            assert!(reason.contains("not a public address"), "{host}: {reason}");
        }
        assert_eq!(server.connections(), 0);
        let allowed = source(&local_policy(&["127.0.0.1"]));
        let download = allowed.open(&server.url("0x7f.1", "/r.mp3")).await;
        assert_eq!(read_all(download.unwrap()).await.unwrap(), b"recording");
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn only_https_unless_plain_http_is_allowed() {
        let server = TestServer::start("127.0.0.1", |_| ok("recording")).await;
        let policy = SourcePolicy {
            allow_plain_http: false,
            ..local_policy(&["localhost", "127.0.0.1"])
        };
        let refused = [
            server.url("localhost", "/r.mp3"),
            server.url("127.0.0.1", "/r.mp3"),
            server
                .url("LOCALHOST", "/r.mp3")
                .replacen("http", "HTTP", 1),
            "file:///etc/passwd".to_owned(),
            format!("ftp://localhost:{}/r.mp3", server.addr.port()),
            format!("gopher://localhost:{}/", server.addr.port()),
            format!("ws://localhost:{}/", server.addr.port()),
            "data:audio/mpeg;base64,AAAA".to_owned(),
        ];
        for url in &refused {
            let reason = refusal(source(&policy).open(url).await);
            assert!(reason.contains("(https only)"), "{url}: {reason}");
        }
        assert_eq!(server.connections(), 0);
        let allowed = source(&local_policy(&["localhost"]));
        assert!(allowed
            .open(&server.url("localhost", "/r.mp3"))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn https_downloads_and_a_redirect_down_to_http_is_refused() {
        let (acceptor, test_ca) = tls_for_localhost();
        let plain = TestServer::start("127.0.0.1", |_| ok("downgraded")).await;
        let downgrade = plain.url("localhost", "/r.mp3");
        let secure = TestServer::start_tls("127.0.0.1", acceptor, move |request| {
            match request.uri().path() {
                "/downgrade" => redirect_to(&downgrade),
                _ => ok("over tls"),
            }
        })
        .await;
        let https = |path: &str| format!("https://localhost:{}{path}", secure.addr.port());
        let policy = SourcePolicy {
            allow_plain_http: false,
            ..local_policy(&["localhost"])
        };
        let source = RecordingSource::build(&policy, any_address, true, vec![test_ca]).unwrap();
        let download = source.open(&https("/r.mp3")).await.unwrap();
        assert_eq!(read_all(download).await.unwrap(), b"over tls");
        let reason = refusal(source.open(&https("/downgrade")).await);
        assert!(reason.contains("(https only)"), "{reason}");
        assert_eq!(plain.connections(), 0);
        // Without the test CA the certificate is not trusted.
        let untrusting = RecordingSource::build(&policy, any_address, true, Vec::new()).unwrap();
        assert!(untrusting.open(&https("/r.mp3")).await.is_err());
    }

    #[test]
    fn host_patterns_are_normalised_like_url_hosts() {
        let exact = |host: &str| HostPattern::Exact(host.to_owned());
        let cases = [
            (
                "Recordings.S3.AmazonAWS.com.",
                exact("recordings.s3.amazonaws.com"),
            ),
            (
                "*.AmazonAWS.com",
                HostPattern::AnySubdomainOf(".amazonaws.com".to_owned()),
            ),
            ("bücher.example", exact("xn--bcher-kva.example")),
            ("0x7f.1", exact("127.0.0.1")),
            ("[::FFFF:127.0.0.1]", exact("[::ffff:7f00:1]")),
        ];
        for (pattern, expected) in cases {
            assert_eq!(HostPattern::parse(pattern).unwrap(), expected, "{pattern}");
        }
        let unusable = [
            "",
            "*",
            "*.",
            "a.*.com",
            "*a.com",
            "a.com/x",
            "a.com:443",
            "user@a.com",
            "https://a.com",
            "*.127.0.0.1",
            "a.com?x",
            "[::1]:443",
        ];
        for pattern in unusable {
            let built = RecordingSource::new(&local_policy(&[pattern]));
            assert!(
                matches!(built, Err(SourceError::Setup { .. })),
                "{pattern:?}"
            );
        }
        // The matcher alone, without the empty-label rule in front of it.
        let wildcard = HostPattern::parse("*.blob.core.windows.net").unwrap();
        let named = |name: &str| UrlHost {
            normalized: name.to_owned(),
            address: None,
        };
        assert!(wildcard.matches(&named("a.blob.core.windows.net")));
        assert!(!wildcard.matches(&named("blob.core.windows.net")));
        assert!(!wildcard.matches(&named(".blob.core.windows.net")));
        assert!(!wildcard.matches(&named("ablob.core.windows.net")));
        let nothing = RecordingSource::new(&local_policy(&[]));
        assert!(matches!(nothing, Err(SourceError::Setup { .. })));
    }

    #[tokio::test]
    async fn host_tricks_do_not_pass_the_allow_list() {
        let policy = SourcePolicy {
            allow_plain_http: false,
            allow_private_networks: false,
            ..local_policy(&["recordings.s3.amazonaws.com", "*.blob.core.windows.net"])
        };
        let rules = &source(&policy).targets;
        let passes = [
            "https://recordings.s3.amazonaws.com/r.mp3",
            "https://Recordings.S3.AMAZONAWS.com./r.mp3",
            // Fullwidth letters: IDNA maps them to the same ASCII host.
            "https://ｒｅｃｏｒｄｉｎｇｓ.s3.amazonaws.com/r.mp3",
            "https://account.blob.core.windows.net/c/r.mp3",
            "https://a.b.blob.core.windows.net/r.mp3",
        ];
        for url in passes {
            let checked = rules.check(&Url::parse(url).unwrap());
            assert!(checked.is_ok(), "{url}: {checked:?}");
        }
        let refused = [
            "https://recordings.s3.amazonaws.com.evil.example/r.mp3",
            "https://recordings.s3.amazonaws.com../r.mp3",
            "https://xrecordings.s3.amazonaws.com/r.mp3",
            "https://recordings.s3.amazonaws.com%2eevil.example/r.mp3",
            "https://recordings.s3.amazonaws.com:443.evil.example/r.mp3",
            "https://evil.example/recordings.s3.amazonaws.com",
            "https://evil.example?.recordings.s3.amazonaws.com",
            "https://evil.example#@recordings.s3.amazonaws.com",
            "https://evil.example\\@recordings.s3.amazonaws.com/",
            "https://recordings.s3.amazonaws.com@evil.example/",
            "https://user@recordings.s3.amazonaws.com/r.mp3",
            "https://:pass@recordings.s3.amazonaws.com/r.mp3",
            // Cyrillic а in "amаzonaws": punycode, a different host.
            "https://recordings.s3.amаzonaws.com/r.mp3",
            "https://blob.core.windows.net/r.mp3",
            "https://.blob.core.windows.net/r.mp3",
            "https://..blob.core.windows.net/r.mp3",
            "https://x..blob.core.windows.net/r.mp3",
            "https://evilblob.core.windows.net/r.mp3",
            "https:///r.mp3",
        ];
        for url in refused {
            // Checked without a request, so nothing here depends on DNS; a
            // URL the parser rejects is refused by `open` before any lookup.
            let result = match Url::parse(url) {
                Ok(parsed) => rules.check(&parsed),
                Err(_) => source(&policy).open(url).await.map(drop),
            };
            assert!(
                matches!(result, Err(SourceError::Refused { .. })),
                "{url}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn userinfo_is_refused_before_connecting() {
        let server = TestServer::start("127.0.0.1", |_| ok("recording")).await;
        let allowed = local_policy(&["localhost"]);
        for userinfo in ["user@", "user:password@", ":password@"] {
            let url = server.url(&format!("{userinfo}localhost"), "/r.mp3");
            let reason = refusal(source(&allowed).open(&url).await);
            assert!(reason.contains("userinfo"), "{reason}");
        }
        assert_eq!(server.connections(), 0);
    }

    #[tokio::test]
    async fn a_redirect_to_an_unlisted_host_or_scheme_is_refused() {
        let target = TestServer::start("127.0.0.1", |_| ok("stolen")).await;
        let unlisted = target.url("127.0.0.1", "/stolen");
        let userinfo = target.url("user@localhost", "/stolen");
        let ftp = format!("ftp://localhost:{}/stolen", target.addr.port());
        let origin = TestServer::start("127.0.0.1", move |request| match request.uri().path() {
            "/to-unlisted" => redirect_to(&unlisted),
            "/to-userinfo" => redirect_to(&userinfo),
            _ => redirect_to(&ftp),
        })
        .await;
        let source = source(&local_policy(&["localhost"]));
        for (path, why) in [
            ("/to-unlisted", "not in allowed_hosts"),
            ("/to-userinfo", "userinfo"),
            ("/to-ftp", "(https only)"),
        ] {
            let reason = refusal(source.open(&origin.url("localhost", path)).await);
            assert!(reason.contains(why), "{path}: {reason}");
        }
        assert_eq!(origin.seen().len(), 3);
        assert_eq!(target.connections(), 0);
    }

    #[tokio::test]
    async fn another_port_of_an_allowed_host_is_refused_directly_or_by_redirect() {
        let target = TestServer::start("127.0.0.1", |_| ok("probed")).await;
        let other_port = target.url("localhost", "/probed");
        let origin = TestServer::start("127.0.0.1", move |_| redirect_to(&other_port)).await;
        // Production's port rule, with loopback let through so that only
        // the port stands in the way.
        let policy = local_policy(&["localhost"]);
        let source = RecordingSource::build(&policy, any_address, false, Vec::new()).unwrap();
        let direct = refusal(source.open(&target.url("localhost", "/probed")).await);
        assert!(direct.contains("port"), "{direct}");
        assert_eq!(target.connections(), 0);
        let refused = source.open("http://localhost:80/x").await;
        assert!(
            !matches!(&refused, Err(SourceError::Refused { reason }) if reason.contains("port")),
            "the scheme's own port, spelled out, is no other port: {refused:?}"
        );
        let origin_url = origin.url("localhost", "/r.mp3");
        let refused = refusal(source.open(&origin_url).await);
        assert!(refused.contains("port"), "{refused}");
    }

    #[tokio::test]
    async fn a_redirect_to_a_forbidden_ip_literal_is_refused() {
        let inside = TestServer::start("127.0.0.2", |_| ok("metadata")).await;
        let inside_url = inside.url("127.0.0.2", "/latest/meta-data");
        let origin = TestServer::start("127.0.0.1", move |_| redirect_to(&inside_url)).await;
        let policy = local_policy(&["127.0.0.1", "127.0.0.2"]);
        let source = RecordingSource::build(&policy, all_but_127_0_0_2, true, Vec::new()).unwrap();
        let reason = refusal(source.open(&origin.url("127.0.0.1", "/r.mp3")).await);
        assert!(
            reason.contains("127.0.0.2 is not a public address"),
            "{reason}"
        );
        assert_eq!(origin.seen().len(), 1);
        assert_eq!(inside.connections(), 0);
    }

    #[tokio::test]
    async fn a_redirect_to_a_name_resolving_to_a_forbidden_address_is_refused() {
        let inside = TestServer::start("127.0.0.1", |_| ok("metadata")).await;
        let inside_url = inside.url("localhost", "/latest/meta-data");
        let origin = TestServer::start("127.0.0.2", move |_| redirect_to(&inside_url)).await;
        let policy = local_policy(&["127.0.0.2", "localhost"]);
        let source = RecordingSource::build(&policy, only_127_0_0_2, true, Vec::new()).unwrap();
        let reason = refusal(source.open(&origin.url("127.0.0.2", "/r.mp3")).await);
        assert!(reason.contains("\"localhost\" resolves to"), "{reason}");
        assert_eq!(origin.seen().len(), 1);
        assert_eq!(inside.connections(), 0);
    }

    /// `/hop/N` redirects to `/hop/N-1`; `/hop/0` is the recording.
    async fn redirect_chain() -> TestServer {
        TestServer::start("127.0.0.1", |request| {
            let hops: usize = request.uri().path()["/hop/".len()..].parse().unwrap();
            match hops {
                0 => ok("landed"),
                _ => redirect_to(&format!("/hop/{}", hops - 1)),
            }
        })
        .await
    }

    #[tokio::test]
    async fn at_most_max_redirects_are_followed() {
        let policy = local_policy(&["localhost"]);
        let within = redirect_chain().await;
        let path = format!("/hop/{MAX_REDIRECTS}");
        let download = source(&policy).open(&within.url("localhost", &path)).await;
        assert_eq!(read_all(download.unwrap()).await.unwrap(), b"landed");
        assert_eq!(within.seen().len(), MAX_REDIRECTS + 1);

        let beyond = redirect_chain().await;
        let path = format!("/hop/{}", MAX_REDIRECTS + 1);
        let reason = refusal(source(&policy).open(&beyond.url("localhost", &path)).await);
        assert!(reason.contains("redirects"), "{reason}");
        assert_eq!(beyond.seen().len(), MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn a_redirect_does_not_hand_the_signed_url_on_as_referer() {
        let target = TestServer::start("127.0.0.1", |_| ok("recording")).await;
        let next = target.url("127.0.0.1", "/r.mp3");
        let origin = TestServer::start("127.0.0.1", move |_| redirect_to(&next)).await;
        let source = source(&local_policy(&["localhost", "127.0.0.1"]));
        let first = signed(origin.url("localhost", "/r.mp3"));
        assert!(source.open(&first).await.is_ok());
        assert!(origin.seen()[0].target.contains(SECRET));
        let seen = target.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].referer, None);
    }

    const PROXY_PROBE_TARGET: &str = "RECORDING_SOURCE_PROXY_PROBE_TARGET";

    /// The environment is process-wide and other tests build HTTP clients,
    /// so the proxy variables are set only in a child test process.
    #[tokio::test]
    async fn a_proxy_from_the_environment_is_not_used() {
        let proxy = TestServer::start("127.0.0.1", |_| status(502)).await;
        let target = TestServer::start("127.0.0.1", |_| ok("recording")).await;
        let proxy_url = format!("http://127.0.0.1:{}", proxy.addr.port());
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "recordings::source::tests::proxy_probe"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(PROXY_PROBE_TARGET, target.url("localhost", "/r.mp3"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        for variable in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
        ] {
            child.env(variable, &proxy_url);
        }
        let output = child.output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(
            stdout.contains("1 passed"),
            "the probe did not run: {stdout}"
        );
        assert_eq!(proxy.connections(), 0);
        assert_eq!(target.seen().len(), 1);
    }

    #[tokio::test]
    #[ignore = "run by a_proxy_from_the_environment_is_not_used, with *_PROXY set"]
    async fn proxy_probe() {
        let url = std::env::var(PROXY_PROBE_TARGET).unwrap();
        let download = source(&local_policy(&["localhost"])).open(&url).await;
        assert_eq!(read_all(download.unwrap()).await.unwrap(), b"recording");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_cap_is_refused_before_reading() {
        let server = TestServer::start("127.0.0.1", |request| match request.uri().path() {
            "/over" => ok(vec![b'r'; 1001]),
            _ => ok(vec![b'r'; 1000]),
        })
        .await;
        let policy = SourcePolicy {
            max_bytes: 1000,
            ..local_policy(&["localhost"])
        };
        let reason = refusal(
            source(&policy)
                .open(&server.url("localhost", "/over"))
                .await,
        );
        assert!(reason.contains("Content-Length 1001"), "{reason}");
        let exact = source(&policy)
            .open(&server.url("localhost", "/exact"))
            .await;
        let exact = exact.unwrap();
        assert_eq!(exact.content_length(), Some(1000));
        assert_eq!(read_all(exact).await.unwrap().len(), 1000);
    }

    #[tokio::test]
    async fn a_body_growing_past_the_cap_is_refused_while_streaming() {
        let server = TestServer::start("127.0.0.1", |request| match request.uri().path() {
            "/over" => chunked(10, 300),
            _ => chunked(4, 250),
        })
        .await;
        let policy = SourcePolicy {
            max_bytes: 1000,
            ..local_policy(&["localhost"])
        };
        let over = source(&policy)
            .open(&server.url("localhost", "/over"))
            .await;
        let mut over = over.unwrap();
        assert_eq!(over.content_length(), None);
        let mut received = 0;
        let error = loop {
            match over.next_chunk().await {
                Ok(Some(chunk)) => received += chunk.len(),
                Ok(None) => panic!("all {received} bytes were read past the cap"),
                Err(error) => break error,
            }
        };
        assert!(received <= 1000, "{received} bytes handed out");
        assert!(matches!(error, SourceError::Refused { .. }), "{error:?}");
        let exact = source(&policy)
            .open(&server.url("localhost", "/exact"))
            .await;
        assert_eq!(read_all(exact.unwrap()).await.unwrap().len(), 1000);
    }

    #[tokio::test]
    async fn a_stalled_body_fails_as_transient() {
        let server = TestServer::start("127.0.0.1", |_| stalls_after(b"0123456789", 100)).await;
        let policy = SourcePolicy {
            read_timeout: Duration::from_millis(300),
            ..local_policy(&["localhost"])
        };
        let download = source(&policy)
            .open(&server.url("localhost", "/r.mp3"))
            .await;
        let mut download = download.unwrap();
        let started = Instant::now();
        let mut received = 0;
        let error = loop {
            let chunk = tokio::time::timeout(Duration::from_secs(5), download.next_chunk());
            match chunk.await.expect("the read timeout fires") {
                Ok(Some(chunk)) => received += chunk.len(),
                Ok(None) => panic!("a stalled body ended"),
                Err(error) => break error,
            }
        };
        assert_eq!(received, 10);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(matches!(error, SourceError::Transient { .. }), "{error:?}");
        assert!(error.is_transient());
    }

    #[tokio::test]
    async fn a_trickling_body_fails_as_transient_once_a_window_is_too_slow() {
        let server =
            TestServer::start("127.0.0.1", |_| trickles(1000, Duration::from_millis(20))).await;
        let policy = SourcePolicy {
            low_speed: LowSpeedLimit {
                bytes: 100,
                window: Duration::from_millis(500),
            },
            ..local_policy(&["localhost"])
        };
        let download = source(&policy)
            .open(&server.url("localhost", "/r.mp3"))
            .await;
        let started = Instant::now();
        let error = read_all(download.unwrap()).await.unwrap_err();
        assert!(matches!(error, SourceError::Transient { .. }), "{error:?}");
        assert!(
            error.to_string().contains("slower than 100 bytes"),
            "{error}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // The control: fast enough, the same body is read whole.
        let relaxed = SourcePolicy {
            low_speed: LowSpeedLimit {
                bytes: 10,
                window: Duration::from_millis(500),
            },
            ..local_policy(&["localhost"])
        };
        let short =
            TestServer::start("127.0.0.1", |_| trickles(60, Duration::from_millis(20))).await;
        let download = source(&relaxed)
            .open(&short.url("localhost", "/r.mp3"))
            .await;
        assert_eq!(read_all(download.unwrap()).await.unwrap().len(), 60);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_fails_as_transient() {
        let silent = silent_server().await;
        let policy = SourcePolicy {
            read_timeout: Duration::from_millis(300),
            ..local_policy(&["localhost"])
        };
        let url = format!("http://localhost:{}/r.mp3", silent.port());
        let source = source(&policy);
        let opened = tokio::time::timeout(Duration::from_secs(5), source.open(&url));
        let error = opened.await.expect("the read timeout fires").unwrap_err();
        assert!(matches!(error, SourceError::Transient { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = format!("http://localhost:{port}/r.mp3");
        let error = source(&local_policy(&["localhost"]))
            .open(&url)
            .await
            .unwrap_err();
        assert!(matches!(error, SourceError::Transient { .. }), "{error:?}");
        assert!(error.is_transient());
    }

    #[tokio::test]
    async fn an_error_status_is_reported_with_whether_to_retry() {
        let server = TestServer::start("127.0.0.1", |request| {
            status(request.uri().path()[1..].parse().unwrap())
        })
        .await;
        let source = source(&local_policy(&["localhost"]));
        let cases = [
            (403, false),
            (404, false),
            (410, false),
            (408, true),
            (429, true),
        ];
        for (code, transient) in cases.into_iter().chain([(500, true), (503, true)]) {
            let error = source
                .open(&server.url("localhost", &format!("/{code}")))
                .await
                .unwrap_err();
            assert!(
                matches!(error, SourceError::Status { status } if status.as_u16() == code),
                "{code}: {error:?}"
            );
            assert_eq!(error.is_transient(), transient, "{code}");
        }
    }

    #[tokio::test]
    async fn no_error_or_download_prints_the_signature() {
        let silent = silent_server().await;
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let chain = redirect_chain().await;
        let server = TestServer::start("127.0.0.1", |request| match request.uri().path() {
            "/forbidden" => status(403),
            "/away" => redirect_to(&signed("http://127.0.0.1:9/r.mp3".to_owned())),
            _ => ok("recording"),
        })
        .await;
        let policy = SourcePolicy {
            read_timeout: Duration::from_millis(300),
            ..local_policy(&["localhost"])
        };
        let source = source(&policy);
        let urls = [
            signed(format!("ftp://localhost:{closed_port}/r.mp3")),
            signed("https://evil.example/r.mp3".to_owned()),
            signed(format!("http://localhost:{closed_port}/r.mp3")),
            signed(format!("http://localhost:{}/r.mp3", silent.port())),
            signed(server.url("localhost", "/forbidden")),
            signed(server.url("localhost", "/away")),
            signed(chain.url("localhost", &format!("/hop/{}", MAX_REDIRECTS + 1))),
        ];
        for url in &urls {
            let error = source.open(url).await.unwrap_err();
            let (shown, debugged) = (error.to_string(), format!("{error:?}"));
            assert!(
                !shown.contains(SECRET) && !debugged.contains(SECRET),
                "{debugged}"
            );
        }
        let download = source.open(&signed(server.url("localhost", "/r"))).await;
        let debugged = format!("{:?}", download.unwrap());
        assert!(!debugged.contains(SECRET), "{debugged}");
    }

    #[test]
    fn link_secrets_are_redacted_anywhere_in_text() {
        let raw = r#"{"cdr_recording_url": "https://b.s3.amazonaws.com/a.mp3?X-Amz-Date=1&X-Amz-Credential=AKIA%2Fx&X-Amz-Signature=5ec7e7", "x": "y?sv=1&sig=abc%3D"#;
        let redacted = redact_link_secrets(raw);
        for secret in ["5ec7e7", "AKIA", "abc%3D"] {
            assert!(!redacted.contains(secret), "{redacted}");
        }
        assert!(
            redacted.contains("X-Amz-Date=1&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED\"")
        );
        assert_eq!(
            redact_link_secrets("no links, a design=1"),
            "no links, a design=1"
        );
        assert_eq!(redact_link_secrets("x-sig=kept"), "x-sig=kept");
        assert_eq!(
            redact_link_secrets("tail x-amz-signature="),
            "tail x-amz-signature="
        );
    }

    #[test]
    fn redact_keeps_where_and_drops_what_authorises() {
        let cases = [
            (
                "https://user:pw@bucket.s3.amazonaws.com:8443/calls/r.mp3?X-Amz-Signature=abc#t=1",
                "https://bucket.s3.amazonaws.com:8443/calls/r.mp3",
            ),
            (
                "https://bucket.s3.amazonaws.com/r.mp3?X-Amz-Signature=abc",
                "https://bucket.s3.amazonaws.com/r.mp3",
            ),
            ("https://host.example/r.mp3", "https://host.example/r.mp3"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact(url), expected);
        }
        let unparseable = redact("https://exa mple.com/r?X-Amz-Signature=abc");
        assert!(!unparseable.contains("abc"), "{unparseable}");
    }
}
