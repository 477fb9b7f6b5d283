//! One RMCP+ session over UDP: Open Session, RAKP 1-4, Set Session Privilege Level,
//! commands with retries, Close Session.

use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;

use crate::address::Credentials;
use crate::bmc::{BmcError, BmcResult};
use crate::ipmi::crypto::{self, CipherSuite, Rakp};
use crate::ipmi::packet::{self, Framing, IpmiResponse, payload};

/// Administrator privilege: needed for chassis control and boot options.
const ADMIN: u8 = 0x04;
/// Name-only lookup: the BMC finds the user by name, not by name and role.
const NAME_ONLY_LOOKUP: u8 = 0x10;

/// Timing of a session's exchanges.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Wait for one answer before resending.
    pub retry_after: Duration,
    /// Give up on one exchange after this long.
    pub limit: Duration,
}

/// An active RMCP+ session.
pub struct Session {
    socket: UdpSocket,
    framing: Framing,
    bmc_sid: u32,
    console_sid: u32,
    seq: u32,
    rq_seq: u8,
    timing: Timing,
    rng: SystemRandom,
    doing_prefix: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("suite", &self.framing.suite.id)
            .field("bmc_sid", &self.bmc_sid)
            .finish()
    }
}

fn random<const N: usize>(rng: &SystemRandom) -> [u8; N] {
    let mut b = [0u8; N];
    // The system RNG failing is not recoverable; a zero nonce would be worse than an error,
    // so the caller sees the failure through the BMC rejecting a bad session at worst.
    let _ = rng.fill(&mut b);
    b
}

fn malformed(doing: &str, detail: impl Into<String>) -> BmcError {
    BmcError::Malformed {
        doing: doing.to_owned(),
        detail: detail.into(),
    }
}

/// Checks an Open Session Response against the proposed `suite`; the BMC's session ID.
pub(crate) fn open_response(doing: &str, suite: &CipherSuite, r: &[u8]) -> BmcResult<u32> {
    if r.len() < 2 {
        return Err(malformed(doing, "short Open Session Response"));
    }
    if r[1] != 0 {
        return Err(BmcError::Status {
            doing: doing.to_owned(),
            status: format!("RMCP+ status {:#04x}", r[1]),
            message: Some(packet::rmcp_status_text(r[1]).into()),
        });
    }
    if r.len() < 36 {
        return Err(malformed(
            doing,
            format!("Open Session Response of {} bytes", r.len()),
        ));
    }
    if (r[16], r[24], r[32]) != (suite.auth, suite.integrity, suite.confidentiality) {
        return Err(malformed(doing, "BMC chose other algorithms than proposed"));
    }
    Ok(u32::from_le_bytes([r[8], r[9], r[10], r[11]]))
}

/// A refused RAKP status: the statuses that mean the credentials are wrong are
/// [`BmcError::Auth`].
fn rakp_status(doing: &str, user: &str, code: u8) -> BmcError {
    match code {
        0x0d | 0x0f | 0x09 | 0x0a => BmcError::Auth {
            user: user.to_owned(),
            detail: packet::rmcp_status_text(code).into(),
        },
        code => BmcError::Status {
            doing: doing.to_owned(),
            status: format!("RMCP+ status {code:#04x}"),
            message: Some(packet::rmcp_status_text(code).into()),
        },
    }
}

/// Checks RAKP 2's status and length: the BMC's random number, its GUID and its key
/// exchange code (to be compared with the one the password gives).
pub(crate) fn rakp2<'a>(
    doing: &str,
    user: &str,
    suite: &CipherSuite,
    r2: &'a [u8],
) -> BmcResult<([u8; 16], [u8; 16], &'a [u8])> {
    if r2.len() < 2 {
        return Err(malformed(doing, "short RAKP 2"));
    }
    if r2[1] != 0 {
        return Err(rakp_status(doing, user, r2[1]));
    }
    let code_len = suite.auth_hmac(b"k", b"").len();
    let (Some(rand), Some(guid), Some(code)) =
        (r2.get(8..24), r2.get(24..40), r2.get(40..40 + code_len))
    else {
        return Err(malformed(doing, format!("RAKP 2 of {} bytes", r2.len())));
    };
    Ok((
        rand.try_into().unwrap_or_default(),
        guid.try_into().unwrap_or_default(),
        code,
    ))
}

