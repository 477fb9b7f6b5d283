//! RMCP / RMCP+ framing and IPMI LAN messages: pure encoders and decoders.
//! Every decoder checks lengths first: a truncated or garbled datagram is an error that
//! names what was missing, never a panic.

use crate::ipmi::crypto::{self, CipherSuite, Keys};

/// RMCP header for IPMI class messages, no RMCP ACK.
pub const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
/// Auth type / format byte of RMCP+ (IPMI 2.0) sessions.
pub const AUTH_RMCP_PLUS: u8 = 0x06;

/// RMCP+ payload types.
pub mod payload {
    /// An IPMI message.
    pub const IPMI: u8 = 0x00;
    /// RMCP+ Open Session Request.
    pub const OPEN_REQUEST: u8 = 0x10;
    /// RMCP+ Open Session Response.
    pub const OPEN_RESPONSE: u8 = 0x11;
    /// RAKP message 1.
    pub const RAKP1: u8 = 0x12;
    /// RAKP message 2.
    pub const RAKP2: u8 = 0x13;
    /// RAKP message 3.
    pub const RAKP3: u8 = 0x14;
    /// RAKP message 4.
    pub const RAKP4: u8 = 0x15;
}

/// A datagram that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PacketError(pub String);

fn short(what: &str, need: usize, have: usize) -> PacketError {
    PacketError(format!("truncated {what}: need {need} bytes, got {have}"))
}

/// Session state that framing needs.
#[derive(Debug, Clone)]
pub struct Framing {
    /// The negotiated suite.
    pub suite: CipherSuite,
    /// K1/K2 once the session is active; `None` before (pre-session messages are clear).
    pub keys: Option<Keys>,
}

/// Wraps a payload into an RMCP+ datagram, encrypting and signing when the session is
/// active.
pub fn encode(
    framing: &Framing,
    payload_type: u8,
    session_id: u32,
    seq: u32,
    payload: &[u8],
    iv: [u8; 16],
) -> Vec<u8> {
    let active = framing.keys.as_ref();
    let encrypt = active.is_some() && framing.suite.confidentiality == 1;
    let authenticate = active.is_some() && framing.suite.integrity != 0;
    let body = match (encrypt, active) {
        (true, Some(k)) => crypto::encrypt(&k.k2, iv, payload),
        _ => payload.to_vec(),
    };
    let mut p = RMCP_HEADER.to_vec();
    p.push(AUTH_RMCP_PLUS);
    p.push(payload_type | if encrypt { 0x80 } else { 0 } | if authenticate { 0x40 } else { 0 });
    p.extend_from_slice(&session_id.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&(body.len() as u16).to_le_bytes());
    p.extend_from_slice(&body);
    if let (true, Some(k)) = (authenticate, active) {
        // Pad so that auth type .. next header is a multiple of 4 bytes.
        let covered = p.len() - 4 + 2;
        let pad = (4 - covered % 4) % 4;
        p.extend(std::iter::repeat_n(0xff, pad));
        p.push(pad as u8);
        p.push(0x07);
        let code = crypto::integrity(&framing.suite, &k.k1, &p[4..]);
        p.extend_from_slice(&code);
    }
    p
}

/// A decoded RMCP+ datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Payload type without the encryption/authentication bits.
    pub payload_type: u8,
    /// Session id (cairn's console session id on answers).
    pub session_id: u32,
    /// Session sequence number.
    pub seq: u32,
    /// The clear payload.
    pub payload: Vec<u8>,
}

