//! The HAProxy PROXY protocol, versions 1 (text) and 2 (binary), sans I/O.
//!
//! Owns: recognising and parsing the header a load balancer puts in front of a connection,
//! so the client address it carries can be used for limits, penalties and logs.
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

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The original client, or `None` for v2 LOCAL / v1 UNKNOWN (health checks): use the
    /// socket's own peer address then.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
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
    let line = std::str::from_utf8(&buf[..lf - 1]).map_err(|_| ProxyError::BadV1)?;
    let mut f = line.split(' ');
    if f.next() != Some("PROXY") {
        return Err(ProxyError::BadV1);
    }
    let proto = f.next().ok_or(ProxyError::BadV1)?;
    if proto == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Some((
            Header {
                source: None,
                destination: None,
            },
            lf + 1,
        )));
    }
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
    let local = Header {
        source: None,
        destination: None,
    };
    match ver_cmd & 0x0F {
        0x0 => return Ok(Some((local, total))), // LOCAL: health check from the proxy itself
        0x1 => {}                               // PROXY
        _ => return Err(ProxyError::BadV2),
    }
    let header = match fam {
        0x11 => {
            if body.len() < 12 {
                return Err(ProxyError::BadV2);
            }
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            Header {
                source: Some(SocketAddr::new(src.into(), be16(&body[8..10]))),
                destination: Some(SocketAddr::new(dst.into(), be16(&body[10..12]))),
            }
        }
        0x21 => {
            if body.len() < 36 {
                return Err(ProxyError::BadV2);
            }
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
            }
        }
        // UNSPEC or UNIX / UDP: no usable TCP address; keep the socket's peer.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => local,
        _ => return Err(ProxyError::BadV2),
    };
    Ok(Some((header, total)))
}

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
}
