//! BMC addresses (`redfish://`, `redfish+http://`, `ipmi://`, and Metal3's Redfish schemes
//! such as `redfish-virtualmedia://` or `idrac-virtualmedia://`) and credentials files.
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

/// Whose Redfish an address names: Metal3's `idrac-*` and `ilo5-*` schemes say it, the plain
/// ones do not. Kept so an address prints as it was written; the quirks a BMC needs come
/// from what it reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `redfish`, `redfish-virtualmedia`.
    Generic,
    /// `idrac-redfish`, `idrac-virtualmedia` (Dell).
    Idrac,
    /// `ilo5-redfish`, `ilo5-virtualmedia` (HPE).
    Ilo5,
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
    /// Whose Redfish (Metal3's vendor schemes).
    pub dialect: Dialect,
    /// The scheme asks for the installer to boot from virtual media (Metal3's
    /// `*-virtualmedia` schemes), as a rack.yaml `boot: virtual-media` does.
    pub virtual_media: bool,
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
    /// or `ipmi://[user@]host[:port]`, and Metal3's Redfish schemes: `redfish-virtualmedia`,
    /// `idrac-redfish`, `idrac-virtualmedia`, `ilo5-redfish`, `ilo5-virtualmedia`, each also
    /// with `+https` or `+http`.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let fail = |reason: &str| AddressError {
            address: text.to_owned(),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(text).map_err(|e| fail(&e.to_string()))?;
        let (base, transport) = match url.scheme().rsplit_once('+') {
            Some((base, transport)) => (base, Some(transport)),
            None => (url.scheme(), None),
        };
        let unknown = || {
            fail(&format!(
                "unknown scheme {:?}; use redfish://, redfish+http://, ipmi://, or Metal3's \
                 redfish-virtualmedia://, idrac-redfish://, idrac-virtualmedia://, \
                 ilo5-redfish://, ilo5-virtualmedia://",
                url.scheme()
            ))
        };
        let (dialect, virtual_media) = match base {
            "redfish" | "ipmi" => (Dialect::Generic, false),
            "redfish-virtualmedia" => (Dialect::Generic, true),
            "idrac-redfish" => (Dialect::Idrac, false),
            "idrac-virtualmedia" => (Dialect::Idrac, true),
            "ilo5-redfish" => (Dialect::Ilo5, false),
            "ilo5-virtualmedia" => (Dialect::Ilo5, true),
            _ => return Err(unknown()),
        };
        let (scheme, default_port) = match (base, transport) {
            ("ipmi", None) => (Scheme::Ipmi, 623),
            ("ipmi", Some(_)) => return Err(unknown()),
            (_, None | Some("https")) => (Scheme::Redfish, 443),
            (_, Some("http")) => (Scheme::RedfishHttp, 80),
            (_, Some(_)) => return Err(unknown()),
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
            dialect,
            virtual_media,
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
        let base = match (self.scheme, self.dialect, self.virtual_media) {
            (Scheme::Ipmi, ..) => "ipmi",
            (_, Dialect::Generic, false) => "redfish",
            (_, Dialect::Generic, true) => "redfish-virtualmedia",
            (_, Dialect::Idrac, false) => "idrac-redfish",
            (_, Dialect::Idrac, true) => "idrac-virtualmedia",
            (_, Dialect::Ilo5, false) => "ilo5-redfish",
            (_, Dialect::Ilo5, true) => "ilo5-virtualmedia",
        };
        let transport = if self.scheme == Scheme::RedfishHttp {
            "+http"
        } else {
            ""
        };
        write!(f, "{base}{transport}://")?;
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
    fn metal3_schemes_name_redfish_its_dialect_and_virtual_media() {
        // (address, scheme, dialect, virtual media, port, printed back)
        let table = [
            (
                "redfish-virtualmedia://10.0.0.5/redfish/v1/Systems/1",
                Scheme::Redfish,
                Dialect::Generic,
                true,
                443,
                "redfish-virtualmedia://10.0.0.5:443/redfish/v1/Systems/1",
            ),
            (
                "redfish-virtualmedia+http://127.0.0.1:8000",
                Scheme::RedfishHttp,
                Dialect::Generic,
                true,
                8000,
                "redfish-virtualmedia+http://127.0.0.1:8000",
            ),
            (
                "idrac-virtualmedia://root@idrac.example/redfish/v1/Systems/System.Embedded.1",
                Scheme::Redfish,
                Dialect::Idrac,
                true,
                443,
                "idrac-virtualmedia://root@idrac.example:443/redfish/v1/Systems/System.Embedded.1",
            ),
            (
                "idrac-redfish+https://10.0.0.6",
                Scheme::Redfish,
                Dialect::Idrac,
                false,
                443,
                "idrac-redfish://10.0.0.6:443",
            ),
            (
                "ilo5-virtualmedia://10.0.0.7",
                Scheme::Redfish,
                Dialect::Ilo5,
                true,
                443,
                "ilo5-virtualmedia://10.0.0.7:443",
            ),
            (
                "ilo5-redfish://10.0.0.8",
                Scheme::Redfish,
                Dialect::Ilo5,
                false,
                443,
                "ilo5-redfish://10.0.0.8:443",
            ),
        ];
        for (text, scheme, dialect, media, port, shown) in table {
            let a = BmcAddress::parse(text).unwrap();
            assert_eq!(
                (a.scheme, a.dialect, a.virtual_media, a.port),
                (scheme, dialect, media, port),
                "{text}"
            );
            assert_eq!(a.to_string(), shown, "{text}");
            assert_eq!(BmcAddress::parse(shown).unwrap(), a, "{shown} reads back");
        }
        for bad in [
            "ipmi+http://h",
            "idrac://h",
            "ilo4-virtualmedia://h",
            "redfish-virtualmedia+ftp://h",
        ] {
            let e = BmcAddress::parse(bad).unwrap_err().to_string();
            assert!(e.contains("unknown scheme"), "{bad}: {e}");
        }
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
