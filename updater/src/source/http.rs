//! One http(s) request as abup makes it: the servers it trusts (the system's CA store and
//! private CAs), its client certificate, the headers it sends, the proxy the environment names
//! (as curl reads it), redirects followed by abup itself (never from https to http, headers
//! only to the URL's own host), and every failure sorted into one that may pass and is worth
//! another try ([`Transient`]) and one that will not.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ureq::http::{Response, Uri};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
use ureq::{Agent, Body, Proxy, ProxyProtocol};

use super::{server_text, Network};
use crate::board::Header;
use crate::state::redact;

/// Setting up a connection (name lookup, TCP, proxy, TLS) takes at most this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A server that sends nothing for this long has stalled: the request is tried again.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Redirects followed for one request, as curl and browsers allow.
const MAX_REDIRECTS: usize = 10;

/// A CA bundle, certificate or key file is a few hundred kilobytes at most (Debian's whole CA
/// store is 220 KB); anything larger is not one.
pub const MAX_PEM_FILE: u64 = 4 << 20;

/// A failure that may pass (the network, a 5xx answer, a timeout): the caller tries again
/// while its retries last, then reports it as [`super::Unavailable`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

pub fn transient(text: String) -> io::Error {
    io::Error::other(Transient(text))
}

/// A failure that will not pass by trying again.
pub fn fatal(text: String) -> io::Error {
    io::Error::other(text)
}

pub fn is_transient(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Transient>())
}

/// Requests for one URL.
pub struct Client {
    /// For requests without TLS: plain http, directly or through an http proxy. It trusts no
    /// certificate (ureq's default store is one this build does not have).
    plain: Agent,
    /// For requests over TLS (an https URL, or any URL through an https proxy), made for the
    /// first: a plain-http download (a local mirror, a factory server) does not read the
    /// system's CA store, some 300 files and tens of milliseconds from cold caches.
    tls: OnceLock<Agent>,
    /// The private CAs and the client certificate, read and checked in [`Client::new`]
    /// whatever the URL, so that a mistake in them is the first error.
    cas: Vec<Certificate<'static>>,
    client_cert: Option<ClientCert>,
    url: Uri,
    headers: Vec<Header>,
    deadline: Option<Instant>,
}

