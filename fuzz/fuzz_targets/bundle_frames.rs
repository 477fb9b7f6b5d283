//! A bundle's compressed payload (zstd frames), decoded and checked against the manifest:
//! by one digest of the whole image (format 1), or frame by frame against a list of frame
//! digests (format 2, `root_frames`), parsed from the input as a manifest would be.
#![no_main]

use cairn_formats::stream::{Digest, FrameDigests, ImageCheck, write_verified};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 3 bytes are the image size the manifest claims (under 16 MiB), the fourth
    // picks the check: odd, a frame list follows as JSON up to a NUL byte.
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let expect = Digest {
        size: u64::from(u32::from_le_bytes([head[0], head[1], head[2], 0])),
        sha256: "0".repeat(64),
    };
    let mut dest = Vec::new();
    if head[3] & 1 == 0 {
        let _ = write_verified(rest, &mut dest, None, ImageCheck::Whole(&expect), 16 << 20, |_| {});
        assert!(dest.len() as u64 <= 16 << 20, "wrote past the limit");
        return;
    }
    let (json, payload) = rest.split_at(rest.iter().position(|&b| b == 0).unwrap_or(rest.len()));
    let payload = payload.get(1..).unwrap_or_default();
    let Ok(frames) = serde_json::from_slice::<FrameDigests>(json) else {
        return;
    };
    let listed = frames.check(&expect).ok();
    let check = ImageCheck::Frames {
        image: &expect,
        frames: &frames,
    };
    let result = write_verified(payload, &mut dest, None, check, 16 << 20, |_| {});
    // Only whole frames that match the list reach the destination, and only from a list
    // that adds up.
    let Some(listed) = listed else {
        assert!(dest.is_empty(), "wrote under a list that does not add up");
        assert!(result.is_err());
        return;
    };
    let frame = frames.frame_size as usize;
    assert!(dest.len() as u64 <= expect.size, "wrote past the image");
    for (index, chunk) in dest.chunks(frame).enumerate() {
        let digest = ring::digest::digest(&ring::digest::SHA256, chunk);
        assert_eq!(digest.as_ref(), &listed[index][..], "frame {index} written unverified");
    }
    if result.is_ok() {
        assert_eq!(dest.len() as u64, expect.size);
    }
});
