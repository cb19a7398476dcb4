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
use std::time::Duration;

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

/// Downloads recordings under one [`SourcePolicy`]. Build once and share:
/// it holds the connection pool.
#[derive(Debug)]
pub struct RecordingSource {
    client: Client,
    targets: Arc<TargetRules>,
    max_bytes: u64,
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
        Self::build(policy, permits, Vec::new())
    }

    /// `new` with the address rule given (`policy.allow_private_networks`
    /// is not read) and extra trusted roots: the seams tests use to reach
    /// servers that can only live on loopback.
    fn build(
        policy: &SourcePolicy,
        permits: fn(IpAddr) -> bool,
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
        Ok(Some(chunk))
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
        if !self.hosts.iter().any(|pattern| pattern.matches(&host)) {
            return Err(SourceError::refused(format!(
                "host {:?} is not in allowed_hosts",
                host.normalized
            )));
        }
        // An IP literal never reaches the resolver, so its address is
        // checked here.
        match host.address {
            Some(address) if !(self.permits)(address) => Err(SourceError::refused(format!(
                "address {address} is not a public address"
            ))),
            _ => Ok(()),
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
            HostPattern::AnySubdomainOf(suffix) => {
                host.address.is_none()
                    && host.normalized.len() > suffix.len()
                    && host.normalized.ends_with(suffix.as_str())
            }
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