impl Client {
    /// A client for `url` with `net`'s trust, certificate and headers. Reads the CA and key
    /// files, and for an https URL the system's CA store; connects to nothing yet.
    pub fn new(url: &str, net: &Network) -> Result<Client> {
        let shown = redact(url);
        let uri: Uri = url
            .parse()
            .ok()
            .filter(|u: &Uri| u.host().is_some_and(|h| !h.is_empty()))
            .with_context(|| format!("{shown} is not an http(s) URL with a host name"))?;
        let (uri, basic) = without_userinfo(uri)
            .with_context(|| format!("{shown} is not an http(s) URL with a host name"))?;
        let mut headers = net.http.headers.clone();
        if let Some(basic) = basic.filter(|b| !headers.iter().any(|h| h.same_name(b))) {
            headers.push(basic);
        }
        let mut cas = Vec::new();
        for ca in &net.http.ca {
            cas.extend(pem_certificates(ca, "CA file")?);
        }
        let client_cert = match &net.http.client_cert {
            Some((cert, key)) => Some(client_cert(cert, key)?),
            None => None,
        };
        let client = Client {
            plain: agent(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&[]))
                    .build(),
            ),
            tls: OnceLock::new(),
            cas,
            client_cert,
            url: uri,
            headers,
            deadline: net.deadline,
        };
        if client.url.scheme_str() == Some("https") {
            client.tls_agent(&client.url)?;
        }
        Ok(client)
    }

    /// The agent for requests over TLS, made for the first; `to` is where that request
    /// connects over TLS, named by the error when there is nothing to trust.
    fn tls_agent(&self, to: &Uri) -> Result<&Agent> {
        if let Some(agent) = self.tls.get() {
            return Ok(agent);
        }
        let roots = trusted(&self.cas, &redact(&to.to_string()))?;
        let made = agent(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&roots))
                .client_cert(self.client_cert.clone())
                .build(),
        );
        Ok(self.tls.get_or_init(|| made))
    }

    /// Time left before the whole download's deadline (`--timeout`), if it has one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// A GET of the URL with an optional `Range` value, redirects followed: the final answer,
    /// whatever its status. The headers go only to the URL's own scheme, host and port, so a
    /// redirect to a CDN or object store (whose URL carries its own authorization) gets none
    /// of them; a redirect from https to plain http is refused.
    pub fn get(&self, range: Option<&str>) -> io::Result<Response<Body>> {
        let mut url = self.url.clone();
        let mut own_host = true;
        for _ in 0..=MAX_REDIRECTS {
            let proxy = proxy_for(&url, |v| std::env::var(v).ok())?;
            let tls_to = match &proxy {
                Some(p) if p.protocol() == ProxyProtocol::Https => Some(p.uri()),
                _ => (url.scheme_str() == Some("https")).then_some(&url),
            };
            let agent = match tls_to {
                Some(to) => self
                    .tls_agent(to)
                    .map_err(|e| fatal(crate::exit::message(&e)))?,
                None => &self.plain,
            };
            let mut req = agent
                .get(url.clone())
                .config()
                .proxy(proxy)
                .timeout_global(self.time_left())
                .build();
            if let Some(r) = range {
                req = req.header("Range", r);
            }
            if own_host {
                for h in &self.headers {
                    req = req.header(h.name.as_str(), h.value.as_str());
                }
            }
            let resp = req.call().map_err(|e| failure(&e))?;
            let location = match resp.headers().get("location") {
                Some(l) if resp.status().is_redirection() => l,
                _ => return Ok(resp),
            };
            let location = location.to_str().map_err(|_| {
                fatal("the server redirected to a Location that is not ASCII".into())
            })?;
            let next = follow(&url, location).ok_or_else(|| {
                fatal(format!(
                    "the server redirected to \"{}\", which is not a URL",
                    server_text(&redact(location))
                ))
            })?;
            if url.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
                return Err(fatal(format!(
                    "the server redirected from https to {}: abup does not leave https for a \
                     plain connection; fix the redirect on the server",
                    server_text(&redact(&next.to_string()))
                )));
            }
            own_host &= origin(&next) == origin(&self.url);
            log::debug!(
                "redirected to {}{}",
                redact(&next.to_string()),
                if own_host {
                    ""
                } else {
                    " (another host: no headers)"
                }
            );
            url = next;
        }
        Err(fatal(format!(
            "the server redirected more than {MAX_REDIRECTS} times"
        )))
    }
}

/// The URL without its `user:password@`, which becomes an `Authorization: Basic` header (as
/// curl and browsers send it), so that it goes only where the other headers go and never into
/// a `Host` header.
fn without_userinfo(uri: Uri) -> Option<(Uri, Option<Header>)> {
    use base64::Engine;
    let authority = uri.authority()?.as_str();
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Some((uri, None));
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let credentials = format!("{}:{}", decode(user), decode(password));
    let header = Header {
        name: "Authorization".into(),
        value: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ),
    };
    let rest = uri.path_and_query().map_or("/", |p| p.as_str());
    let bare: Uri = format!("{}://{host}{rest}", uri.scheme_str()?)
        .parse()
        .ok()?;
    Some((bare, Some(header)))
}

/// Scheme, host and port: where headers may go.
fn origin(u: &Uri) -> (Option<&str>, Option<&str>, Option<u16>) {
    let port = u.port_u16().or(match u.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    (u.scheme_str(), u.host(), port)
}

/// `location` (absolute, scheme-relative, absolute path or relative path) against `base`.
fn follow(base: &Uri, location: &str) -> Option<Uri> {
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let text = if location.contains("://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{location}")
    };
    let uri: Uri = text.parse().ok()?;
    let usable = matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty());
    usable.then_some(uri)
}