/// Checks RAKP 4's status and its integrity check value against `expected`.
pub(crate) fn rakp4(
    doing: &str,
    user: &str,
    suite: &CipherSuite,
    r4: &[u8],
    expected: &[u8],
) -> BmcResult<()> {
    if r4.len() < 2 {
        return Err(malformed(doing, "short RAKP 4"));
    }
    if r4[1] != 0 {
        // Past RAKP 2 the BMC knows the password matches; any refusal is one of the user.
        return Err(BmcError::Auth {
            user: user.to_owned(),
            detail: packet::rmcp_status_text(r4[1]).into(),
        });
    }
    if r4.get(8..8 + suite.rakp4_len()) != Some(expected) {
        return Err(malformed(
            doing,
            "RAKP 4 integrity check value does not match",
        ));
    }
    Ok(())
}

impl Session {
    /// Opens a session with `suite`. An authentication failure is [`BmcError::Auth`]; a BMC
    /// that does not offer the suite is [`BmcError::Unsupported`]-like `Status` with the
    /// RMCP+ status text.
    pub async fn open(
        target: &str,
        credentials: &Credentials,
        suite: CipherSuite,
        timing: Timing,
    ) -> BmcResult<Session> {
        let socket = UdpSocket::bind(if target.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })
        .await
        .map_err(|e| BmcError::Transport {
            doing: "binding a UDP socket".into(),
            source: Box::new(e),
        })?;
        socket
            .connect(target)
            .await
            .map_err(|e| BmcError::Transport {
                doing: format!("resolving {target}"),
                source: Box::new(e),
            })?;
        let rng = SystemRandom::new();
        let console_sid = u32::from_le_bytes(random::<4>(&rng)) | 1;
        let mut s = Session {
            socket,
            framing: Framing { suite, keys: None },
            bmc_sid: 0,
            console_sid,
            seq: 0,
            rq_seq: 0,
            timing,
            rng,
            doing_prefix: format!("IPMI {target}"),
        };
        let user = credentials.username.as_bytes();
        if user.len() > 16 {
            return Err(BmcError::Invalid(
                "IPMI user names are at most 16 bytes".into(),
            ));
        }

        // Open Session.
        let tag = 0u8;
        let mut open = vec![tag, ADMIN, 0, 0];
        open.extend_from_slice(&console_sid.to_le_bytes());
        for (kind, alg) in [
            (0u8, suite.auth),
            (1, suite.integrity),
            (2, suite.confidentiality),
        ] {
            open.extend_from_slice(&[kind, 0, 0, 8, alg, 0, 0, 0]);
        }
        let doing = format!(
            "{}: open session (cipher suite {})",
            s.doing_prefix, suite.id
        );
        let r = s
            .exchange(&doing, payload::OPEN_REQUEST, &open, payload::OPEN_RESPONSE)
            .await?;
        s.bmc_sid = open_response(&doing, &suite, &r)?;

        // RAKP 1 / 2.
        let console_rand = random::<16>(&s.rng);
        let role = ADMIN | NAME_ONLY_LOOKUP;
        let mut rakp1 = vec![tag, 0, 0, 0];
        rakp1.extend_from_slice(&s.bmc_sid.to_le_bytes());
        rakp1.extend_from_slice(&console_rand);
        rakp1.extend_from_slice(&[role, 0, 0, user.len() as u8]);
        rakp1.extend_from_slice(user);
        let doing = format!("{}: RAKP 1", s.doing_prefix);
        let r2 = s
            .exchange(&doing, payload::RAKP1, &rakp1, payload::RAKP2)
            .await?;
        let (bmc_rand, bmc_guid, code) = rakp2(&doing, &credentials.username, &suite, &r2)?;
        let rakp = Rakp {
            console_sid,
            bmc_sid: s.bmc_sid,
            console_rand,
            bmc_rand,
            bmc_guid,
            role,
            user,
        };
        let kuid = crypto::user_key(credentials.password());
        if rakp.rakp2_code(&suite, &kuid) != code {
            // The BMC proved knowledge of a different password: ours is wrong.
            return Err(BmcError::Auth {
                user: credentials.username.clone(),
                detail: "wrong password (the BMC's RAKP 2 key exchange code does not match it)"
                    .into(),
            });
        }

        // RAKP 3 / 4.
        let sik = rakp.sik(&suite, &kuid);
        let mut rakp3 = vec![tag, 0, 0, 0];
        rakp3.extend_from_slice(&s.bmc_sid.to_le_bytes());
        rakp3.extend_from_slice(&rakp.rakp3_code(&suite, &kuid));
        let doing = format!("{}: RAKP 3", s.doing_prefix);
        let r4 = s
            .exchange(&doing, payload::RAKP3, &rakp3, payload::RAKP4)
            .await?;
        rakp4(
            &doing,
            &credentials.username,
            &suite,
            &r4,
            &rakp.rakp4_icv(&suite, &sik),
        )?;
        s.framing.keys = Some(crypto::keys(&suite, &sik));

