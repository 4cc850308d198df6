//! The URLs etcd accepts in `--listen-*-urls`, `--advertise-client-urls`,
//! `--initial-advertise-peer-urls` and `--initial-cluster`, checked the way etcd's
//! `types.NewURLs` checks them and with its messages, because operators paste these flags from
//! etcd deployments and grep for etcd's errors.

use std::fmt;
use std::net::IpAddr;

/// Transport a URL names. `unix`/`unixs` are Unix-domain sockets (the latter with TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    Http,
    Https,
    Unix,
    Unixs,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Unix => "unix",
            Scheme::Unixs => "unixs",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Unixs)
    }
}

/// A parsed member URL.
///
/// For `http`/`https`, `host` is a name or IP (IPv6 without brackets) and `port` is set; `path`
/// is empty. For `unix`/`unixs`, the socket file is `host` followed by `path` (etcd's rule), and
/// `port` is whatever followed a colon in the authority, if anything.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Url {
    pub scheme: Scheme,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

/// Why a URL was rejected; the `Display` text is etcd's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL scheme must be http, https, unix, or unixs: {0}")]
    Scheme(String),
    #[error("URL address does not have the form \"host:port\": {0}")]
    HostPort(String),
    #[error("URL must not contain a path: {0}")]
    Path(String),
    #[error("no valid URLs given")]
    Empty,
}

impl Url {
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        let input = input.trim();
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| UrlError::Scheme(input.to_owned()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "unix" => Scheme::Unix,
            "unixs" => Scheme::Unixs,
            _ => return Err(UrlError::Scheme(input.to_owned())),
        };
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        if authority.contains(['?', '#', '@']) || path.contains(['?', '#']) {
            // Queries, fragments and credentials have no meaning for a member address.
            return Err(UrlError::HostPort(input.to_owned()));
        }
        match scheme {
            Scheme::Http | Scheme::Https => {
                let (host, port) = split_host_port(authority)
                    .ok_or_else(|| UrlError::HostPort(input.to_owned()))?;
                if !path.is_empty() {
                    return Err(UrlError::Path(input.to_owned()));
                }
                Ok(Url {
                    scheme,
                    host,
                    port: Some(port),
                    path: String::new(),
                })
            }
            Scheme::Unix | Scheme::Unixs => {
                if authority.is_empty() && path.is_empty() {
                    return Err(UrlError::HostPort(input.to_owned()));
                }
                let (host, port) = split_host_port(authority)
                    .map_or_else(|| (authority.to_owned(), None), |(h, p)| (h, Some(p)));
                Ok(Url {
                    scheme,
                    host,
                    port,
                    path: path.to_owned(),
                })
            }
        }
    }

    /// True when `host` is an IP literal or `localhost`: what etcd requires of a URL it binds.
    pub fn is_bindable(&self) -> bool {
        match self.scheme {
            Scheme::Unix | Scheme::Unixs => true,
            Scheme::Http | Scheme::Https => {
                self.host == "localhost" || self.host.parse::<IpAddr>().is_ok()
            }
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)
    }
}

/// Splits `host:port` like Go's `net.SplitHostPort` followed by a numeric port: IPv6 hosts must
/// be bracketed, the port must be a decimal `u16`. The host may be empty (`:2379` binds every
/// address), as in Go.
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':')?)
    } else {
        let (host, port) = authority.rsplit_once(':')?;
        if host.contains(':') {
            return None; // an unbracketed IPv6 address is ambiguous
        }
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// Parses etcd's comma-separated URL list. Order is kept (etcd sorts; we keep the operator's
/// order for display and sort only where comparing).
pub fn parse_list(input: &str) -> Result<Vec<Url>, UrlError> {
    if input.trim().is_empty() {
        return Err(UrlError::Empty);
    }
    input.split(',').map(Url::parse).collect()
}

/// Joins URLs back into etcd's comma-separated form.
pub fn join(urls: &[Url]) -> String {
    urls.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_etcd_forms() {
        let url = Url::parse("http://localhost:2379").unwrap();
        assert_eq!(
            (url.scheme, url.host.as_str(), url.port),
            (Scheme::Http, "localhost", Some(2379))
        );
        let v6 = Url::parse("https://[::1]:2380").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", Some(2380)));
        assert_eq!(v6.to_string(), "https://[::1]:2380");
        let any = Url::parse("http://:2379").unwrap();
        assert_eq!(any.host, "");
        let sock = Url::parse("unix://localhost:12345").unwrap();
        assert_eq!((sock.host.as_str(), sock.port), ("localhost", Some(12345)));
        let path_sock = Url::parse("unix:///tmp/etcd.sock").unwrap();
        assert_eq!(path_sock.path, "/tmp/etcd.sock");
        assert_eq!(path_sock.to_string(), "unix:///tmp/etcd.sock");
    }

    #[test]
    fn rejects_with_etcd_messages() {
        let cases = [
            (
                "ftp://a:1",
                "URL scheme must be http, https, unix, or unixs: ftp://a:1",
            ),
            (
                "localhost:2379",
                "URL scheme must be http, https, unix, or unixs: localhost:2379",
            ),
            (
                "http://localhost",
                "URL address does not have the form \"host:port\": http://localhost",
            ),
            (
                "http://a:99999",
                "URL address does not have the form \"host:port\": http://a:99999",
            ),
            (
                "http://a:x",
                "URL address does not have the form \"host:port\": http://a:x",
            ),
            (
                "http://::1:2379",
                "URL address does not have the form \"host:port\": http://::1:2379",
            ),
            ("http://a:1/p", "URL must not contain a path: http://a:1/p"),
        ];
        for (input, message) in cases {
            assert_eq!(
                Url::parse(input).unwrap_err().to_string(),
                message,
                "{input}"
            );
        }
        assert_eq!(parse_list("").unwrap_err(), UrlError::Empty);
    }

    #[test]
    fn bindable_hosts() {
        assert!(Url::parse("http://127.0.0.1:1").unwrap().is_bindable());
        assert!(Url::parse("http://localhost:1").unwrap().is_bindable());
        assert!(Url::parse("http://[::]:1").unwrap().is_bindable());
        assert!(!Url::parse("http://example.com:1").unwrap().is_bindable());
    }

    #[test]
    fn list_round_trips() {
        let list = parse_list("http://a:1, https://b:2").unwrap();
        assert_eq!(join(&list), "http://a:1,https://b:2");
    }
}