/// The proxy for `url` from the environment, read with `var`, by curl's rules: `https_proxy`
/// or `HTTPS_PROXY` for https, `http_proxy` for http (only lower case: CGI programs get a
/// request's `Proxy:` header as `HTTP_PROXY`), else `all_proxy` or `ALL_PROXY`; none for a
/// host `no_proxy` (or `NO_PROXY`) names. The lower-case name wins; empty means unset.
fn proxy_for(url: &Uri, var: impl Fn(&str) -> Option<String>) -> io::Result<Option<Proxy>> {
    let get = |names: &[&'static str]| {
        names
            .iter()
            .find_map(|&n| var(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
    };
    let named = match url.scheme_str() {
        Some("https") => get(&["https_proxy", "HTTPS_PROXY"]),
        _ => get(&["http_proxy"]),
    }
    .or_else(|| get(&["all_proxy", "ALL_PROXY"]));
    let Some((name, value)) = named else {
        return Ok(None);
    };
    let no_proxy = get(&["no_proxy", "NO_PROXY"]).map(|(_, v)| v);
    if no_proxy.is_some_and(|list| bypasses(&list, url.host().unwrap_or(""))) {
        return Ok(None);
    }
    let value = value.trim();
    let scheme = value.split_once("://").map_or("http", |(s, _)| s);
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(fatal(format!(
            "{name} names a {scheme} proxy; abup goes through HTTP proxies \
             (http://host:port or https://host:port)"
        )));
    }
    Proxy::new(value)
        .map(Some)
        .map_err(|_| fatal(format!("{name}={} is not a proxy URL", redact(value))))
}

/// Whether `no_proxy` (comma- or space-separated) exempts `host`, by curl's rules: `*` is
/// every host; a name matches itself and every name below it (a leading dot is ignored); an
/// IP address matches itself, and `ADDRESS/BITS` a whole network.
fn bypasses(no_proxy: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let ip: Option<IpAddr> = host.parse().ok();
    no_proxy
        .split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let (Some(ip), Some((net, bits))) = (ip, entry.split_once('/')) {
                return in_network(ip, net, bits);
            }
            let entry = entry
                .trim_start_matches('.')
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            if let (Some(ip), Ok(e)) = (ip, entry.parse::<IpAddr>()) {
                return ip == e;
            }
            !entry.is_empty()
                && (host == entry
                    || host
                        .strip_suffix(entry.as_str())
                        .is_some_and(|p| p.ends_with('.')))
        })
}

fn in_network(ip: IpAddr, net: &str, bits: &str) -> bool {
    let Ok(bits) = bits.parse::<u32>() else {
        return false;
    };
    match (ip, net.parse::<IpAddr>()) {
        (IpAddr::V4(a), Ok(IpAddr::V4(n))) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), Ok(IpAddr::V6(n))) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// An agent that judges answers and follows redirects itself (see [`Client::get`]), with
/// `tls`'s trust.
fn agent(tls: TlsConfig) -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(STALL_TIMEOUT))
        .timeout_per_read(Some(STALL_TIMEOUT))
        .user_agent(concat!("abup/", env!("CARGO_PKG_VERSION")))
        // The bundle's bytes exactly as stored: offsets and Range requests count them.
        .accept_encoding("identity")
        // Chosen for each request from the environment, as curl does (`proxy_for`).
        .proxy(None)
        .tls_config(tls)
        .build()
        .new_agent()
}

/// The servers abup trusts: the system's CA store (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
/// distribution's bundle under /etc/ssl), and `cas`, the private CAs `http.ca` names. A trust
/// store with nothing in it is an error here, naming `url`, the https URL it is for.
fn trusted(cas: &[Certificate<'static>], url: &str) -> Result<Vec<Certificate<'static>>> {
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        log::debug!("the system's CA store: {e}");
    }
    let mut roots: Vec<Certificate<'static>> = system
        .certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let from_system = roots.len();
    roots.extend_from_slice(cas);
    log::debug!(
        "trusting {} CA certificates, {from_system} of them from the system's store",
        roots.len()
    );
    if roots.is_empty() {
        bail!(
            "no CA certificate to check {url} against: the system's CA store is missing or \
             empty (install ca-certificates, or set SSL_CERT_FILE), and no --ca or [http] ca \
             is given"
        );
    }
    Ok(roots)
}

/// A PEM file's contents, refusing one larger than [`MAX_PEM_FILE`].
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    crate::state::read_limited(file, path, MAX_PEM_FILE, &format!("not a PEM {what}"))
}

