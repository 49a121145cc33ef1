//! The Semtech UDP packet-forwarder protocol (GWMP), version 2: the
//! datagram header and the acknowledgements the relay builds itself.
//!
//! Every datagram starts with the protocol version (2), a 16-bit token
//! chosen by the sender and an identifier. PUSH_DATA, PULL_DATA and TX_ACK
//! carry the gateway's 8-byte EUI next; PUSH_DATA, PULL_RESP and TX_ACK end
//! with a JSON object.

/// The only protocol version relayed.
pub const VERSION: u8 = 2;

/// GWMP packet identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PushData,
    PushAck,
    PullData,
    PullResp,
    PullAck,
    TxAck,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0x00 => Kind::PushData,
            0x01 => Kind::PushAck,
            0x02 => Kind::PullData,
            0x03 => Kind::PullResp,
            0x04 => Kind::PullAck,
            0x05 => Kind::TxAck,
            _ => return None,
        })
    }

    /// Whether a gateway EUI follows the identifier.
    fn has_eui(self) -> bool {
        matches!(self, Kind::PushData | Kind::PullData | Kind::TxAck)
    }
}

/// Why a datagram is not a GWMP v2 packet. The names are the reasons the
/// relay counts drops by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its header.
    Short,
    /// A protocol version other than 2.
    Version,
    /// An unknown identifier.
    Kind,
}

impl Malformed {
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::Short => "short",
            Malformed::Version => "version",
            Malformed::Kind => "unknown-type",
        }
    }
}

/// A parsed GWMP header and the rest of the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub token: [u8; 2],
    pub kind: Kind,
    /// The gateway EUI, for the kinds that carry one.
    pub eui: Option<[u8; 8]>,
    /// What follows the header (JSON for the kinds that carry it).
    pub body: &'a [u8],
}

/// Parses the header of `datagram`.
pub fn parse(datagram: &[u8]) -> Result<Packet<'_>, Malformed> {
    if datagram.len() < 4 {
        return Err(Malformed::Short);
    }
    if datagram[0] != VERSION {
        return Err(Malformed::Version);
    }
    let token = [datagram[1], datagram[2]];
    let kind = Kind::from_byte(datagram[3]).ok_or(Malformed::Kind)?;
    if kind.has_eui() {
        let eui: [u8; 8] = datagram
            .get(4..12)
            .ok_or(Malformed::Short)?
            .try_into()
            .expect("8 bytes");
        Ok(Packet {
            token,
            kind,
            eui: Some(eui),
            body: &datagram[12..],
        })
    } else {
        Ok(Packet {
            token,
            kind,
            eui: None,
            body: &datagram[4..],
        })
    }
}

/// The acknowledgement of a PUSH_DATA or PULL_DATA with `token`.
pub fn ack(token: [u8; 2], kind: Kind) -> Vec<u8> {
    vec![VERSION, token[0], token[1], kind.byte()]
}

impl Kind {
    /// The identifier byte.
    pub fn byte(self) -> u8 {
        match self {
            Kind::PushData => 0x00,
            Kind::PushAck => 0x01,
            Kind::PullData => 0x02,
            Kind::PullResp => 0x03,
            Kind::PullAck => 0x04,
            Kind::TxAck => 0x05,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_malformed_ones_are_named() {
        let push = [2, 0xab, 0xcd, 0, 1, 2, 3, 4, 5, 6, 7, 8, b'{', b'}'];
        let p = parse(&push).unwrap();
        assert_eq!(p.token, [0xab, 0xcd]);
        assert_eq!(p.kind, Kind::PushData);
        assert_eq!(p.eui, Some([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(p.body, b"{}");
        let resp = parse(&[2, 0, 1, 3, b'{', b'}']).unwrap();
        assert_eq!(
            (resp.kind, resp.eui, resp.body),
            (Kind::PullResp, None, &b"{}"[..])
        );
        assert_eq!(parse(&[2, 0, 1]), Err(Malformed::Short));
        assert_eq!(parse(&[2, 0, 1, 2, 9]), Err(Malformed::Short));
        assert_eq!(
            parse(&[1, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::Version)
        );
        assert_eq!(parse(&[2, 0, 1, 9]), Err(Malformed::Kind));
        assert_eq!(ack([7, 9], Kind::PushAck), [2, 7, 9, 1]);
    }
}
