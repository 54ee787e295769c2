//! Where Portcullis may connect on a tenant's behalf: upstream MCP servers (the gateway's
//! calls, the control plane's discovery) and webhooks.
//!
//! Their URLs are chosen by tenants, so without a guard any tenant could make Portcullis reach
//! what only Portcullis can reach: its own Redis and Postgres, the cloud's metadata service
//! (`169.254.169.254`), services on the private network. Only public addresses are allowed,
//! plus the networks the operator lists in `PORTCULLIS_UPSTREAM_ALLOW` (e.g. `10.1.0.0/16`
//! for MCP servers of its own). The check applies to the addresses actually connected to: a
//! host name is resolved here and only its permitted addresses are returned, so a name that
//! resolves to a private address (DNS rebinding included) is refused like the address itself.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// The networks connections may reach besides public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    allowed: Vec<IpNet>,
}

/// `PORTCULLIS_UPSTREAM_ALLOW` does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid PORTCULLIS_UPSTREAM_ALLOW: {0:?} is not a network like 10.0.0.0/8 or ::1/128")]
pub struct EgressParseError(String);

impl FromStr for Egress {
    type Err = EgressParseError;

    /// A comma-separated list of networks (`10.0.0.0/8,::1/128`); a bare address is its own
    /// network. Empty: public addresses only.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let allowed = s
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| EgressParseError(part.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

impl Egress {
    /// Whether a connection to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// `Ok` when `host` (a URL's host, IPv6 in brackets or not) is a host name or a permitted
    /// address. Host names are checked when they are resolved ([`Egress::resolve`]).
    pub fn check_host(&self, host: &str) -> io::Result<()> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) if !self.permits(ip) => Err(refused(ip, false)),
            _ => Ok(()),
        }
    }

    /// [`Egress::check_host`] of an absolute URL's host.
    pub fn check_url(&self, url: &str) -> io::Result<()> {
        // The URL itself stays out of the error: it may carry credentials (user info, a
        // webhook's secret path), and the error reaches logs and delivery records.
        let parsed = url::Url::parse(url).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("not a valid URL: {e}"))
        })?;
        self.check_host(parsed.host_str().unwrap_or_default())
    }

    /// The permitted addresses of `host`; an error when it resolves to none of them.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        let permitted: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|addr| self.permits(addr.ip()))
            .collect();
        match (permitted.is_empty(), found.first()) {
            (false, _) => Ok(permitted),
            (true, Some(first)) => Err(refused(first.ip(), true)),
            (true, None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no address"),
            )),
        }
    }
}

/// A connection refused by [`Egress`]: the `io::Error`s it returns carry this inside, so a
/// caller can tell the refusal from other failures to connect ([`Refused::find`]).
///
/// The message names the address only when the URL itself did. An address a host name
/// resolved to stays out of it: the message reaches tenants (discovery, the audit log, the
/// agent's error), and naming it would let any tenant read the operator's internal DNS
/// (`redis.internal` → `10.2.0.7`). Operators find it in [`Refused::ip`] (the logs).
#[derive(Debug)]
pub struct Refused {
    /// The refused address.
    pub ip: IpAddr,
    /// Whether a host name resolved to it (rather than the URL naming it).
    pub resolved: bool,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resolved {
            f.write_str("the host name resolves to no public address")?;
        } else {
            write!(f, "{} is not a public address", self.ip)?;
        }
        f.write_str(
            " (loopback, private, link-local and reserved addresses are refused), and \
             PORTCULLIS_UPSTREAM_ALLOW does not list the network",
        )
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// The refusal in `error` or its causes, if it is one.
    pub fn find<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
        let mut source = Some(error);
        while let Some(err) = source {
            if let Some(refused) = err.downcast_ref::<Refused>() {
                return Some(refused);
            }
            if let Some(refused) = err
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<Refused>())
            {
                return Some(refused);
            }
            source = err.source();
        }
        None
    }
}

fn refused(ip: IpAddr, resolved: bool) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused { ip, resolved })
}

/// Whether `ip` is an address of the public internet (not loopback, private, link-local,
/// shared, multicast, reserved or unspecified). IPv6 addresses that embed an IPv4 one
/// (mapped, NAT64) are judged by it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: the IPv4 address it reaches.
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || segments[0] == 0x2001 && segments[1] == 0x0db8 // documentation
        || segments[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_link_local_and_reserved_addresses_are_not_public() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(s)), "{s} counted as public");
        }
        for s in [
            "1.1.1.1",
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(s)), "{s} counted as not public");
        }
    }

    #[test]
    fn listed_networks_are_allowed_and_nothing_else() {
        let egress: Egress = "127.0.0.0/8, ::1 ,10.1.0.0/16".parse().unwrap();
        assert!(egress.permits(ip("127.0.0.1")));
        assert!(egress.permits(ip("::1")));
        assert!(egress.permits(ip("10.1.200.3")));
        assert!(!egress.permits(ip("10.2.0.1")));
        assert!(!egress.permits(ip("169.254.169.254")));
        assert!(egress.permits(ip("1.1.1.1")));
        assert_eq!(egress.to_string(), "127.0.0.0/8,::1/128,10.1.0.0/16");
        assert_eq!("".parse::<Egress>().unwrap(), Egress::default());
        let error = "10.0.0.0/8,localhost".parse::<Egress>().unwrap_err();
        assert!(error.to_string().contains("\"localhost\""), "{error}");
    }

    #[test]
    fn literal_hosts_are_checked_and_names_left_to_resolution() {
        let egress = Egress::default();
        let error = egress.check_host("169.254.169.254").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(Refused::find(&error).unwrap().ip, ip("169.254.169.254"));
        assert!(
            error.to_string().starts_with("169.254.169.254 is not"),
            "{error}"
        );
        let other = io::Error::new(io::ErrorKind::PermissionDenied, "firewall");
        assert!(Refused::find(&other).is_none());
        assert!(error.to_string().contains("PORTCULLIS_UPSTREAM_ALLOW"));
        assert!(egress.check_host("[::1]").is_err());
        assert!(egress.check_host("1.1.1.1").is_ok());
        assert!(egress.check_host("mcp.example.com").is_ok());
        assert!(
            egress
                .check_url("http://[::ffff:127.0.0.1]:8080/mcp")
                .is_err()
        );
        assert!(egress.check_url("https://mcp.example.com/mcp").is_ok());
        assert!(egress.check_url("not a url").is_err());
    }

    #[tokio::test]
    async fn a_name_is_refused_when_it_resolves_only_to_refused_addresses() {
        let error = Egress::default()
            .resolve("localhost", 80)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        let refused = Refused::find(&error).unwrap();
        assert!(refused.ip.is_loopback() && refused.resolved);
        // What it resolved to is for the operator's logs, not the message tenants read.
        let message = error.to_string();
        assert!(
            message.contains("resolves to no public address"),
            "{message}"
        );
        assert!(
            !message.contains("127.0.0.1") && !message.contains("::1"),
            "{message}"
        );
        let allowed: Egress = "127.0.0.0/8,::1".parse().unwrap();
        let addrs = allowed.resolve("localhost", 80).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
