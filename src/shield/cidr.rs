//! A set of CIDR ranges with a lookup cost of one hash probe per distinct prefix length, so
//! allow and deny lists of any size cost next to nothing at accept.

use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;

/// An IP address as a 128-bit number: IPv4 in the IPv4-mapped IPv6 space.
pub fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

/// The prefix length in the 128-bit space.
pub fn bits_len(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(n) => 96 + n.prefix_len(),
        IpNet::V6(n) => n.prefix_len(),
    }
}

/// Keeps the first `len` bits.
pub fn mask(bits: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else if len >= 128 {
        bits
    } else {
        bits & (u128::MAX << (128 - len))
    }
}

/// A set of ranges.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    by_len: Vec<(u8, HashSet<u128>)>,
}

impl CidrSet {
    pub fn new(nets: &[IpNet]) -> CidrSet {
        let mut s = CidrSet::default();
        for n in nets {
            s.insert(n);
        }
        s
    }

    pub fn insert(&mut self, net: &IpNet) {
        let len = bits_len(net);
        let key = mask(ip_bits(net.network()), len);
        match self.by_len.iter_mut().find(|(l, _)| *l == len) {
            Some((_, set)) => {
                set.insert(key);
            }
            None => {
                self.by_len.push((len, HashSet::from([key])));
                self.by_len.sort_by_key(|(l, _)| *l);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }

    /// True when a range contains the address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = ip_bits(ip);
        self.by_len
            .iter()
            .any(|(len, set)| set.contains(&mask(bits, *len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_what_they_should() {
        let s = CidrSet::new(&[
            "203.0.113.0/24".parse().unwrap(),
            "10.1.2.3/32".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]);
        assert!(s.contains("203.0.113.77".parse().unwrap()));
        assert!(!s.contains("203.0.114.1".parse().unwrap()));
        assert!(s.contains("10.1.2.3".parse().unwrap()));
        assert!(!s.contains("10.1.2.4".parse().unwrap()));
        assert!(s.contains("2001:db8:1::5".parse().unwrap()));
        assert!(s.contains("::ffff:203.0.113.1".parse().unwrap()));
        assert!(!CidrSet::default().contains("1.2.3.4".parse().unwrap()));
    }
}
