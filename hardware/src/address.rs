//! BMC addresses (`redfish://`, `redfish+http://`, `ipmi://`) and credentials files.
//!
//! Passwords never come from the command line or the URL: a URL with a password is refused,
//! so it cannot end up in shell history or a process list.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which protocol and transport a BMC speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// Redfish over HTTPS.
    Redfish,
    /// Redfish over plain HTTP (emulators only).
    RedfishHttp,
    /// IPMI 2.0 RMCP+ ("lanplus") over UDP.
    Ipmi,
}

/// A parsed BMC address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BmcAddress {
    /// Protocol.
    pub scheme: Scheme,
    /// User name from the URL, if any.
    pub user: Option<String>,
    /// Host name or IP address.
    pub host: String,
    /// Port (443, 80 or 623 unless given).
    pub port: u16,
    /// Redfish: a system path such as `/redfish/v1/Systems/1` when the BMC has several.
    pub system: Option<String>,
}

/// A BMC address that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid BMC address {address:?}: {reason}")]
pub struct AddressError {
    address: String,
    reason: String,
}

impl BmcAddress {
    /// Parses `redfish://[user@]host[:port][/redfish/v1/Systems/ID]`, `redfish+http://...`
    /// or `ipmi://[user@]host[:port]`.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let fail = |reason: &str| AddressError {
            address: text.to_owned(),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(text).map_err(|e| fail(&e.to_string()))?;
        let (scheme, default_port) = match url.scheme() {
            "redfish" | "redfish+https" => (Scheme::Redfish, 443),
            "redfish+http" => (Scheme::RedfishHttp, 80),
            "ipmi" => (Scheme::Ipmi, 623),
            other => {
                return Err(fail(&format!(
                    "unknown scheme {other:?}; use redfish://, redfish+http:// or ipmi://"
                )));
            }
        };
        if url.password().is_some() {
            let mut shown = url.clone();
            let _ = shown.set_password(Some("REDACTED"));
            return Err(AddressError {
                address: shown.to_string(),
                reason: "passwords are not accepted in URLs; put them in a credentials file"
                    .to_owned(),
            });
        }
        let host = url
            .host_str()
            .ok_or_else(|| fail("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let user = (!url.username().is_empty()).then(|| url.username().to_owned());
        let path = url.path().trim_end_matches('/');
        let system = match (scheme, path) {
            (_, "") => None,
            (Scheme::Ipmi, _) => return Err(fail("ipmi:// addresses take no path")),
            (_, p) if p.starts_with("/redfish/v1/") => Some(p.to_owned()),
            _ => {
                return Err(fail(
                    "path must be a Redfish system, /redfish/v1/Systems/ID",
                ));
            }
        };
        Ok(BmcAddress {
            scheme,
            user,
            host,
            port: url.port().unwrap_or(default_port),
            system,
        })
    }

    /// `host:port`, with brackets for IPv6.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BmcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Redfish => "redfish",
            Scheme::RedfishHttp => "redfish+http",
            Scheme::Ipmi => "ipmi",
        };
        write!(f, "{scheme}://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        write!(f, "{}", self.authority())?;
        if let Some(system) = &self.system {
            write!(f, "{system}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for BmcAddress {
    type Error = AddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        BmcAddress::parse(&value)
    }
}

impl From<BmcAddress> for String {
    fn from(value: BmcAddress) -> Self {
        value.to_string()
    }
}

/// A user name and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A credentials file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("reading credentials file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a credentials file.
    #[error("credentials file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    username: Option<String>,
    password: String,
}

impl Credentials {
    /// Credentials from values already in memory.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The password, for the protocol code that must send it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Reads a credentials file: either YAML with `username:` (optional) and `password:`, or
    /// a file holding only the password on its first line. The user name comes from the file,
    /// else from the address, else an error.
    pub fn from_file(path: &Path, url_user: Option<&str>) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: &str| CredentialsError::Invalid {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let looks_yaml = text
            .lines()
            .any(|l| l.trim_start().starts_with("password:"));
        let (user, password) = if looks_yaml {
            // The YAML error is not shown: its excerpt could contain the password.
            let file: CredentialsFile = serde_yaml_ng::from_str(&text).map_err(|e| {
                invalid(&format!(
                    "not a valid username/password YAML mapping{}",
                    e.location()
                        .map(|l| format!(" (line {})", l.line()))
                        .unwrap_or_default()
                ))
            })?;
            (file.username, file.password)
        } else {
            let first = text.lines().next().unwrap_or("").to_owned();
            (None, first)
        };
        if password.is_empty() {
            return Err(invalid("password is empty"));
        }
        let username = user
            .or_else(|| url_user.map(str::to_owned))
            .ok_or_else(|| invalid("no username: add `username:` or put user@ in the BMC URL"))?;
        Ok(Credentials { username, password })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme_with_defaults() {
        let a = BmcAddress::parse("redfish://admin@10.0.0.5").unwrap();
        assert_eq!(
            (a.scheme, a.port, a.user.as_deref()),
            (Scheme::Redfish, 443, Some("admin"))
        );
        let a = BmcAddress::parse("redfish+http://127.0.0.1:8000/redfish/v1/Systems/abc/").unwrap();
        assert_eq!(a.system.as_deref(), Some("/redfish/v1/Systems/abc"));
        assert_eq!(
            a.to_string(),
            "redfish+http://127.0.0.1:8000/redfish/v1/Systems/abc"
        );
        let a = BmcAddress::parse("ipmi://[::1]:9623").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 9623));
        assert_eq!(a.authority(), "[::1]:9623");
    }

    #[test]
    fn refuses_passwords_and_unknown_schemes() {
        let e = BmcAddress::parse("redfish://root:calvin@h").unwrap_err();
        assert!(e.to_string().contains("passwords are not accepted"), "{e}");
        assert!(!e.to_string().contains("calvin"), "{e}");
        assert!(
            BmcAddress::parse("http://h")
                .unwrap_err()
                .to_string()
                .contains("unknown scheme")
        );
        assert!(BmcAddress::parse("ipmi://h/x").is_err());
        assert!(BmcAddress::parse("redfish://h/other").is_err());
    }

    #[test]
    fn credentials_files_both_forms_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("c.yaml");
        std::fs::write(&yaml, "username: root\npassword: s3cret\n").unwrap();
        let c = Credentials::from_file(&yaml, Some("other")).unwrap();
        assert_eq!((c.username.as_str(), c.password()), ("root", "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));

        let raw = dir.path().join("pw");
        std::fs::write(&raw, "hunter2\n").unwrap();
        let c = Credentials::from_file(&raw, Some("admin")).unwrap();
        assert_eq!((c.username.as_str(), c.password()), ("admin", "hunter2"));
        let e = Credentials::from_file(&raw, None).unwrap_err();
        assert!(e.to_string().contains("no username"), "{e}");

        let bad = dir.path().join("bad");
        std::fs::write(&bad, "password: [unclosed\n").unwrap();
        let e = Credentials::from_file(&bad, Some("a"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && !e.contains("unclosed"), "{e}");
    }
}