/// Decodes an RMCP+ datagram, checking integrity and decrypting when the session is active.
pub fn decode(framing: &Framing, bytes: &[u8]) -> Result<Datagram, PacketError> {
    if bytes.len() < 4 {
        return Err(short("RMCP header", 4, bytes.len()));
    }
    if bytes[0] != 0x06 || bytes[3] & 0x1f != 0x07 {
        return Err(PacketError(format!(
            "not an RMCP IPMI message (header {:02x?})",
            &bytes[..4]
        )));
    }
    if bytes.len() < 5 {
        return Err(short("session header", 5, bytes.len()));
    }
    if bytes[4] != AUTH_RMCP_PLUS {
        return Err(PacketError(format!(
            "IPMI 1.5 session (auth type {:#04x}) answered to an RMCP+ request",
            bytes[4]
        )));
    }
    if bytes.len() < 16 {
        return Err(short("RMCP+ session header", 16, bytes.len()));
    }
    let ptype = bytes[5];
    let session_id = u32::from_le_bytes(bytes[6..10].try_into().unwrap_or_default());
    let seq = u32::from_le_bytes(bytes[10..14].try_into().unwrap_or_default());
    let len = u16::from_le_bytes([bytes[14], bytes[15]]) as usize;
    if bytes.len() < 16 + len {
        return Err(short("RMCP+ payload", 16 + len, bytes.len()));
    }
    let body = &bytes[16..16 + len];
    let authenticated = ptype & 0x40 != 0;
    let encrypted = ptype & 0x80 != 0;
    if let Some(keys) = &framing.keys {
        if framing.suite.integrity != 0 {
            if !authenticated {
                return Err(PacketError(
                    "unauthenticated packet in an authenticated session".into(),
                ));
            }
            let code_len = framing.suite.integrity_len();
            let trailer = &bytes[16 + len..];
            if trailer.len() < 2 + code_len {
                return Err(short(
                    "integrity trailer",
                    16 + len + 2 + code_len,
                    bytes.len(),
                ));
            }
            let signed_end = bytes.len() - code_len;
            let expect = crypto::integrity(&framing.suite, &keys.k1, &bytes[4..signed_end]);
            if expect != bytes[signed_end..] {
                return Err(PacketError(
                    "integrity check failed (wrong key or altered packet)".into(),
                ));
            }
        }
        if framing.suite.confidentiality == 1 && ptype & 0x3f == payload::IPMI && !encrypted {
            return Err(PacketError(
                "clear-text payload in an encrypted session".into(),
            ));
        }
    }
    let payload = match (&framing.keys, encrypted) {
        // Suites without confidentiality have no K2 to decrypt with (found by fuzzing: the
        // empty key was sliced and panicked).
        (Some(_), true) if framing.suite.confidentiality == 0 => {
            return Err(PacketError(
                "encrypted payload in a session without confidentiality".into(),
            ));
        }
        (Some(keys), true) => crypto::decrypt(&keys.k2, body)
            .ok_or_else(|| PacketError("cannot decrypt payload (bad length or padding)".into()))?,
        (None, true) => {
            return Err(PacketError(
                "encrypted payload before the session is active".into(),
            ));
        }
        _ => body.to_vec(),
    };
    Ok(Datagram {
        payload_type: ptype & 0x3f,
        session_id,
        seq,
        payload,
    })
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// BMC slave address.
pub const BMC_ADDR: u8 = 0x20;
/// Remote console software id.
pub const CONSOLE_ADDR: u8 = 0x81;

/// Builds an IPMI LAN request message.
pub fn ipmi_request(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut m = vec![BMC_ADDR, netfn << 2];
    m.push(checksum(&m));
    let start = m.len();
    m.extend_from_slice(&[CONSOLE_ADDR, rq_seq << 2, cmd]);
    m.extend_from_slice(data);
    let c = checksum(&m[start..]);
    m.push(c);
    m
}

/// A decoded IPMI response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpmiResponse {
    /// Response network function (request netfn + 1).
    pub netfn: u8,
    /// Sequence number echoed from the request.
    pub rq_seq: u8,
    /// Command.
    pub cmd: u8,
    /// Completion code (0 is success).
    pub completion: u8,
    /// Response data after the completion code.
    pub data: Vec<u8>,
}

/// Decodes an IPMI LAN response message.
pub fn ipmi_response(m: &[u8]) -> Result<IpmiResponse, PacketError> {
    if m.len() < 8 {
        return Err(short("IPMI response", 8, m.len()));
    }
    if checksum(&m[..2]) != m[2] || checksum(&m[3..m.len() - 1]) != m[m.len() - 1] {
        return Err(PacketError("IPMI response checksum mismatch".into()));
    }
    Ok(IpmiResponse {
        netfn: m[1] >> 2,
        rq_seq: m[4] >> 2,
        cmd: m[5],
        completion: m[6],
        data: m[7..m.len() - 1].to_vec(),
    })
}

/// Text for an IPMI completion code.
pub fn completion_text(cc: u8) -> &'static str {
    match cc {
        0xc0 => "node busy",
        0xc1 => "invalid command",
        0xc2 => "command invalid for this LUN",
        0xc3 => "timeout while processing",
        0xc4 => "out of space",
        0xc5 => "reservation cancelled or invalid",
        0xc6 => "request data truncated",
        0xc7 => "request data length invalid",
        0xc8 => "request data field length limit exceeded",
        0xc9 => "parameter out of range",
        0xca => "cannot return the number of requested bytes",
        0xcb => "requested sensor, data or record not present",
        0xcc => "invalid data field in request",
        0xcd => "command illegal for this sensor or record type",
        0xce => "response could not be provided",
        0xcf => "duplicated request",
        0xd0 => "SDR repository in update mode",
        0xd1 => "device in firmware update mode",
        0xd2 => "BMC initialization in progress",
        0xd3 => "destination unavailable",
        0xd4 => "insufficient privilege level",
        0xd5 => "not supported in present state",
        0xd6 => "sub-function disabled",
        _ => "unspecified error",
    }
}

