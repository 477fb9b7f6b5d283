//! Streaming a compressed root image into its destination in one pass: zstd decompression and
//! SHA-256 over both the compressed and the uncompressed bytes, with no temporary file.
//! Used by the install agent (HTTP -> `root-a`) and by update bundles (bundle -> inactive
//! slot). The caller must treat the destination as garbage unless this returns `Ok`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

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
        let mut hashing = HashingReader::new(&mut reader, true);
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

/// A reader that hashes (when asked to) and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    ctx: Option<Context>,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps a reader; `hash: false` only counts.
    fn new(inner: R, hash: bool) -> Self {
        Self {
            inner,
            ctx: hash.then(|| Context::new(&SHA256)),
            count: 0,
        }
    }

    /// The digest of everything read so far (an empty hash when not hashing).
    fn finish(self) -> Digest {
        Digest {
            size: self.count,
            sha256: self
                .ctx
                .map(|ctx| hex::encode(ctx.finish().as_ref()))
                .unwrap_or_default(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(ctx) = &mut self.ctx {
            ctx.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// Image bytes per zstd frame in the payloads cairn builds ([`compress_frames`]). Frames are
/// independent, so [`write_verified`] decodes them on every core; 4 MiB keeps a frame per
/// core in flight cheap and costs almost no ratio (zstd -3 looks back 2 MiB at most).
pub const FRAME_SIZE: usize = 4 << 20;
/// The largest frame decoded in parallel; a payload whose first frame is larger (or of
/// unknown size, as `zstd` writes from a pipe) is decoded as one stream on one core.
const MAX_PARALLEL_FRAME: u64 = 4 * FRAME_SIZE as u64;
/// Bytes read from the payload at a time while looking for a frame's end.
const READ_SIZE: usize = 1 << 20;
/// Buffers the hasher holds: one being hashed, the rest queued.
const HASHER_BUFFERS: usize = 3;

/// Compresses `input` the way cairn ships images: zstd level 3 with checksums, as a sequence
/// of independent frames of [`FRAME_SIZE`] image bytes, each stating its size. Any zstd
/// decoder reads the result (concatenated frames); the same input gives the same bytes.
/// Frames are compressed on every core, a batch of one per core at a time, and written in
/// order: each frame is compressed on its own, so the output does not depend on the number
/// of cores. Returns the compressed size.
pub fn compress_frames(mut input: impl Read, mut output: impl Write) -> std::io::Result<u64> {
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut images: Vec<Vec<u8>> = (0..workers).map(|_| vec![0u8; FRAME_SIZE]).collect();
    let bound = zstd::zstd_safe::compress_bound(FRAME_SIZE);
    let mut frames: Vec<Vec<u8>> = (0..workers).map(|_| Vec::with_capacity(bound)).collect();
    let mut total = 0u64;
    loop {
        // Up to one frame per worker; the input ends at the first frame that is not full.
        let mut lens = Vec::with_capacity(workers);
        let mut ended = false;
        for image in &mut images {
            let n = read_full(&mut input, image)?;
            // An empty image is still one (empty) frame: a valid zstd stream.
            if n == 0 && (total > 0 || !lens.is_empty()) {
                ended = true;
                break;
            }
            lens.push(n);
            if n < FRAME_SIZE {
                ended = true;
                break;
            }
        }
        std::thread::scope(|scope| {
            let jobs: Vec<_> = images
                .iter()
                .zip(frames.iter_mut())
                .zip(&lens)
                .map(|((image, frame), &n)| scope.spawn(move || compress_frame(&image[..n], frame)))
                .collect();
            jobs.into_iter()
                .try_for_each(|job| job.join().expect("a frame compressor panicked"))
        })?;
        for frame in &frames[..lens.len()] {
            output.write_all(frame)?;
            total += frame.len() as u64;
        }
        if ended {
            return Ok(total);
        }
    }
}

/// One frame of [`compress_frames`]: level 3, with its checksum and content size.
fn compress_frame(image: &[u8], frame: &mut Vec<u8>) -> std::io::Result<()> {
    let mut compressor = zstd::bulk::Compressor::new(3)?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    compressor.compress_to_buffer(image, frame)?;
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decompresses `compressed` into `dest`, checking the compressed bytes against
/// `expect_compressed` (when given) and the image against `expect_image`. The image digest
/// alone proves what was written: `None` saves hashing the payload a second time where
/// only the written image matters (installs). Writes at most `limit` bytes. `progress` sees
/// the running count of image bytes written.
///
/// The work is spread so the write keeps pace with a plain copy (`dd`): this thread reads,
/// hashes the compressed bytes (when asked), cuts them into frames and writes the image in
/// order; one
/// decoder thread per core decodes frames ([`compress_frames`] payloads; a single-frame
/// payload is decoded here instead); a helper hashes the image bytes already written.
/// Buffers are handed over and reused, never copied; each `write` to `dest` gets one
/// frame's image starting at an [`IMAGE_ALIGN`] boundary in memory, so `dest` may write it
/// with direct I/O. The caller's reader and writer stay on this thread, so they need not be
/// `Send`.
pub fn write_verified(
    compressed: impl Read,
    dest: &mut impl Write,
    expect_compressed: Option<&Digest>,
    expect_image: &Digest,
    limit: u64,
    mut progress: impl FnMut(u64),
) -> Result<Digest, StreamError> {
    if expect_image.size > limit {
        return Err(StreamError::TooLarge { limit });
    }
    let mut frames = Frames::new(HashingReader::new(compressed, expect_compressed.is_some()));
    let parallel = frames.first_fits().map_err(StreamError::Io)?;
    let decoders = if parallel {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        0
    };
    // In flight at the decoders, queued at the hasher, and the one being written.
    let buffers = 2 * decoders + HASHER_BUFFERS + 1;
    let (to_hash, hash_rx) = sync_channel::<Arc<ImageBuf>>(HASHER_BUFFERS);
    // Room for every buffer: the hasher never waits to hand one back.
    let (hashed_tx, hashed) = sync_channel::<Arc<ImageBuf>>(buffers);
    let (jobs_tx, jobs_rx) = sync_channel::<Job>(2 * decoders);
    let jobs_rx = Mutex::new(jobs_rx);
    let (written, image, outer) = std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut ctx = Context::new(&SHA256);
            let mut count = 0u64;
            for buf in hash_rx {
                ctx.update(buf.bytes());
                count += buf.bytes().len() as u64;
                // The writer may have stopped early; then nobody wants the buffer back.
                let _ = hashed_tx.send(buf);
            }
            Digest {
                size: count,
                sha256: hex::encode(ctx.finish().as_ref()),
            }
        });
        for _ in 0..decoders {
            scope.spawn(|| decode_frames(&jobs_rx));
        }
        let mut pool = Pool {
            free: Vec::new(),
            allocated: 0,
            limit: buffers,
            hashed,
        };
        let mut sink = |buf: ImageBuf, written: &mut u64, pool: &mut Pool| {
            let len = buf.bytes().len() as u64;
            if len == 0 {
                pool.free.push(buf);
                return Ok(());
            }
            if *written + len > limit {
                return Err(StreamError::TooLarge { limit });
            }
            let buf = Arc::new(buf);
            to_hash
                .send(Arc::clone(&buf))
                .expect("the hasher runs until we hang up");
            dest.write_all(buf.bytes()).map_err(StreamError::Io)?;
            *written += len;
            progress(*written);
            drop(buf);
            pool.reclaim();
            Ok(())
        };
        let copied = if parallel {
            copy_parallel(&mut frames, &jobs_tx, 2 * decoders, &mut pool, &mut sink)
        } else {
            copy_sequential(&mut frames, &mut pool, &mut sink)
        };
        drop(jobs_tx);
        drop(to_hash);
        drop(pool);
        let image = hasher.join().expect("the hasher does not panic");
        copied.map(|written| (written, image, frames.into_inner()))
    })?;
    dest.flush().map_err(StreamError::Io)?;
    debug_assert_eq!(written, image.size);
    let mut outer = outer;
    // Drain what the decoder did not need (trailing bytes count against the payload digest).
    std::io::copy(&mut outer, &mut std::io::sink()).map_err(StreamError::Io)?;
    let payload = outer.finish();
    if let Some(expected) = expect_compressed {
        check("compressed image", expected, &payload)?;
    }
    check("image", expect_image, &image)?;
    Ok(image)
}

/// A frame to decode, the buffer to decode it into, and where the result goes.
type Job = (Vec<u8>, ImageBuf, SyncSender<std::io::Result<ImageBuf>>);

/// A decoder thread: decodes frames until the jobs channel closes.
fn decode_frames(jobs: &Mutex<Receiver<Job>>) {
    let mut decoder = zstd::bulk::Decompressor::new();
    loop {
        let job = jobs.lock().expect("no decoder panics").recv();
        let Ok((frame, mut out, reply)) = job else {
            return;
        };
        let decoded = match &mut decoder {
            Ok(decoder) => {
                // `Frames` checked the stated size; zstd checks the frame holds exactly that.
                let size = zstd::zstd_safe::get_frame_content_size(&frame)
                    .ok()
                    .flatten()
                    .unwrap_or(0) as usize;
                decoder
                    .decompress_to_buffer(&frame[..], out.room(size))
                    .map(|n| {
                        out.set_len(n);
                        out
                    })
            }
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        // The writer may have stopped early; then nobody waits for this frame.
        let _ = reply.send(decoded);
    }
}

/// Keeps up to `depth` frames at the decoders and writes their images in order.
fn copy_parallel<R: Read>(
    frames: &mut Frames<R>,
    jobs: &SyncSender<Job>,
    depth: usize,
    pool: &mut Pool,
    sink: &mut impl FnMut(ImageBuf, &mut u64, &mut Pool) -> Result<(), StreamError>,
) -> Result<u64, StreamError> {
    let mut in_flight = VecDeque::new();
    let mut written = 0u64;
    let mut more = true;
    loop {
        while more && in_flight.len() < depth {
            // Wait for a buffer only when no frame is in flight; otherwise write one first.
            let Some(out) = pool.take(in_flight.is_empty()) else {
                break;
            };
            match frames.next_frame().map_err(StreamError::Io)? {
                Some(frame) => {
                    let (reply, result) = sync_channel(1);
                    jobs.send((frame, out, reply))
                        .expect("decoders run until we hang up");
                    in_flight.push_back(result);
                }
                None => {
                    pool.free.push(out);
                    more = false;
                }
            }
        }
        let Some(result) = in_flight.pop_front() else {
            return Ok(written);
        };
        let image = result
            .recv()
            .expect("a decoder answers every job")
            .map_err(StreamError::Io)?;
        sink(image, &mut written, pool)?;
    }
}

/// Decodes a payload that is one large frame (or of unknown frame sizes) as a stream.
fn copy_sequential<R: Read>(
    frames: &mut Frames<R>,
    pool: &mut Pool,
    sink: &mut impl FnMut(ImageBuf, &mut u64, &mut Pool) -> Result<(), StreamError>,
) -> Result<u64, StreamError> {
    let mut decoder =
        zstd::stream::read::Decoder::new(frames.as_reader()).map_err(StreamError::Io)?;
    let mut written = 0u64;
    loop {
        let mut buf = pool.take(true).expect("waits for a buffer");
        let filled = read_full(&mut decoder, buf.room(FRAME_SIZE)).map_err(StreamError::Io)?;
        if filled == 0 {
            return Ok(written);
        }
        buf.set_len(filled);
        sink(buf, &mut written, pool)?;
    }
}

/// Image bytes handed from decoding to writing and hashing. They start at a page boundary,
/// so a writer can give them to the disk as they are (O_DIRECT) instead of copying them
/// into the page cache first.
struct ImageBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

/// Where the image bytes given to a writer start: a multiple of this. Direct I/O needs the
/// page size, a multiple of every logical block size.
pub const IMAGE_ALIGN: usize = 4096;

impl ImageBuf {
    fn with_room(room: usize) -> Self {
        let storage = vec![0u8; room + IMAGE_ALIGN];
        let start = storage.as_ptr().align_offset(IMAGE_ALIGN);
        Self {
            storage,
            start,
            len: 0,
        }
    }

    /// `n` writable bytes at the aligned start; makes room when there is too little (only
    /// frames larger than cairn's own need it).
    fn room(&mut self, n: usize) -> &mut [u8] {
        if self.storage.len() - self.start < n {
            *self = Self::with_room(n);
        }
        &mut self.storage[self.start..self.start + n]
    }

    fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// The image bytes.
    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

/// Image buffers: reused once the hasher is done with them, at most `limit` allocated.
struct Pool {
    free: Vec<ImageBuf>,
    allocated: usize,
    limit: usize,
    hashed: Receiver<Arc<ImageBuf>>,
}

impl Pool {
    /// A free buffer; when none is free and `limit` are allocated, waits for the hasher to
    /// return one if `wait`, else `None`.
    fn take(&mut self, wait: bool) -> Option<ImageBuf> {
        self.reclaim();
        if let Some(buf) = self.free.pop() {
            return Some(buf);
        }
        if self.allocated < self.limit {
            self.allocated += 1;
            return Some(ImageBuf::with_room(FRAME_SIZE));
        }
        wait.then(|| {
            let back = self
                .hashed
                .recv()
                .expect("the hasher runs until we hang up");
            Arc::try_unwrap(back).unwrap_or_else(|_| unreachable!("the writer released the buffer"))
        })
    }

    /// Takes back what the hasher finished, without waiting.
    fn reclaim(&mut self) {
        while let Ok(back) = self.hashed.try_recv() {
            self.free.push(
                Arc::try_unwrap(back)
                    .unwrap_or_else(|_| unreachable!("the writer released the buffer")),
            );
        }
    }
}

/// Cuts a zstd payload into its frames, reading ahead as little as a frame needs.
struct Frames<R> {
    reader: HashingReader<R>,
    buffered: Vec<u8>,
    ended: bool,
}

impl<R: Read> Frames<R> {
    fn new(reader: HashingReader<R>) -> Self {
        Self {
            reader,
            buffered: Vec::new(),
            ended: false,
        }
    }

    /// Reads more; `false` at the end of the payload.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        let len = self.buffered.len();
        (&mut self.reader)
            .take(READ_SIZE as u64)
            .read_to_end(&mut self.buffered)?;
        let n = self.buffered.len() - len;
        self.ended = n < READ_SIZE;
        Ok(n > 0)
    }

    /// Whether the first frame states a size small enough to decode frames in parallel.
    fn first_fits(&mut self) -> std::io::Result<bool> {
        self.fill()?;
        Ok(matches!(
            zstd::zstd_safe::get_frame_content_size(&self.buffered),
            Ok(Some(size)) if size <= MAX_PARALLEL_FRAME
        ))
    }

    /// The next whole frame, `None` at the end of the payload.
    fn next_frame(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if self.buffered.is_empty() && !self.fill()? {
                return Ok(None);
            }
            if let Ok(len) = zstd::zstd_safe::find_frame_compressed_size(&self.buffered) {
                // Frames decoded in parallel must state a size the decoder can allocate.
                match zstd::zstd_safe::get_frame_content_size(&self.buffered) {
                    Ok(Some(size)) if size <= MAX_PARALLEL_FRAME => {}
                    _ => return Err(invalid("a frame of unknown or too large size")),
                }
                let rest = self.buffered.split_off(len);
                return Ok(Some(std::mem::replace(&mut self.buffered, rest)));
            }
            // A frame larger than any frame of ours holds is not coming to an end.
            let too_long = self.buffered.len() as u64
                > zstd::zstd_safe::compress_bound(MAX_PARALLEL_FRAME as usize) as u64 + 1024;
            if too_long || !self.fill()? {
                return Err(invalid("a truncated or corrupt frame"));
            }
        }
    }

    /// The rest of the payload (what is buffered, then the reader) as one stream.
    fn as_reader(&mut self) -> impl Read + '_ {
        std::io::Cursor::new(std::mem::take(&mut self.buffered)).chain(&mut self.reader)
    }

    fn into_inner(self) -> HashingReader<R> {
        self.reader
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the zstd payload has {what}"),
    )
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

    /// One frame larger than [`MAX_PARALLEL_FRAME`] (as `zstd` writes a file): decoded as a
    /// stream on one core.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        // More buffers' worth than buffers, and a partial last one: buffers are reused.
        let image: Vec<u8> = (0..(4 * FRAME_SIZE as u32 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let compressed = zstd::stream::encode_all(&image[..], 3).unwrap();
        (image, compressed)
    }

    /// The image's and the payload's digests.
    fn digests(image: &[u8], compressed: &[u8]) -> (Digest, Digest) {
        (
            Digest::of_reader(image).unwrap(),
            Digest::of_reader(compressed).unwrap(),
        )
    }

    #[test]
    fn an_intact_image_streams_and_verifies() {
        let (image, compressed) = sample();
        let (want, want_c) = digests(&image, &compressed);
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

    /// As cairn builds payloads: independent frames, decoded on every core.
    fn framed() -> (Vec<u8>, Vec<u8>) {
        // More frames than buffers and decoders, the last one partial; some compress well,
        // some not at all.
        let mut image: Vec<u8> = (0..(9 * FRAME_SIZE as u32 + 4321))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut image[FRAME_SIZE..3 * FRAME_SIZE] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let mut compressed = Vec::new();
        compress_frames(&image[..], &mut compressed).unwrap();
        (image, compressed)
    }

    #[test]
    fn a_framed_image_is_readable_by_any_zstd_decoder_and_reproducible() {
        let (image, compressed) = framed();
        assert_eq!(zstd::stream::decode_all(&compressed[..]).unwrap(), image);
        let mut again = Vec::new();
        compress_frames(&image[..], &mut again).unwrap();
        assert_eq!(again, compressed);
        // One frame per FRAME_SIZE of image, each stating its size.
        let mut rest = &compressed[..];
        let mut frames = 0;
        while !rest.is_empty() {
            let len = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            let size = zstd::zstd_safe::get_frame_content_size(rest)
                .unwrap()
                .unwrap();
            assert!(size <= FRAME_SIZE as u64);
            rest = &rest[len..];
            frames += 1;
        }
        assert_eq!(frames, 10);
        // An empty image is one empty frame.
        let mut empty = Vec::new();
        compress_frames(&[][..], &mut empty).unwrap();
        assert!(zstd::stream::decode_all(&empty[..]).unwrap().is_empty());
    }

    #[test]
    fn a_framed_image_streams_in_parallel_and_verifies() {
        let (image, compressed) = framed();
        let (want, want_c) = digests(&image, &compressed);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        // A reader that hands out odd-sized pieces, as a network stream does.
        let reader = std::io::BufReader::with_capacity(65_537, &compressed[..]);
        let got = write_verified(reader, &mut out, Some(&want_c), &want, u64::MAX, |n| {
            seen.push(n)
        })
        .unwrap();
        assert_eq!(got, want);
        assert!(out == image, "the image came out in order");
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(seen.last(), Some(&(image.len() as u64)));
    }

    #[test]
    fn a_damaged_or_truncated_framed_image_is_refused() {
        let (image, compressed) = framed();
        let (want, want_c) = digests(&image, &compressed);
        let run = |payload: &[u8]| {
            write_verified(
                payload,
                &mut Vec::new(),
                Some(&want_c),
                &want,
                u64::MAX,
                |_| {},
            )
        };
        // One flipped byte in a frame in the middle: zstd's checksum or the digests catch it.
        let mut flipped = compressed.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        assert!(run(&flipped).is_err());
        // Cut inside the last frame, or after a whole frame.
        assert!(run(&compressed[..compressed.len() - 100]).is_err());
        let first = zstd::zstd_safe::find_frame_compressed_size(&compressed).unwrap();
        let err = run(&compressed[..first]).unwrap_err();
        assert!(matches!(err, StreamError::Mismatch { .. }), "{err}");
        // An image larger than its manifest says (and than its destination) is stopped
        // before it overflows the destination.
        let small = Digest {
            size: FRAME_SIZE as u64,
            sha256: want.sha256.clone(),
        };
        let mut out = Vec::new();
        let err = write_verified(&compressed[..], &mut out, None, &small, small.size, |_| {})
            .unwrap_err();
        assert!(matches!(err, StreamError::TooLarge { .. }), "{err}");
        assert!(out.len() <= FRAME_SIZE);
    }
}
