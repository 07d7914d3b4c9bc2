//! Header handling: hop-by-hop removal, X-Forwarded-*, request ids.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers removed whatever the Connection header says; CONNECTION first.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Whether `name` is one of the hop-by-hop headers removed whatever the Connection header says.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the Connection header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the (few) names present instead of a hashed removal per listed name:
    // most messages carry none of them, or only `Connection`.
    let mut present = 0u8;
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| *n == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for token in h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
        {
            // The listed names are removed below (when present); `close` names no header.
            if token.eq_ignore_ascii_case("keep-alive")
                || (token.eq_ignore_ascii_case("close") && !h.contains_key("close"))
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(n);
            }
        }
        for n in named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(*n);
        }
    }
}

/// True when `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    !trusted.is_empty() && trusted.iter().any(|n| n.contains(&ip))
}

/// Sets X-Forwarded-For/-Proto/-Host. From a trusted proxy, the incoming chain is kept and the
/// peer appended; from anyone else, whatever the client sent is replaced, so it cannot forge
/// the address the servers see.
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer: IpAddr,
    trusted_peer: bool,
    host: Option<&HeaderValue>,
) {
    if !trusted_peer && let Some(v) = ip_header_value(peer) {
        h.insert(&X_FORWARDED_FOR, v);
    } else {
        set_forwarded_for_chain(h, peer, trusted_peer);
    }
    if !(trusted_peer && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !(trusted_peer && h.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(v) => {
                h.insert(&X_FORWARDED_HOST, v.clone());
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// An IPv4 address as a header value, written without the formatting machinery (this runs
/// for every request); `None` for IPv6.
fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return None;
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).ok()
}

fn set_forwarded_for_chain(h: &mut HeaderMap, peer: IpAddr, trusted_peer: bool) {
    let mut xff = String::new();
    if trusted_peer {
        for v in h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            xff.push_str(v.trim());
            xff.push_str(", ");
        }
    }
    xff.push_str(&peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(&X_FORWARDED_FOR, v);
    }
}

/// A new random request id: 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    for (i, d) in buf.iter_mut().enumerate() {
        let (word, shift) = if i < 16 {
            (a, 60 - 4 * i)
        } else {
            (b, 124 - 4 * i)
        };
        *d = HEX[((word >> shift) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The client address as an IP, IPv4-mapped IPv6 folded to IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_lowercase_hex_digits() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 32);
        assert!(
            s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn forwarded_for_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut h = HeaderMap::new();
            h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
            set_forwarded(&mut h, ip, false, None);
            assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), &ip.to_string());
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, v6, false, None);
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "2001:db8::1");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Foo, close"),
        );
        h.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));

        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
