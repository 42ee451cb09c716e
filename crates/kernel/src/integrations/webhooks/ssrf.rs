//! The SSRF guard of outgoing webhooks: an endpoint URL may reach only public addresses,
//! unless `webhooks.allow_private_networks` lists the network.
//!
//! Checked twice: at registration (every address the name resolves to must be allowed) and
//! at every delivery, by the sending client's own DNS resolver ([`GuardedResolver`]), which
//! drops addresses that are not allowed — so the address connected to is the address
//! checked, and a name re-pointed at an internal address after registration (DNS rebinding)
//! gets nowhere. IP-literal URLs never reach a resolver and are checked by [`check_ip`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// An IP address or CIDR.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn v4_forbidden(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
        || o[0] >= 240 // reserved
}

fn v6_forbidden(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_forbidden(v4);
    }
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 into any IPv4, private included
}

/// Whether `ip` is a non-public address (private, loopback, link-local, …).
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_forbidden(v4),
        IpAddr::V6(v6) => v6_forbidden(v6),
    }
}

/// Whether a delivery may connect to `ip`.
pub fn check_ip(ip: IpAddr, allow: &[IpNet]) -> bool {
    !is_non_public(ip) || allow.iter().any(|n| n.contains(&ip))
}

/// Checks an endpoint URL at registration; the error is the field message.
pub async fn check_url(raw: &str, allow: &[IpNet]) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|_| "must be an absolute URL".to_string())?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err("must be an http:// or https:// URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    if raw.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let Some(host) = url.host_str() else {
        return Err("must name a host".into());
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| format!("the host `{host}` does not resolve"))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err("the host does not resolve".into());
    }
    if let Some(ip) = addrs.iter().find(|ip| !check_ip(**ip, allow)) {
        return Err(format!(
            "resolves to {ip}, a private, loopback or otherwise non-public address; refused"
        ));
    }
    Ok(url)
}

/// The webhook client's DNS resolver: resolves with the system resolver and keeps only
/// allowed addresses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow: Arc<Vec<IpNet>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| check_ip(a.ip(), &allow))
                .collect();
            if addrs.is_empty() {
                return Err(
                    format!("`{host}` resolves to no public address (webhook SSRF guard)").into(),
                );
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused_unless_allowed() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!check_ip(ip, &[]), "{ip} must be refused");
        }
        assert!(check_ip("93.184.216.34".parse().expect("ip"), &[]));
        assert!(check_ip("2606:4700::1111".parse().expect("ip"), &[]));
        let allow = [parse_net("127.0.0.1").expect("net")];
        assert!(check_ip("127.0.0.1".parse().expect("ip"), &allow));
        assert!(!check_ip("127.0.0.2".parse().expect("ip"), &allow));
    }

    #[tokio::test]
    async fn urls_are_checked_at_registration() {
        assert!(check_url("http://127.0.0.1:9/hook", &[]).await.is_err());
        assert!(check_url("ftp://example.com/", &[]).await.is_err());
        assert!(
            check_url("https://user:pw@93.184.216.34/", &[])
                .await
                .is_err()
        );
        let allow = [parse_net("127.0.0.0/8").expect("net")];
        assert!(check_url("http://127.0.0.1:9/hook", &allow).await.is_ok());
    }
}