/// The certificates in the PEM file `path`, the `what` of the messages.
fn pem_certificates(path: &Path, what: &str) -> Result<Vec<Certificate<'static>>> {
    let bytes = read_pem(path, what)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        if let PemItem::Certificate(c) =
            item.with_context(|| format!("reading the {what} {}", path.display()))?
        {
            certs.push(c.to_owned());
        }
    }
    if certs.is_empty() {
        bail!(
            "the {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// The client certificate (its chain, end entity first) and its key, which must belong
/// together: rustls would otherwise fail only in the middle of a handshake.
fn client_cert(cert: &Path, key: &Path) -> Result<ClientCert> {
    let chain = pem_certificates(cert, "client certificate")?;
    let bytes = read_pem(key, "client key")?;
    // The key's text never reaches a message.
    let no_key = || {
        anyhow::anyhow!(
            "the client key {} holds no unencrypted PEM private key (PKCS#8, RSA or EC)",
            key.display()
        )
    };
    let private: PrivateKey<'static> = PrivateKey::from_pem(&bytes).map_err(|_| no_key())?;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| no_key())?;
    let ders = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(ders, der, &provider).map_err(|e| {
        anyhow::anyhow!(
            "the client certificate {} and key {} cannot be used together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(ClientCert::new_with_certs(&chain, private))
}

/// A ureq failure as one sanitised line (the URL left out: the caller names the source
/// without its credentials), transient or not.
pub fn failure(e: &ureq::Error) -> io::Error {
    use ureq::Error as E;
    match e {
        E::Io(io) => io_failure(io),
        E::Timeout(t) => transient(format!("timed out ({t})")),
        E::HostNotFound => transient("the host name was not found".into()),
        E::ConnectionFailed => transient("the connection failed".into()),
        E::Rustls(r) => fatal(tls_text(r)),
        E::ConnectProxyFailed(text) => {
            let status = text
                .strip_prefix("proxy server responded ")
                .and_then(|s| s.split('/').next())
                .and_then(|s| s.parse::<u16>().ok());
            let text = format!("the proxy refused: {}", server_text(text));
            match status {
                Some(s) if s < 500 => fatal(text),
                _ => transient(text),
            }
        }
        other => fatal(server_text(&other.to_string())),
    }
}

/// An I/O error from the network or from reading a body: transient, unless TLS is what
/// failed (a certificate, an alert) or ureq found the answer malformed.
pub fn io_failure(e: &io::Error) -> io::Error {
    if let Some(inner) = e.get_ref() {
        if let Some(r) = inner.downcast_ref::<rustls::Error>() {
            return fatal(tls_text(r));
        }
        if let Some(u) = inner.downcast_ref::<ureq::Error>() {
            return failure(u);
        }
    }
    let text = server_text(&e.to_string());
    match e.kind() {
        io::ErrorKind::InvalidData => fatal(text),
        _ => transient(text),
    }
}

/// A TLS failure, and what usually fixes it.
fn tls_text(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let hint = match e {
        R::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            ": the server's certificate is not signed by a CA abup trusts (the system's store, \
             --ca, [http] ca)"
        }
        R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            ": the server's certificate is not for this host name"
        }
        R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            ": the server's certificate has expired (or this device's clock is wrong)"
        }
        R::AlertReceived(
            A::CertificateRequired
            | A::HandshakeFailure
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::AccessDenied,
        ) => {
            ": the server refused the TLS handshake; it may want a client certificate it \
             trusts (--cert and --key, [http] cert and key)"
        }
        _ => "",
    };
    format!("TLS: {}{hint}", server_text(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn url_credentials_become_a_basic_authorization_header() {
        let (bare, h) = without_userinfo(uri("https://agent:p%40ss@h:8443/b?t=1")).unwrap();
        assert_eq!(bare.to_string(), "https://h:8443/b?t=1");
        // base64("agent:p@ss")
        assert_eq!(h.unwrap().value, "Basic YWdlbnQ6cEBzcw==");
        let (same, none) = without_userinfo(uri("https://h/b")).unwrap();
        assert_eq!((same.to_string().as_str(), none), ("https://h/b", None));
    }

    #[test]
    fn redirects_resolve_like_a_browser() {
        let base = uri("https://u.example:8443/dir/b.abup?t=1");
        for (loc, to) in [
            ("https://cdn.example/x", "https://cdn.example/x"),
            ("//cdn.example/x", "https://cdn.example/x"),
            ("/other/y.abup", "https://u.example:8443/other/y.abup"),
            ("z.abup?sig=2", "https://u.example:8443/dir/z.abup?sig=2"),
            ("http://plain.example/", "http://plain.example/"),
        ] {
            assert_eq!(follow(&base, loc).unwrap().to_string(), to, "{loc}");
        }
        for bad in ["ftp://x/y", "https://", "http:// spaces/"] {
            assert!(follow(&base, bad).is_none(), "{bad}");
        }
        assert_eq!(origin(&uri("https://h/a")), origin(&uri("https://h:443/b")));
        assert_ne!(origin(&uri("https://h/a")), origin(&uri("http://h/a")));
        assert_ne!(
            origin(&uri("https://h/a")),
            origin(&uri("https://h.evil/a"))
        );
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    fn proxy(url: &str, vars: &[(&str, &str)]) -> Option<String> {
        proxy_for(&uri(url), env(vars))
            .unwrap()
            .map(|p| format!("{}:{}", p.host(), p.port()))
    }

    #[test]
    fn proxies_are_chosen_as_curl_chooses_them() {
        let all = [
            ("https_proxy", "http://s.proxy:3128"),
            ("HTTPS_PROXY", "http://S.PROXY:1"),
            ("http_proxy", "http://p.proxy:8080"),
            ("HTTP_PROXY", "http://never:1"),
        ];
        assert_eq!(proxy("https://h/b", &all).as_deref(), Some("s.proxy:3128"));
        assert_eq!(proxy("http://h/b", &all).as_deref(), Some("p.proxy:8080"));
        assert_eq!(
            proxy("https://h/b", &all[1..]).as_deref(),
            Some("S.PROXY:1"),
            "upper case when there is no lower case"
        );
        assert_eq!(proxy("http://h/b", &[("HTTP_PROXY", "http://x:1")]), None);
        assert_eq!(
            proxy("http://h/b", &[("ALL_PROXY", "http://a:2")]).as_deref(),
            Some("a:2")
        );
        assert_eq!(proxy("https://h/b", &[("https_proxy", " ")]), None);
        assert_eq!(proxy("https://h/b", &[]), None);
        let socks = proxy_for(&uri("https://h/b"), env(&[("all_proxy", "socks5://s:1")]));
        assert!(socks.unwrap_err().to_string().contains("socks5 proxy"));
        let with_no =
            |no: &str, url: &str| proxy(url, &[("https_proxy", "http://s:1"), ("no_proxy", no)]);
        assert_eq!(with_no("example.com", "https://example.com/b"), None);
        assert_eq!(with_no(".example.com", "https://a.b.Example.COM/b"), None);
        assert_eq!(
            with_no("example.com", "https://notexample.com/b").as_deref(),
            Some("s:1")
        );
        assert_eq!(with_no("*", "https://any/b"), None);
        assert_eq!(with_no("10.0.0.0/8, 127.0.0.1", "https://10.2.3.4/b"), None);
        assert_eq!(
            with_no("10.0.0.0/8", "https://11.2.3.4/b").as_deref(),
            Some("s:1")
        );
        assert_eq!(with_no("::1", "https://[::1]:8443/b"), None);
        assert_eq!(with_no("fd00::/8", "https://[fd12::5]/b"), None);
        assert_eq!(
            with_no("localhost", "https://127.0.0.1/b").as_deref(),
            Some("s:1")
        );
        assert_eq!(
            proxy(
                "https://h/b",
                &[
                    ("https_proxy", "http://s:1"),
                    ("NO_PROXY", "h"),
                    ("no_proxy", "x")
                ]
            )
            .as_deref(),
            Some("s:1"),
            "no_proxy wins over NO_PROXY"
        );
    }
}
