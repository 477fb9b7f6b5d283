//! A bundle's compressed payload (zstd frames), decoded and checked against the manifest.
#![no_main]

use cairn_formats::stream::{Digest, write_verified};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 3 bytes are the image size the manifest claims (under 16 MiB).
    let Some((size, payload)) = data.split_first_chunk::<3>() else {
        return;
    };
    let expect = Digest {
        size: u64::from(u32::from_le_bytes([size[0], size[1], size[2], 0])),
        sha256: "0".repeat(64),
    };
    let mut dest = Vec::new();
    let _ = write_verified(payload, &mut dest, None, &expect, 16 << 20, |_| {});
    assert!(dest.len() as u64 <= 16 << 20, "wrote past the limit");
});