/// Text for an RMCP+ status code (Open Session / RAKP).
pub fn rmcp_status_text(code: u8) -> &'static str {
    match code {
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session id",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session id",
        0x09 => "invalid role",
        0x0a => "unauthorized role or privilege level requested",
        0x0b => "insufficient resources to create a session at the requested role",
        0x0c => "invalid name length",
        0x0d => "unauthorized name",
        0x0e => "unauthorized GUID",
        0x0f => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(suite: CipherSuite) -> Framing {
        Framing {
            suite,
            keys: Some(crypto::keys(&suite, &[9u8; 32])),
        }
    }

    #[test]
    fn round_trip_in_each_suite() {
        let msg = ipmi_request(0x06, 0x01, 5, &[]);
        for suite in [
            CipherSuite::NONE,
            CipherSuite::SHA1_AES,
            CipherSuite::SHA256_AES,
        ] {
            let f = active(suite);
            let bytes = encode(&f, payload::IPMI, 0x1234, 7, &msg, [3; 16]);
            if suite.integrity != 0 {
                assert_eq!((bytes.len() - 4 - suite.integrity_len()) % 4, 0, "pad");
            }
            let d = decode(&f, &bytes).unwrap();
            assert_eq!((d.session_id, d.seq, d.payload), (0x1234, 7, msg.clone()));
        }
    }

    #[test]
    fn truncated_and_altered_packets_are_errors() {
        let f = active(CipherSuite::SHA1_AES);
        let bytes = encode(
            &f,
            payload::IPMI,
            1,
            1,
            &ipmi_request(0, 1, 1, &[]),
            [0; 16],
        );
        for cut in [0, 3, 10, 15, 20, bytes.len() - 13, bytes.len() - 1] {
            let e = decode(&f, &bytes[..cut]).unwrap_err();
            assert!(
                e.0.contains("truncated") || e.0.contains("integrity"),
                "{cut}: {e}"
            );
        }
        let mut altered = bytes.clone();
        altered[20] ^= 1;
        assert!(
            decode(&f, &altered)
                .unwrap_err()
                .0
                .contains("integrity check failed")
        );
        let mut v15 = bytes.clone();
        v15[4] = 0x00;
        assert!(decode(&f, &v15).unwrap_err().0.contains("IPMI 1.5"));
        assert!(
            ipmi_response(&[0x81, 0x1c, 0x63])
                .unwrap_err()
                .0
                .contains("truncated IPMI response")
        );
    }

    #[test]
    fn an_encrypted_payload_in_suite_0_is_an_error_not_a_panic() {
        // Regression: fuzz/artifacts/ipmi_rmcp. Suite 0 has no K2; a BMC (or a spoofed
        // datagram) flagging its payload encrypted made decode slice an empty key.
        let f = active(CipherSuite::NONE);
        let mut bytes = RMCP_HEADER.to_vec();
        bytes.extend_from_slice(&[AUTH_RMCP_PLUS, 0x80 | payload::IPMI]);
        bytes.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 32, 0]);
        bytes.extend_from_slice(&[0xbf; 32]);
        let e = decode(&f, &bytes).unwrap_err();
        assert!(e.0.contains("without confidentiality"), "{e}");
    }

    #[test]
    fn ipmi_message_checksums() {
        // Get Device ID as ipmitool sends it.
        let m = ipmi_request(0x06, 0x01, 1, &[]);
        assert_eq!(m, [0x20, 0x18, 0xc8, 0x81, 0x04, 0x01, 0x7a]);
        // Its answer, with the netfn+1 and echoed sequence.
        let mut r = vec![0x81, 0x1c];
        r.push(checksum(&r));
        let body = [0x20, 0x04, 0x01, 0x00, 0x23, 0x03];
        r.extend_from_slice(&body);
        r.push(checksum(&body));
        let resp = ipmi_response(&r).unwrap();
        assert_eq!(
            (resp.netfn, resp.rq_seq, resp.completion, resp.data),
            (7, 1, 0, vec![0x23, 0x03])
        );
    }
}
