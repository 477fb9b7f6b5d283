//! Streaming a compressed root image into its destination in one pass: zstd decompression and
//! SHA-256 over both the compressed and the uncompressed bytes, with no temporary file.
//! Used by the install agent (HTTP -> `root-a`) and by update bundles (bundle -> inactive
//! slot). The caller must treat the destination as garbage unless this returns `Ok`.

use std::io::{Read, Write};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// Size and SHA-256 of a byte string (an image or a payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    /// Length in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

impl Digest {
    /// Hashes a whole reader.
    pub fn of_reader(mut reader: impl Read) -> std::io::Result<Self> {
        let mut hashing = HashingReader::new(&mut reader);
        std::io::copy(&mut hashing, &mut std::io::sink())?;
        Ok(hashing.finish())
    }

    /// Hashes a file.
    pub fn of_file(path: &std::path::Path) -> std::io::Result<Self> {
        Self::of_reader(std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(path)?,
        ))
    }
}

/// Why a streamed image was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading, decompressing or writing failed.
    #[error("streaming the image")]
    Io(#[source] std::io::Error),
    /// The bytes do not match the expected digest.
    #[error(
        "{what} mismatch: expected {expected_size} bytes with SHA-256 {expected}, got {actual_size} bytes with SHA-256 {actual}"
    )]
    Mismatch {
        /// Which digest: "compressed image" or "image".
        what: &'static str,
        /// Expected hex SHA-256.
        expected: String,
        /// Computed hex SHA-256.
        actual: String,
        /// Expected size.
        expected_size: u64,
        /// Computed size.
        actual_size: u64,
    },
    /// The image is larger than its destination.
    #[error("the image is larger than its destination ({limit} bytes)")]
    TooLarge {
        /// The destination's size.
        limit: u64,
    },
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    ctx: Context,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            ctx: Context::new(&SHA256),
            count: 0,
        }
    }

    /// The digest of everything read so far.
    pub fn finish(self) -> Digest {
        Digest {
            size: self.count,
            sha256: hex::encode(self.ctx.finish().as_ref()),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Bytes per write: large, so a disk sees long sequential requests, and few enough
/// round trips between the two threads that handing buffers over costs nothing measurable.
const CHUNK: usize = 4 << 20;
/// Buffers in flight: one being filled, one being hashed, one spare.
const BUFFERS: usize = 3;

/// Decompresses `compressed` into `dest`, checking the compressed bytes against
/// `expect_compressed` (when given) and the image against `expect_image`. Writes at most
/// `limit` bytes. `progress` sees the running count of image bytes written.
///
/// Two threads share the work so the write keeps pace with a plain copy (`dd`): this thread
/// reads, hashes the compressed bytes, decompresses and writes; a helper hashes the image
/// bytes of the chunk just written while the next one is decompressed. Buffers are handed
/// over, never copied. The caller's reader and writer stay on this thread, so they need not
/// be `Send`.
pub fn write_verified(
    compressed: impl Read,
    dest: &mut impl Write,
    expect_compressed: Option<&Digest>,
    expect_image: &Digest,
    limit: u64,
    mut progress: impl FnMut(u64),
) -> Result<Digest, StreamError> {
    use std::sync::Arc;
    use std::sync::mpsc::sync_channel;

    if expect_image.size > limit {
        return Err(StreamError::TooLarge { limit });
    }
    let mut outer = HashingReader::new(compressed);
    let (to_hash, hash_rx) = sync_channel::<Arc<Vec<u8>>>(BUFFERS);
    let (hashed_tx, hashed) = sync_channel::<Arc<Vec<u8>>>(BUFFERS);
    let (written, image) = std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut ctx = Context::new(&SHA256);
            let mut count = 0u64;
            for buf in hash_rx {
                ctx.update(&buf);
                count += buf.len() as u64;
                // The writer may have stopped early; then nobody wants the buffer back.
                let _ = hashed_tx.send(buf);
            }
            Digest {
                size: count,
                sha256: hex::encode(ctx.finish().as_ref()),
            }
        });
        let copied = (|| -> Result<u64, StreamError> {
            let mut decoder =
                zstd::stream::read::Decoder::new(&mut outer).map_err(StreamError::Io)?;
            let mut pool: Vec<Vec<u8>> = Vec::new();
            let mut allocated = 0;
            let mut written = 0u64;
            loop {
                let mut buf = match pool.pop() {
                    Some(buf) => buf,
                    None if allocated < BUFFERS => {
                        allocated += 1;
                        Vec::with_capacity(CHUNK)
                    }
                    None => {
                        let back = hashed.recv().expect("the hasher runs until we hang up");
                        Arc::try_unwrap(back).expect("the writer released the buffer")
                    }
                };
                buf.resize(CHUNK, 0);
                let mut filled = 0;
                while filled < CHUNK {
                    let n = decoder.read(&mut buf[filled..]).map_err(StreamError::Io)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(written);
                }
                buf.truncate(filled);
                if written + filled as u64 > limit {
                    return Err(StreamError::TooLarge { limit });
                }
                let buf = Arc::new(buf);
                to_hash
                    .send(Arc::clone(&buf))
                    .expect("the hasher runs until we hang up");
                dest.write_all(&buf).map_err(StreamError::Io)?;
                written += filled as u64;
                progress(written);
                drop(buf);
                // Take back what the hasher finished without waiting for it.
                while let Ok(back) = hashed.try_recv() {
                    pool.push(Arc::try_unwrap(back).expect("the writer released the buffer"));
                }
            }
        })();
        drop(to_hash);
        let image = hasher.join().expect("the hasher does not panic");
        copied.map(|written| (written, image))
    })?;
    dest.flush().map_err(StreamError::Io)?;
    debug_assert_eq!(written, image.size);
    // Drain what the decoder did not need (trailing bytes count against the payload digest).
    std::io::copy(&mut outer, &mut std::io::sink()).map_err(StreamError::Io)?;
    let payload = outer.finish();
    if let Some(expected) = expect_compressed {
        check("compressed image", expected, &payload)?;
    }
    check("image", expect_image, &image)?;
    Ok(image)
}

