//! The HAProxy PROXY protocol, versions 1 (text) and 2 (binary), sans I/O.
//!
//! Owns: recognising and parsing the header a load balancer puts in front of a connection,
//! so the client address it carries can be used for limits, penalties and logs, and whether
//! a v2 header says the client talked TLS to the proxy (PP2_TYPE_SSL, which HAProxy's
//! `send-proxy-v2-ssl` sends).
//!
//! Does not own: deciding whom to trust (the runtime only calls this for connections from
//! configured trusted networks) or reading from sockets. [`parse`] is given the bytes read
//! so far and says whether it needs more; it never consumes bytes beyond the header, so
//! anything after it belongs to the POP3 session.
//!
//! Reference: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature (12 octets).
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Longest v1 header including CRLF.
pub const V1_MAX: usize = 107;
/// Longest v2 header we accept (16-byte fixed part + addresses + TLVs).
pub const V2_MAX: usize = 16 + 4096;

/// What the header says about the connection. The default is what a LOCAL or UNKNOWN
/// header says: nothing (the proxy itself is the peer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// The original client, or `None` for v2 LOCAL / v1 UNKNOWN (health checks): use the
    /// socket's own peer address then.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
    /// A v2 PP2_TYPE_SSL TLV with PP2_CLIENT_SSL set: the client used TLS to reach the proxy
    /// (spec 2.2.5). Never set by v1, which cannot say it, nor by LOCAL / UNSPEC headers.
    pub client_tls: bool,
}

/// Why a header was refused. The runtime closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 header")]
    BadV1,
    #[error("malformed PROXY v2 header")]
    BadV2,
    #[error("PROXY header too long")]
    TooLong,
}

/// Parses a PROXY header at the start of `buf`.
/// `Ok(None)`: more bytes are needed. `Ok(Some((header, n)))`: the header took `n` bytes.
///
/// v2 TLVs are skipped whatever their type, except PP2_TYPE_SSL (read for
/// [`Header::client_tls`]) and CRC32C (which must match); each must lie within the header,
/// and so must the sub-TLVs of an SSL one.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] {
        if buf.len() < 16 {
            return Ok(None);
        }
        return parse_v2(buf);
    }
    let prefix_len = buf.len().min(6);
    if buf[..prefix_len] == b"PROXY "[..prefix_len] {
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let Some(lf) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(None)
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ProxyError::BadV1);
    }
    let line = &buf[..lf - 1];
    if line == b"PROXY UNKNOWN" || line.starts_with(b"PROXY UNKNOWN ") {
        // The rest of the line, whatever its bytes, is to be ignored.
        return Ok(Some((Header::default(), lf + 1)));
    }
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::BadV1)?;
    let mut f = line.split(' ');
    if f.next() != Some("PROXY") {
        return Err(ProxyError::BadV1);
    }
    let proto = f.next().ok_or(ProxyError::BadV1)?;
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(ProxyError::BadV1);
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        match proto {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(ProxyError::BadV1),
        }
        .map_err(|_| ProxyError::BadV1)
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        // Decimal without leading zeros or signs, as the spec requires.
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ProxyError::BadV1);
        }
        s.parse().map_err(|_| ProxyError::BadV1)
    };
    Ok(Some((
        Header {
            source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
            destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
            client_tls: false,
        },
        lf + 1,
    )))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2);
    }
    if 16 + len > V2_MAX {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    let local = Header::default();
    match ver_cmd & 0x0F {
        0x0 => return Ok(Some((local, total))), // LOCAL: health check from the proxy itself
        0x1 => {}                               // PROXY
        _ => return Err(ProxyError::BadV2),
    }
    // The address block's size for each family/transport byte the spec lists.
    let addr_len = match fam {
        // UNSPEC: the address information (of no defined size) is ignored.
        0x00 => return Ok(Some((local, total))),
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Err(ProxyError::BadV2),
    };
    if body.len() < addr_len {
        return Err(ProxyError::BadV2);
    }
    let client_tls = check_tlvs(&buf[..total], 16 + addr_len)?;
    let header = match fam {
        0x11 => {
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            Header {
                source: Some(SocketAddr::new(src.into(), be16(&body[8..10]))),
                destination: Some(SocketAddr::new(dst.into(), be16(&body[10..12]))),
                client_tls,
            }
        }
        0x21 => {
            let src: [u8; 16] = body[0..16].try_into().expect("16 bytes");
            let dst: [u8; 16] = body[16..32].try_into().expect("16 bytes");
            Header {
                source: Some(SocketAddr::new(
                    Ipv6Addr::from(src).into(),
                    be16(&body[32..34]),
                )),
                destination: Some(SocketAddr::new(
                    Ipv6Addr::from(dst).into(),
                    be16(&body[34..36]),
                )),
                client_tls,
            }
        }
        // UNIX / UDP: no usable TCP address; keep the socket's peer (the spec's fallback
        // to UNSPEC for combinations a receiver does not implement). The proxy still said
        // how the client reached it.
        _ => Header {
            client_tls,
            ..local
        },
    };
    Ok(Some((header, total)))
}

