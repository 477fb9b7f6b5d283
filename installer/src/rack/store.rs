//! The provisioning state file beside the inventory (`rack.yaml` -> `rack.state.json`), so a
//! re-run resumes where the last one stopped. Written whole after every change, through a
//! temporary file and a rename, so a crash leaves either the old or the new file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rack::machine::Record;

/// Reading or writing the state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O.
    #[error("{what} {path}")]
    Io {
        /// Reading or writing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file.
    #[error("state file {path} is invalid: {message} (delete it to start over)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
}

/// Records by server name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// Per server.
    pub servers: BTreeMap<String, Record>,
}

/// Where the state of inventory `inventory` lives.
pub fn path_for(inventory: &Path) -> PathBuf {
    let stem = inventory
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rack".into());
    inventory.with_file_name(format!("{stem}.state.json"))
}

impl StateFile {
    /// Loads `path`, or an empty state when it does not exist.
    pub fn load(path: &Path) -> Result<StateFile, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| StoreError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(source) => Err(StoreError::Io {
                what: "reading",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes atomically.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            what: "writing",
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        cairn_formats::fsio::atomic_write(path, text.as_bytes()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rack::machine::{Phase, State};

    #[test]
    fn saves_and_loads_and_names_the_file_beside_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let inv = dir.path().join("rack.yaml");
        let path = path_for(&inv);
        assert_eq!(path, dir.path().join("rack.state.json"));
        assert_eq!(StateFile::load(&path).unwrap(), StateFile::default());
        let mut s = StateFile::default();
        s.servers.insert(
            "srv1".into(),
            Record {
                state: State::Failed {
                    phase: Phase::Installing,
                    reason: "x".into(),
                },
                ..Record::default()
            },
        );
        s.save(&path).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), s);
        std::fs::write(&path, "{\"servers\": 3}").unwrap();
        let e = StateFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("rack.state.json") && e.contains("line 1"), "{e}");
    }
}
