//! The client's address: the socket's peer, or, when the peer is one of
//! `[server] trusted_proxies`, what the proxies say (`X-Forwarded-For`, else `Forwarded`):
//! the rightmost address that is not itself a trusted proxy. Headers from anyone else are not
//! believed (they are the caller's to write).

use std::net::IpAddr;

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    first: u128,
    mask: u128,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or CIDR"))?;
        let (value, width) = wide(ip);
        let bits: u32 = match bits {
            Some(b) => b
                .trim()
                .parse()
                .map_err(|_| format!("`{text}`: not a prefix length"))?,
            None => width,
        };
        if bits > width {
            return Err(format!("`{text}`: a prefix of at most {width} bits"));
        }
        // IPv4 lives in the low 32 bits of the IPv4-mapped form.
        let bits = bits + (128 - width);
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - bits)
        };
        Ok(Self {
            first: value & mask,
            mask,
        })
    }
}

/// An address as 128 bits (IPv4 as IPv4-mapped IPv6), and its family's width.
fn wide(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(a) => (u128::from(a.to_ipv6_mapped()), 32),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (u128::from(v4.to_ipv6_mapped()), 32),
            None => (u128::from(a), 128),
        },
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        wide(ip).0 & self.mask == self.first
    }
}

/// The client's address of a request from `peer` with these headers.
pub fn client_address(peer: IpAddr, headers: &http::HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let chain = forwarded_chain(headers);
    // Rightmost first: each hop appends the address it received from.
    for ip in chain.iter().rev() {
        if !is_trusted(*ip) {
            return *ip;
        }
    }
    chain.first().copied().unwrap_or(peer)
}

/// The addresses `X-Forwarded-For` (or else `Forwarded: for=`) lists, in order.
fn forwarded_chain(headers: &http::HeaderMap) -> Vec<IpAddr> {
    let xff: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| parse_node(a.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("for")
                .then(|| parse_node(v.trim().trim_matches('"')))?
        })
        .collect()
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:443`, `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    text.rsplit_once(':')?.0.parse().ok()
}

use axum::http;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_headers_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = ["10.0.0.0/8", "::1"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.1.2.3")]);
        // From a trusted proxy: the rightmost address that is not a proxy.
        assert_eq!(
            client_address(ip("10.0.0.1"), &xff, &trusted),
            ip("203.0.113.9")
        );
        // From anyone else: the socket's peer, whatever the header says.
        assert_eq!(
            client_address(ip("192.0.2.1"), &xff, &trusted),
            ip("192.0.2.1")
        );
        let fwd = headers(&[(
            "forwarded",
            "for=\"[2001:db8::5]:4711\";proto=https, for=10.0.0.9",
        )]);
        assert_eq!(client_address(ip("::1"), &fwd, &trusted), ip("2001:db8::5"));
        let ipv4_mapped: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ipv4_mapped.contains(ip("::ffff:10.1.1.1")));
        assert!("10.0.0.0/40".parse::<Cidr>().is_err());
        assert!("not-an-ip".parse::<Cidr>().is_err());
    }
}