/// PP2_TYPE_CRC32C: a checksum of the whole header, its own value taken as zero.
const PP2_TYPE_CRC32C: u8 = 0x03;
/// PP2_TYPE_SSL: how the client reached the proxy. Its value is `client` (1 octet),
/// `verify` (4 octets), then sub-TLVs (PP2_SUBTYPE_SSL_VERSION, _CN, …) to its end.
const PP2_TYPE_SSL: u8 = 0x20;
/// The `client` bit of PP2_TYPE_SSL saying the client connected over TLS. (0x02 / 0x04 are
/// about a client certificate, `verify` is 0 when one was verified: not used here.)
const PP2_CLIENT_SSL: u8 = 0x01;
/// `client` and `verify`, before the sub-TLVs of PP2_TYPE_SSL.
const PP2_SSL_FIXED: usize = 5;

/// Walks the TLVs of `header` (the whole v2 header) from `at`, where the address block
/// ends. Every TLV must fit in the header, which must end where the last one does; their
/// values are skipped, except a CRC32C, which must match, and an SSL one, whose sub-TLVs
/// must fill its value the same way. Returns whether an SSL TLV says the client used TLS.
fn check_tlvs(header: &[u8], at: usize) -> Result<bool, ProxyError> {
    let mut crc_at = None;
    let mut ssl_client = None;
    walk_tlvs(header, at, |kind, value| {
        match kind {
            PP2_TYPE_CRC32C => {
                if value.len() != 4 || crc_at.is_some() {
                    return Err(ProxyError::BadV2);
                }
                crc_at = Some(value.start);
            }
            PP2_TYPE_SSL => {
                // Two SSL TLVs could disagree about the client's TLS: refuse rather than pick.
                if value.len() < PP2_SSL_FIXED || ssl_client.is_some() {
                    return Err(ProxyError::BadV2);
                }
                walk_tlvs(&header[..value.end], value.start + PP2_SSL_FIXED, |_, _| {
                    Ok(())
                })?;
                ssl_client = Some(header[value.start]);
            }
            _ => {}
        }
        Ok(())
    })?;
    if let Some(at) = crc_at {
        let sent = u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let mut digest = CRC32C.digest();
        for part in [&header[..at], &[0; 4], &header[at + 4..]] {
            digest.update(part);
        }
        if digest.finalize() != sent {
            return Err(ProxyError::BadV2);
        }
    }
    Ok(ssl_client.is_some_and(|c| c & PP2_CLIENT_SSL != 0))
}

/// Calls `each(type, value range)` for the TLVs (type, 16-bit length, value) of `bytes` from
/// `at` on. Each must fit in `bytes`, and the last must end where `bytes` does.
fn walk_tlvs(
    bytes: &[u8],
    mut at: usize,
    mut each: impl FnMut(u8, std::ops::Range<usize>) -> Result<(), ProxyError>,
) -> Result<(), ProxyError> {
    while at < bytes.len() {
        if bytes.len() - at < 3 {
            return Err(ProxyError::BadV2);
        }
        let value = at + 3;
        let end = value + usize::from(be16(&bytes[at + 1..value]));
        if end > bytes.len() {
            return Err(ProxyError::BadV2);
        }
        each(bytes[at], value..end)?;
        at = end;
    }
    Ok(())
}

