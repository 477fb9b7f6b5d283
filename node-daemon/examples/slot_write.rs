//! The node's slot writer alone, for `scripts/bench upgrade` (compared with `dd` of the same
//! uncompressed root image): checks the bundle's signature, streams its root image into
//! TARGET (decompressing and hashing on the way) and syncs, as an upgrade does.
//!
//! `cargo run --release -p cairn-node-daemon --example slot_write -- BUNDLE KEY.pub TARGET`

use std::path::Path;

use cairn_formats::keys::{PublicKey, TrustStore};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, key, target] = args.as_slice() else {
        anyhow::bail!("usage: slot_write BUNDLE KEY.pub TARGET");
    };
    let trust = TrustStore::new(vec![PublicKey::read(Path::new(key))?]);
    let target = Path::new(target);
    if !target.exists() {
        std::fs::File::create(target)?;
    }
    let size =
        cairn_node_daemon::upgrade::write_slot(Path::new(bundle), &trust, target, 0, u64::MAX)
            .map_err(anyhow::Error::msg)?;
    eprintln!("wrote {size} bytes");
    Ok(())
}