fn check(what: &'static str, expected: &Digest, actual: &Digest) -> Result<(), StreamError> {
    if expected == actual {
        Ok(())
    } else {
        Err(StreamError::Mismatch {
            what,
            expected: expected.sha256.clone(),
            actual: actual.sha256.clone(),
            expected_size: expected.size,
            actual_size: actual.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Vec<u8>) {
        // More chunks than buffers, and a partial last chunk: buffers are reused.
        let image: Vec<u8> = (0..(4 * CHUNK as u32 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let compressed = zstd::stream::encode_all(&image[..], 3).unwrap();
        (image, compressed)
    }

    #[test]
    fn an_intact_image_streams_and_verifies() {
        let (image, compressed) = sample();
        let want = Digest::of_reader(&image[..]).unwrap();
        let want_c = Digest::of_reader(&compressed[..]).unwrap();
        let mut out = Vec::new();
        let mut last = 0;
        let got = write_verified(
            &compressed[..],
            &mut out,
            Some(&want_c),
            &want,
            u64::MAX,
            |n| last = n,
        )
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(out, image);
        assert_eq!(last, image.len() as u64);
    }

    #[test]
    fn a_wrong_digest_or_a_small_destination_is_refused() {
        let (image, compressed) = sample();
        let mut want = Digest::of_reader(&image[..]).unwrap();
        want.sha256.replace_range(
            0..1,
            if want.sha256.starts_with('0') {
                "1"
            } else {
                "0"
            },
        );
        let err = write_verified(
            &compressed[..],
            &mut Vec::new(),
            None,
            &want,
            u64::MAX,
            |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, StreamError::Mismatch { what: "image", .. }),
            "{err}"
        );
        let want = Digest::of_reader(&image[..]).unwrap();
        let err = write_verified(&compressed[..], &mut Vec::new(), None, &want, 1000, |_| {})
            .unwrap_err();
        assert!(matches!(err, StreamError::TooLarge { .. }));
    }
}