        // Without this, BMCs (ipmi_sim among them) keep the session at User privilege and
        // answer chassis commands with 0xD4.
        let r = s.command(0x06, 0x3b, &[ADMIN]).await?;
        if r.completion != 0 {
            return Err(BmcError::Status {
                doing: format!("{}: Set Session Privilege Level", s.doing_prefix),
                status: format!("completion code {:#04x}", r.completion),
                message: Some(packet::completion_text(r.completion).into()),
            });
        }
        Ok(s)
    }

    async fn exchange(
        &mut self,
        doing: &str,
        ptype: u8,
        body: &[u8],
        want: u8,
    ) -> BmcResult<Vec<u8>> {
        let start = Instant::now();
        let mut buf = vec![0u8; 1024];
        loop {
            let sid = if self.framing.keys.is_some() {
                self.bmc_sid
            } else {
                0
            };
            let seq = if self.framing.keys.is_some() {
                self.seq = self.seq.wrapping_add(1).max(1);
                self.seq
            } else {
                0
            };
            let bytes = packet::encode(
                &self.framing,
                ptype,
                sid,
                seq,
                body,
                random::<16>(&self.rng),
            );
            self.socket
                .send(&bytes)
                .await
                .map_err(|e| BmcError::Transport {
                    doing: doing.to_owned(),
                    source: Box::new(e),
                })?;
            let deadline = tokio::time::Instant::now() + self.timing.retry_after;
            loop {
                let got = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await;
                let n = match got {
                    Err(_) => break, // resend
                    Ok(Err(e)) => {
                        // ICMP port unreachable shows up here on a connected socket.
                        return Err(BmcError::Transport {
                            doing: doing.to_owned(),
                            source: Box::new(e),
                        });
                    }
                    Ok(Ok(n)) => n,
                };
                match packet::decode(&self.framing, &buf[..n]) {
                    Ok(d) if d.payload_type == want => {
                        if want == payload::IPMI || d.payload.len() < 8 {
                            return Ok(d.payload);
                        }
                        // Pre-session answers carry our console session id at offset 4.
                        let sid =
                            u32::from_le_bytes(d.payload[4..8].try_into().unwrap_or_default());
                        if sid == self.console_sid {
                            return Ok(d.payload);
                        }
                        tracing::debug!(doing, "ignoring an answer for another session");
                    }
                    Ok(d) => tracing::debug!(
                        doing,
                        payload_type = d.payload_type,
                        "ignoring unexpected payload"
                    ),
                    // A garbled datagram is reported only if nothing valid follows in time.
                    Err(e) => {
                        tracing::debug!(doing, error = %e, "ignoring undecodable datagram");
                        if start.elapsed() + self.timing.retry_after > self.timing.limit {
                            return Err(malformed(doing, e.0));
                        }
                    }
                }
            }
            if start.elapsed() >= self.timing.limit {
                return Err(BmcError::Timeout {
                    doing: doing.to_owned(),
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
        }
    }

    /// Sends one IPMI command in the session and returns its answer (any completion code).
    pub async fn command(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> BmcResult<IpmiResponse> {
        let doing = format!(
            "{}: command netfn {netfn:#04x} cmd {cmd:#04x}",
            self.doing_prefix
        );
        for _ in 0..3 {
            self.rq_seq = (self.rq_seq + 1) & 0x3f;
            let msg = packet::ipmi_request(netfn, cmd, self.rq_seq, data);
            let answer = self
                .exchange(&doing, payload::IPMI, &msg, payload::IPMI)
                .await?;
            let r = packet::ipmi_response(&answer).map_err(|e| malformed(&doing, e.0))?;
            // A late answer to an earlier (resent) request: ask again with a new sequence.
            if r.rq_seq == self.rq_seq && r.cmd == cmd && r.netfn == netfn + 1 {
                return Ok(r);
            }
            tracing::debug!(doing, "answer to another request; retrying");
        }
        Err(malformed(&doing, "answers kept matching other requests"))
    }

    /// Sends a command and fails on a non-zero completion code.
    pub async fn ok(&mut self, what: &str, netfn: u8, cmd: u8, data: &[u8]) -> BmcResult<Vec<u8>> {
        let r = self.command(netfn, cmd, data).await?;
        if r.completion != 0 {
            return Err(BmcError::Status {
                doing: format!("{}: {what}", self.doing_prefix),
                status: format!("completion code {:#04x}", r.completion),
                message: Some(packet::completion_text(r.completion).into()),
            });
        }
        Ok(r.data)
    }

    /// Closes the session. Best effort.
    pub async fn close(mut self) {
        let sid = self.bmc_sid.to_le_bytes();
        let _ = tokio::time::timeout(self.timing.retry_after, self.command(0x06, 0x3c, &sid)).await;
    }
}
