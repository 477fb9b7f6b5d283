//! The supervisor's control socket (`DIR/control.sock`): one JSON request line, one JSON
//! reply line, then the connection closes. Hand-written because it is three messages between
//! two halves of the same binary; a unix socket keeps it local to the machine and, through
//! file permissions, to root.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lab::server::NextBoot;

/// A request to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// `ipmi_sim`'s chassis_control `set` for one server.
    Chassis {
        /// Server name.
        server: String,
        /// The (parameter, value) pairs, e.g. `("power", "1")`, `("boot", "pxe")`.
        set: Vec<(String, String)>,
    },
    /// Every server's state.
    Status,
    /// Stop (`run: false`) or start the lab's hub.
    Hub {
        /// Whether it should run.
        run: bool,
    },
    /// Tear the lab down and exit.
    Down,
}

/// One server as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    /// Name.
    pub name: String,
    /// Whether QEMU runs.
    pub power_on: bool,
    /// QEMU's PID when on.
    pub pid: Option<u32>,
    /// Boot device for the next power-on.
    pub next_boot: NextBoot,
    /// Power-ons so far.
    pub power_ons: u32,
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Reply {
    /// Done.
    Ok,
    /// Server states (for `Status`, and after `Chassis` so the caller can answer `get`).
    Servers {
        /// Per server.
        servers: Vec<ServerState>,
    },
    /// Refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Talking to the supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No supervisor listens (the lab is down or crashed).
    #[error("cannot reach the lab supervisor at {path}")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange broke off or made no sense.
    #[error("talking to the lab supervisor: {0}")]
    Protocol(String),
}

/// Sends one request and waits up to `limit` for the reply.
pub fn call(socket: &Path, request: &Request, limit: Duration) -> Result<Reply, ControlError> {
    let stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    let proto = |e: std::io::Error| ControlError::Protocol(e.to_string());
    stream.set_read_timeout(Some(limit)).map_err(proto)?;
    let mut writer = stream.try_clone().map_err(proto)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    writer.write_all(line.as_bytes()).map_err(proto)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(proto)?;
    serde_json::from_str(&answer)
        .map_err(|e| ControlError::Protocol(format!("bad reply {answer:?}: {e}")))
}

/// Parses chassis_control's arguments after the server name: `get P...` or `set P V ...`.
pub fn parse_chassis_args(args: &[String]) -> Result<ChassisOp, String> {
    match args.split_first() {
        Some((op, rest)) if op == "get" => Ok(ChassisOp::Get(rest.to_vec())),
        Some((op, rest)) if op == "set" => {
            if rest.len() % 2 != 0 {
                return Err(format!("set needs parameter/value pairs, got {rest:?}"));
            }
            Ok(ChassisOp::Set(
                rest.chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect(),
            ))
        }
        _ => Err(format!(
            "expected `get PARAM...` or `set PARAM VALUE...`, got {args:?}"
        )),
    }
}

/// A parsed chassis_control invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChassisOp {
    /// Read these parameters.
    Get(Vec<String>),
    /// Set these.
    Set(Vec<(String, String)>),
}

/// chassis_control's `get` output for one server: `param:value` per line.
pub fn format_get(state: &ServerState, params: &[String]) -> Result<String, String> {
    let mut out = String::new();
    for p in params {
        let value = match p.as_str() {
            "power" => u8::from(state.power_on).to_string(),
            "boot" => state.next_boot.as_str().to_string(),
            other => return Err(format!("cannot get {other:?}")),
        };
        out.push_str(&format!("{p}:{value}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn chassis_arguments_parse_and_format_like_ipmi_sim_expects() {
        assert_eq!(
            parse_chassis_args(&s(&["set", "power", "1", "boot", "pxe"])).unwrap(),
            ChassisOp::Set(vec![
                ("power".into(), "1".into()),
                ("boot".into(), "pxe".into())
            ])
        );
        assert!(parse_chassis_args(&s(&["set", "power"])).is_err());
        assert!(parse_chassis_args(&s(&["frob"])).is_err());
        let state = ServerState {
            name: "srv1".into(),
            power_on: true,
            pid: Some(1),
            next_boot: NextBoot::Pxe,
            power_ons: 1,
        };
        assert_eq!(
            format_get(&state, &s(&["power", "boot"])).unwrap(),
            "power:1\nboot:pxe\n"
        );
        assert!(format_get(&state, &s(&["reset"])).is_err());
    }

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r = Request::Chassis {
            server: "srv1".into(),
            set: vec![("power".into(), "0".into())],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
    }
}
