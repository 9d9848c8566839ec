//! Just enough of the pcap format to classify what crossed the lab bridge.

use std::net::Ipv4Addr;

#[derive(Debug)]
pub struct Ipv4Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

/// IPv4 packets of a capture. Non-IP frames (ARP) are skipped; IPv6 may
/// only be ICMPv6 (neighbour discovery on the veths), anything else panics.
pub fn ipv4_packets(bytes: &[u8]) -> Vec<Ipv4Packet> {
    assert!(bytes.len() >= 24, "not a pcap file");
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let le = matches!(magic, 0xa1b2c3d4 | 0xa1b23c4d);
    assert!(le || matches!(magic, 0xd4c3b2a1 | 0x4d3cb2a1), "unknown pcap magic {magic:x}");
    let u32_at = |b: &[u8], at: usize| {
        let a: [u8; 4] = b[at..at + 4].try_into().unwrap();
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    // Ethernet (1), or Linux cooked capture (113) from `tcpdump -i any -y LINUX_SLL`.
    let linktype = u32_at(bytes, 20);
    let (header_len, proto_at) = match linktype {
        1 => (14, 12),
        113 => (16, 14),
        other => panic!("unsupported link type {other}"),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32_at(bytes, at + 8) as usize;
        let frame = &bytes[at + 16..(at + 16 + len).min(bytes.len())];
        at += 16 + len;
        if frame.len() < header_len {
            continue;
        }
        let ethertype = u16::from_be_bytes([frame[proto_at], frame[proto_at + 1]]);
        let ip = &frame[header_len..];
        match ethertype {
            0x0800 if ip.len() >= 20 => {
                let ihl = ((ip[0] & 0x0f) as usize) * 4;
                let protocol = ip[9];
                let (src_port, dst_port) = if (protocol == 6 || protocol == 17) && ip.len() >= ihl + 4 {
                    (u16::from_be_bytes([ip[ihl], ip[ihl + 1]]), u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]))
                } else {
                    (0, 0)
                };
                out.push(Ipv4Packet {
                    src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
                    dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
                    protocol,
                    src_port,
                    dst_port,
                });
            }
            0x86dd if ip.len() >= 40 => {
                // Hop-by-hop (0) carries MLD reports; both are link-local chatter.
                assert!(ip[6] == 58 || ip[6] == 0, "IPv6 payload on the bridge (next header {})", ip[6]);
            }
            _ => {}
        }
    }
    out
}
