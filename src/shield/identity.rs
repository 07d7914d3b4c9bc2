//! Client identity: the peer address, or — only when the peer is a trusted proxy — the
//! right-most address in `X-Forwarded-For`/`Forwarded` that is not a trusted proxy. IPv6
//! clients are grouped by a prefix (/64 by default).

use super::cidr::{ip_bits, mask};
use http::HeaderMap;
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A client as the shield sees it: an IPv4 address or an IPv6 prefix, as 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(pub u128);

const V4_MAPPED: u128 = 0xffff;

impl ClientKey {
    /// The key of an address, grouping IPv6 by `v6_prefix`.
    pub fn of(ip: IpAddr, v6_prefix: u8) -> ClientKey {
        let bits = ip_bits(ip);
        if bits >> 32 == V4_MAPPED {
            ClientKey(bits)
        } else {
            ClientKey(mask(bits, v6_prefix))
        }
    }

    pub fn is_v4(self) -> bool {
        self.0 >> 32 == V4_MAPPED
    }

    /// The address (for IPv6, the prefix's first address).
    pub fn ip(self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.is_v4() => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }

    /// The /24 (IPv4) or /48 (IPv6) range around the client.
    pub fn subnet(self) -> IpNet {
        let (len, ip) = if self.is_v4() {
            (24u8, self.ip())
        } else {
            (48u8, self.ip())
        };
        IpNet::new(ip, len)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(ip))
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip())
    }
}

/// Is `ip` one of the trusted proxies?
pub fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// The client address of a request: the peer, unless the peer is a trusted proxy, in which
/// case the right-most forwarded address that is not itself a trusted proxy. A forged header
/// from an untrusted peer changes nothing.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if proxies.is_empty() || !trusted(peer, proxies) {
        return peer;
    }
    // X-Forwarded-For: all header lines, in order, right-most last.
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        chain.extend(v.split(',').filter_map(|s| parse_addr(s.trim())));
    }
    if chain.is_empty() {
        for v in headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for elem in v.split(',') {
                for pair in elem.split(';') {
                    let mut kv = pair.splitn(2, '=');
                    if let (Some(k), Some(val)) = (kv.next(), kv.next())
                        && k.trim().eq_ignore_ascii_case("for")
                        && let Some(ip) = parse_addr(val.trim().trim_matches('"'))
                    {
                        chain.push(ip);
                    }
                }
            }
        }
    }
    chain
        .into_iter()
        .rev()
        .find(|ip| !trusted(*ip, proxies))
        .unwrap_or(peer)
}

/// "1.2.3.4", "1.2.3.4:5678", "[2001:db8::1]:80", "2001:db8::1".
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().and_then(|h| h.parse().ok());
    }
    s.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let untrusted: IpAddr = "198.51.100.1".parse().unwrap();
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let forged = h(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(client_ip(untrusted, &forged, &proxies), untrusted);
        let chain = h(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.7")]);
        assert_eq!(
            client_ip(proxy, &chain, &proxies),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let fwd = h(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]);
        assert_eq!(
            client_ip(proxy, &fwd, &proxies),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &proxies), proxy);
    }

    #[test]
    fn ipv6_clients_group_by_prefix() {
        let a = ClientKey::of("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = ClientKey::of("2001:db8:1:2:bbbb::9".parse().unwrap(), 64);
        let c = ClientKey::of("2001:db8:1:3::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v4 = ClientKey::of("203.0.113.7".parse().unwrap(), 64);
        assert!(v4.is_v4());
        assert_eq!(v4.to_string(), "203.0.113.7");
        assert_eq!(v4.subnet().to_string(), "203.0.113.0/24");
        assert_eq!(ClientKey::of("::ffff:203.0.113.7".parse().unwrap(), 64), v4);
    }
}