/// CRC-32C (Castagnoli), as PP2_TYPE_CRC32C carries it.
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\r\nUSER x\r\n";
        let (hdr, n) = parse(h).unwrap().unwrap();
        assert_eq!(hdr.source, Some(sa("192.0.2.1:56324")));
        assert_eq!(hdr.destination, Some(sa("198.51.100.2:110")));
        assert_eq!(&h[n..], b"USER x\r\n");
        let (hdr, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 995\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(hdr.source, Some(sa("[2001:db8::1]:4000")));
        let (hdr, n) = parse(b"PROXY UNKNOWN whatever\r\n").unwrap().unwrap();
        assert_eq!((hdr.source, n), (None, 24));
    }

    #[test]
    fn v1_incomplete_and_bad() {
        let full = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\r\n";
        for len in 0..full.len() {
            assert_eq!(parse(&full[..len]), Ok(None), "prefix of {len}");
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110 x\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 1\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 1\r\n",
            b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"USER alice\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(b"PROXY"), Ok(None));
        let long = [b"PROXY TCP4 ".to_vec(), vec![b'1'; 200]].concat();
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&110u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x02, 0xAB, 0xCD]); // a NOOP TLV
        let mut h = v2(1, 0x11, &body);
        h.extend_from_slice(b"CAPA\r\n");
        let (hdr, n) = parse(&h).unwrap().unwrap();
        assert_eq!(hdr.source, Some(sa("192.0.2.1:56324")));
        assert_eq!(hdr.destination, Some(sa("198.51.100.2:110")));
        assert_eq!(&h[n..], b"CAPA\r\n");
        for len in 0..n {
            assert_eq!(parse(&h[..len]), Ok(None), "prefix {len}");
        }

        let mut body6 = Ipv6Addr::LOCALHOST.octets().to_vec();
        body6.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        body6.extend_from_slice(&[0x13, 0x88, 0x00, 0x6E]);
        let (hdr, _) = parse(&v2(1, 0x21, &body6)).unwrap().unwrap();
        assert_eq!(hdr.source, Some(sa("[::1]:5000")));

        let (hdr, n) = parse(&v2(0, 0x00, &[])).unwrap().unwrap();
        assert_eq!((hdr.source, n), (None, 16));
    }

    #[test]
    fn v2_bad() {
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Err(ProxyError::BadV2));
        assert_eq!(parse(&v2(2, 0x11, &[0; 12])), Err(ProxyError::BadV2));
        assert_eq!(parse(&v2(1, 0x99, &[0; 12])), Err(ProxyError::BadV2));
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert_eq!(parse(&wrong_version), Err(ProxyError::BadV2));
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&huge), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_unknown_ignores_whatever_precedes_the_crlf() {
        // 2.1: "the receiver must ignore anything presented before the CRLF is found".
        let h = b"PROXY UNKNOWN \xff\xfe whatever\r\nCAPA\r\n";
        let (hdr, n) = parse(h).unwrap().unwrap();
        assert_eq!(hdr.source, None);
        assert_eq!(&h[n..], b"CAPA\r\n");
        let (hdr, n) = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((hdr.source, n), (None, 15));
        let worst = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            ["ffff"; 8].join(":")
        );
        assert_eq!(worst.len(), V1_MAX);
        assert_eq!(parse(worst.as_bytes()).unwrap().unwrap().1, V1_MAX);
        for bad in [
            &b"PROXY UNKNOWNX\r\n"[..],
            b"PROXY unknown\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\r\n",
            b"PROXY TCP6 [2001:db8::1] 2001:db8::2 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn ipv4_block() -> Vec<u8> {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&110u16.to_be_bytes());
        body
    }

    #[test]
    fn v2_tlvs_are_skipped_whatever_their_type() {
        let mut body = ipv4_block();
        // PP2_TYPE_SSL with PP2_SUBTYPE_SSL_VERSION and _CN sub-TLVs.
        let mut ssl = vec![0x01, 0, 0, 0, 0];
        ssl.extend_from_slice(&[0x21, 0x00, 0x07]);
        ssl.extend_from_slice(b"TLSv1.3");
        ssl.extend_from_slice(&[0x22, 0x00, 0x0B]);
        ssl.extend_from_slice(b"example.org");
        body.push(0x20);
        body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
        body.extend_from_slice(&ssl);
        body.extend_from_slice(&[0x05, 0x00, 0x03, 1, 2, 3]); // UNIQUE_ID
        body.extend_from_slice(&[0xE0, 0x00, 0x00]); // custom, empty
        body.extend_from_slice(&[0xFF, 0x00, 0x01, 0x00]); // unknown type
        let mut h = v2(1, 0x11, &body);
        h.extend_from_slice(b"USER x\r\n");
        let (hdr, n) = parse(&h).unwrap().unwrap();
        assert_eq!(hdr.source, Some(sa("192.0.2.1:56324")));
        assert_eq!(&h[n..], b"USER x\r\n");
        assert!(hdr.client_tls);
    }

    /// A PP2_TYPE_SSL TLV (spec 2.2.5) with `client` and `verify`, then `sub` sub-TLVs.
    fn ssl_tlv(client: u8, verify: u32, sub: &[u8]) -> Vec<u8> {
        let mut value = vec![client];
        value.extend_from_slice(&verify.to_be_bytes());
        value.extend_from_slice(sub);
        let mut tlv = vec![0x20];
        tlv.extend_from_slice(&(value.len() as u16).to_be_bytes());
        tlv.extend_from_slice(&value);
        tlv
    }

    /// PP2_SUBTYPE_SSL_VERSION "TLSv1.3", as HAProxy's `send-proxy-v2-ssl` sends it.
    const TLS13: &[u8] = b"\x21\x00\x07TLSv1.3";

    #[test]
    fn v2_ssl_tlv_says_whether_the_client_used_tls() {
        let parsed = |tlvs: &[u8]| {
            let mut h = v2(1, 0x11, &[ipv4_block(), tlvs.to_vec()].concat());
            h.extend_from_slice(b"USER x\r\n");
            let (hdr, n) = parse(&h).unwrap().unwrap();
            assert_eq!(&h[n..], b"USER x\r\n");
            assert_eq!(hdr.source, Some(sa("192.0.2.1:56324")));
            hdr.client_tls
        };
        // PP2_CLIENT_SSL, alone or with the client-certificate bits, whatever `verify` says.
        assert!(parsed(&ssl_tlv(0x01, 0, TLS13)));
        assert!(parsed(&ssl_tlv(0x07, 0, TLS13)));
        assert!(parsed(&ssl_tlv(0x01, 1, &[])));
        let cn = [TLS13, b"\x22\x00\x05alice"].concat();
        let noop = [0x04, 0x00, 0x01, 0x00];
        assert!(parsed(&[&noop[..], &ssl_tlv(0x01, 0, &cn), &noop].concat()));
        // HAProxy sends the TLV with `client` 0 for a client that did not use TLS.
        assert!(!parsed(&ssl_tlv(0x00, 0, &[])));
        assert!(!parsed(&ssl_tlv(0x06, 0, &[])));
        assert!(!parsed(&[]));
        assert!(!parsed(&noop));
        // IPv6 and UNIX addresses carry it too.
        let mut body6 = vec![0; 36];
        body6.extend_from_slice(&ssl_tlv(0x01, 0, TLS13));
        assert!(parse(&v2(1, 0x21, &body6)).unwrap().unwrap().0.client_tls);
        let mut unix = vec![0; 216];
        unix.extend_from_slice(&ssl_tlv(0x01, 0, &[]));
        let (hdr, _) = parse(&v2(1, 0x31, &unix)).unwrap().unwrap();
        assert_eq!((hdr.source, hdr.client_tls), (None, true));
        // LOCAL (a health check) and UNSPEC: no address block read, no TLV either.
        let local = [ipv4_block(), ssl_tlv(0x01, 0, &[])].concat();
        assert!(!parse(&v2(0, 0x11, &local)).unwrap().unwrap().0.client_tls);
        // v1 cannot say it.
        let (hdr, _) = parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert!(!hdr.client_tls);
    }

    #[test]
    fn v2_malformed_ssl_tlv_is_refused() {
        let refused = |tlvs: &[u8]| {
            let mut h = v2(1, 0x11, &[ipv4_block(), tlvs.to_vec()].concat());
            // What follows the header must not complete a short TLV.
            h.extend_from_slice(b"CAPA\r\n");
            assert_eq!(parse(&h), Err(ProxyError::BadV2), "{tlvs:02x?}");
        };
        // Shorter than `client` + `verify`.
        for len in 0..5u8 {
            let mut tlv = vec![0x20, 0x00, len];
            tlv.extend(std::iter::repeat_n(0x01, usize::from(len)));
            refused(&tlv);
        }
        // A sub-TLV running past the SSL TLV, even if the header goes on.
        let mut long_sub = ssl_tlv(0x01, 0, b"\x21\x00\x09TLSv1.3");
        refused(&long_sub);
        long_sub.extend_from_slice(&[0x04, 0x00, 0x00]);
        refused(&long_sub);
        // Bytes after `verify` too few for a sub-TLV header.
        refused(&ssl_tlv(0x01, 0, &[0x21]));
        refused(&ssl_tlv(0x01, 0, &[0x21, 0x00]));
        refused(&ssl_tlv(0x01, 0, &[TLS13, &[0x22][..]].concat()));
        // Two SSL TLVs, which might disagree.
        refused(&[ssl_tlv(0x01, 0, &[]), ssl_tlv(0x00, 0, &[])].concat());
        refused(&[ssl_tlv(0x01, 0, &[]), ssl_tlv(0x01, 0, &[])].concat());
        // The SSL TLV's own length past the header.
        let mut past = ssl_tlv(0x01, 0, TLS13);
        past[2] += 1;
        refused(&past);
    }

    #[test]
    fn v2_tlv_running_past_the_header_is_refused() {
        let mut body = ipv4_block();
        body.extend_from_slice(&[0x04, 0x00, 0x08, 0xAB, 0xCD]); // says 8, has 2
        let mut h = v2(1, 0x11, &body);
        // The bytes the TLV claims are the session's: they must not make it valid.
        h.extend_from_slice(b"CAPA\r\n");
        assert_eq!(parse(&h), Err(ProxyError::BadV2));
        // Bytes after the addresses too few for a TLV header.
        for extra in [&[0x04][..], &[0x04, 0x00]] {
            let body = [ipv4_block(), extra.to_vec()].concat();
            assert_eq!(parse(&v2(1, 0x11, &body)), Err(ProxyError::BadV2));
        }
        let mut body6 = vec![0; 36];
        body6.extend_from_slice(&[0x20, 0x01, 0x00]);
        assert_eq!(parse(&v2(1, 0x21, &body6)), Err(ProxyError::BadV2));
    }

    #[test]
    fn v2_udp_and_unix_keep_the_peer_but_need_their_address_block() {
        for (fam, size) in [(0x12, 12), (0x22, 36), (0x31, 216), (0x32, 216)] {
            let mut h = v2(1, fam, &vec![7; size]);
            h.extend_from_slice(b"CAPA\r\n");
            let (hdr, n) = parse(&h).unwrap().unwrap();
            assert_eq!((hdr.source, &h[n..]), (None, &b"CAPA\r\n"[..]), "{fam:#x}");
            let mut with_tlv = vec![7; size];
            with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
            assert!(parse(&v2(1, fam, &with_tlv)).unwrap().is_some(), "{fam:#x}");
            let short = v2(1, fam, &vec![7; size - 1]);
            assert_eq!(parse(&short), Err(ProxyError::BadV2), "{fam:#x}");
            assert_eq!(parse(&v2(1, fam, &[])), Err(ProxyError::BadV2), "{fam:#x}");
        }
        // UNSPEC with PROXY, and LOCAL with any family and block: the peer, bytes skipped.
        assert_eq!(parse(&v2(1, 0x00, &[1, 2, 3])).unwrap().unwrap().1, 19);
        let (hdr, n) = parse(&v2(0, 0x11, &[9; 5])).unwrap().unwrap();
        assert_eq!((hdr.source, n), (None, 21));
    }

    #[test]
    fn v2_crc32c_is_checked() {
        // As an AWS network load balancer sends it: CRC32C, a VPC endpoint TLV (0xEA), NOOP.
        let mut aws = V2_SIGNATURE.to_vec();
        aws.extend_from_slice(&[0x21, 0x11, 0x00, 0x54]);
        aws.extend_from_slice(&[172, 31, 7, 113, 172, 31, 10, 31, 0xC8, 0xF2, 0x00, 0x50]);
        aws.extend_from_slice(&[0x03, 0x00, 0x04, 0xE8, 0xD6, 0x89, 0x2D]);
        aws.extend_from_slice(&[0xEA, 0x00, 0x17, 0x01]);
        aws.extend_from_slice(b"vpce-08d2bf15fac5001c9");
        aws.extend_from_slice(&[0x04, 0x00, 0x24]);
        aws.extend_from_slice(&[0; 36]);
        let (hdr, n) = parse(&aws).unwrap().unwrap();
        assert_eq!((hdr.source, n), (Some(sa("172.31.7.113:51442")), 100));

        let mut body = ipv4_block();
        body.extend_from_slice(&[0x03, 0x00, 0x04, 0, 0, 0, 0]);
        body.extend_from_slice(&[0x04, 0x00, 0x02, 0xAB, 0xCD]);
        let mut h = v2(1, 0x11, &body);
        let at = 16 + 12 + 3;
        let crc = CRC32C.checksum(&h);
        h[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        let (hdr, n) = parse(&h).unwrap().unwrap();
        assert_eq!((hdr.source, n), (Some(sa("192.0.2.1:56324")), h.len()));
        // Any other byte changed: refused.
        let mut forged = h.clone();
        forged[16] = 10;
        assert_eq!(parse(&forged), Err(ProxyError::BadV2));
        let mut wrong = h.clone();
        wrong[at + 3] ^= 1;
        assert_eq!(parse(&wrong), Err(ProxyError::BadV2));
        // A CRC32C value is exactly 4 bytes.
        let mut body = ipv4_block();
        body.extend_from_slice(&[0x03, 0x00, 0x02, 0, 0]);
        assert_eq!(parse(&v2(1, 0x11, &body)), Err(ProxyError::BadV2));
    }
}
