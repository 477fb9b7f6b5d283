//! Streaming a compressed root image into its destination in one pass: zstd decompression and
//! SHA-256 over both the compressed and the uncompressed bytes, with no temporary file.
//! Used by the install agent (HTTP -> `root-a`) and by update bundles (bundle -> inactive
//! slot). The caller must treat the destination as garbage unless this returns `Ok`.
//!
//! Two ways to check the image ([`ImageCheck`]): a signed manifest of format 2 lists the
//! SHA-256 of every [`FRAME_SIZE`] of the image ([`FrameDigests`]), and each frame is hashed
//! on the core that decoded it and written only once it matched, so no unverified byte
//! reaches the destination; a manifest of format 1 (older builds) has one SHA-256 of the
//! whole image, computed on one core as the image is written and checked at the end.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

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

/// The SHA-256 of each [`FrameDigests::frame_size`] bytes of an image (the last frame may be
/// shorter), and a root digest over the list: a hash list, as dm-verity and casync keep one,
/// one level deep. A signed manifest that carries it binds every byte of the image through
/// the list, and each frame can be checked on its own, before it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameDigests {
    /// Image bytes per frame: [`FRAME_SIZE`] in the images cairn builds.
    pub frame_size: u64,
    /// Lowercase hex SHA-256 of [`ROOT_CONTEXT`], `frame_size` (u64 little-endian) and the
    /// frames' 32-byte digests in order: names the whole list (and so the image) in one
    /// value, which [`FrameDigests::check`] recomputes.
    pub root: String,
    /// Lowercase hex SHA-256 of each frame's image bytes, in order; none for an empty image.
    pub frames: Vec<String>,
}

/// What the root digest of a [`FrameDigests`] starts with: a root is never the digest of
/// anything else cairn hashes.
pub const ROOT_CONTEXT: &[u8] = b"cairn frame digests v1\n";

impl FrameDigests {
    /// The whole image's digest and the digests of its frames of [`FRAME_SIZE`], in one pass.
    pub fn of_reader(mut reader: impl Read) -> std::io::Result<(Digest, Self)> {
        let mut whole = Context::new(&SHA256);
        let mut size = 0u64;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; FRAME_SIZE];
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            whole.update(&buf[..n]);
            frames.push(frame_digest(&buf[..n]));
            size += n as u64;
            if n < FRAME_SIZE {
                break;
            }
        }
        let image = Digest {
            size,
            sha256: hex::encode(whole.finish().as_ref()),
        };
        Ok((image, Self::from_frames(FRAME_SIZE as u64, &frames)))
    }

    /// [`FrameDigests::of_reader`] of a file.
    pub fn of_file(path: &std::path::Path) -> std::io::Result<(Digest, Self)> {
        Self::of_reader(std::fs::File::open(path)?)
    }

    /// The list of these frame digests, with its root.
    pub fn from_frames(frame_size: u64, frames: &[[u8; 32]]) -> Self {
        Self {
            frame_size,
            root: hex::encode(root_of(frame_size, frames)),
            frames: frames.iter().map(hex::encode).collect(),
        }
    }

    /// Checks the list against itself and the image it describes: a root that matches the
    /// list, one frame per `frame_size` bytes of `image`, a frame size this build decodes.
    /// Returns the digests as bytes.
    pub fn check(&self, image: &Digest) -> Result<Vec<[u8; 32]>, StreamError> {
        let bad = |why: String| Err(StreamError::FrameList(why));
        if self.frame_size == 0
            || self.frame_size > MAX_PARALLEL_FRAME
            || !self.frame_size.is_multiple_of(IMAGE_ALIGN as u64)
        {
            return bad(format!(
                "a frame size of {} bytes (this build takes multiples of {IMAGE_ALIGN} up to {MAX_PARALLEL_FRAME})",
                self.frame_size
            ));
        }
        let want = image.size.div_ceil(self.frame_size);
        if self.frames.len() as u64 != want {
            return bad(format!(
                "{} frame digests for an image of {} bytes in frames of {} (needs {want})",
                self.frames.len(),
                image.size,
                self.frame_size
            ));
        }
        let mut digests = Vec::with_capacity(self.frames.len());
        for (index, hex_digest) in self.frames.iter().enumerate() {
            let mut digest = [0u8; 32];
            if hex_digest.len() != 64 || hex::decode_to_slice(hex_digest, &mut digest).is_err() {
                return bad(format!("frame {index}'s digest is not 64 hex digits"));
            }
            digests.push(digest);
        }
        if hex::encode(root_of(self.frame_size, &digests)) != self.root {
            return bad(format!(
                "the root digest {} is not the digest of the list",
                self.root
            ));
        }
        Ok(digests)
    }
}

/// SHA-256 of one frame's image bytes.
fn frame_digest(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The root digest of a frame list (see [`FrameDigests::root`]).
fn root_of(frame_size: u64, frames: &[[u8; 32]]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(ROOT_CONTEXT);
    ctx.update(&frame_size.to_le_bytes());
    for frame in frames {
        ctx.update(frame);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// How [`write_verified`] checks the image it writes.
#[derive(Debug, Clone, Copy)]
pub enum ImageCheck<'a> {
    /// One SHA-256 over the whole image (manifests of format 1): computed on one core as the
    /// image is written and compared at the end, so the destination holds unverified bytes
    /// until then.
    Whole(&'a Digest),
    /// Each frame's SHA-256 from a signed list, compared before the frame is written; then
    /// the image's size. The image's own SHA-256 is not computed again: the list binds
    /// every byte.
    Frames {
        /// The image's size (and its SHA-256, which the list vouches for).
        image: &'a Digest,
        /// The frames' digests.
        frames: &'a FrameDigests,
    },
}

impl ImageCheck<'_> {
    /// The image's size and SHA-256.
    pub fn image(&self) -> &Digest {
        match self {
            ImageCheck::Whole(image) | ImageCheck::Frames { image, .. } => image,
        }
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
    /// A frame's image bytes do not match the signed frame digest; nothing of this frame
    /// (nor of any later one) was written.
    #[error(
        "frame {index} (image bytes {offset}..{end}) does not match the signed manifest: expected SHA-256 {expected}, got {actual}; it was not written",
        end = offset + size
    )]
    FrameMismatch {
        /// The frame's index in the list.
        index: usize,
        /// Where the frame starts in the image.
        offset: u64,
        /// Its length.
        size: u64,
        /// Expected hex SHA-256.
        expected: String,
        /// Computed hex SHA-256.
        actual: String,
    },
    /// A frame could not be decoded, or is not cut as the frame digests are; it was not
    /// written.
    #[error("frame {index} (image offset {offset}) was not written")]
    Frame {
        /// The frame's index in the list.
        index: usize,
        /// Where the frame starts in the image.
        offset: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The signed frame digests contradict themselves or the image.
    #[error(
        "the manifest's frame digests are inconsistent: {0}; rebuild the image with `cairn image build`"
    )]
    FrameList(String),
    /// The payload ended before the image its manifest describes.
    #[error("the image ended after {actual_size} bytes; its manifest says {expected_size}")]
    Truncated {
        /// Size in the manifest.
        expected_size: u64,
        /// Bytes the payload held.
        actual_size: u64,
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
/// Room for one of cairn's frames (compressed) and the read that completes it.
const FRAME_BUFFER: usize = FRAME_SIZE + FRAME_SIZE / 64 + READ_SIZE;
/// Buffers the whole-image hasher holds: one being hashed, the rest queued.
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
/// `expect_compressed` (when given) and the image as `check` says. The image check alone
/// proves what was written: `None` saves hashing the payload a second time where only the
/// written image matters (installs, slot writes). Writes at most `limit` bytes. `progress`
/// sees the running count of image bytes written.
///
/// The work is spread so the write keeps pace with a plain copy (`dd`), as a pipeline of
/// threads handing 4 MiB buffers along, never copying them: a reader thread reads the
/// payload (and hashes it, when asked) and cuts it into frames; one decoder thread per core
/// decodes frames ([`compress_frames`] payloads; a single-frame payload is decoded by the
/// reader instead, in pieces of one listed frame); this thread takes the decoded frames in
/// order and writes them, so `dest` never waits for the decoding and the disk is never idle
/// while frames are decoded. With [`ImageCheck::Frames`] the decoder also hashes the frame it
/// decoded, and this thread compares that digest with the signed one before it writes the
/// frame: the hashing is spread over every core and nothing unverified is written, nor
/// anything after it. With [`ImageCheck::Whole`] a helper hashes the image bytes already
/// written, in order, on one core. Each `write` to `dest` gets one frame's image starting at
/// an [`IMAGE_ALIGN`] boundary in memory, so `dest` may write it with direct I/O
/// ([`crate::diskwrite::ImageWriter`]). The caller's writer stays on this thread, so it need
/// not be `Send`.
pub fn write_verified(
    compressed: impl Read + Send,
    dest: &mut impl Write,
    expect_compressed: Option<&Digest>,
    check: ImageCheck<'_>,
    limit: u64,
    mut progress: impl FnMut(u64),
) -> Result<Digest, StreamError> {
    let expect_image = check.image();
    if expect_image.size > limit {
        return Err(StreamError::TooLarge { limit });
    }
    // Checked before the first byte is read: a list that does not add up stops here.
    let per_frame = match check {
        ImageCheck::Frames { image, frames } => Some(PerFrame {
            size: frames.frame_size,
            image_size: image.size,
            digests: frames.check(image)?,
        }),
        ImageCheck::Whole(_) => None,
    };
    let mut frames = Frames::new(HashingReader::new(compressed, expect_compressed.is_some()));
    let parallel = frames.first_fits().map_err(StreamError::Io)?;
    let decoders = if parallel {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        0
    };
    let cut = Cut {
        // A payload of one large frame is decoded in pieces of one listed frame each.
        chunk: per_frame.as_ref().map_or(FRAME_SIZE, |p| p.size as usize),
        hash_frames: per_frame.is_some(),
    };
    // Image buffers: one at each decoder and one queued for it, two decoded ahead of the
    // writer, and those the hasher holds. When all are out, the reader waits for one back.
    let buffers = 2 * decoders + 2 + if cut.hash_frames { 0 } else { HASHER_BUFFERS };
    // Buffers come back once written (and hashed); room for all, so giving back never waits.
    let (free_tx, free_rx) = sync_channel::<ImageBuf>(buffers);
    let (order_tx, order_rx) = sync_channel::<Decoded>(buffers);
    let (jobs_tx, jobs_rx) = sync_channel::<Job>(decoders.max(1));
    let jobs_rx = Mutex::new(jobs_rx);
    let (spent_tx, spent_rx) = channel::<Vec<u8>>();
    let (to_hash, hash_rx) = sync_channel::<ImageBuf>(HASHER_BUFFERS);
    let (written, image, payload) = std::thread::scope(|scope| {
        // The whole image's SHA-256, for a manifest with no frame digests.
        let hasher = (!cut.hash_frames).then(|| {
            let free_tx = free_tx.clone();
            scope.spawn(move || hash_in_order(hash_rx, free_tx))
        });
        for _ in 0..decoders {
            let spent_tx = spent_tx.clone();
            let jobs_rx = &jobs_rx;
            scope.spawn(move || decode_frames(jobs_rx, spent_tx, cut.hash_frames));
        }
        drop(spent_tx);
        let reader = scope.spawn(move || {
            let mut pool = Pool {
                free: free_rx,
                allocated: 0,
                limit: buffers,
            };
            let finished = if parallel {
                cut.parallel(&mut frames, jobs_tx, spent_rx, &mut pool, &order_tx)?
            } else {
                cut.sequential(&mut frames, &mut pool, &order_tx)?
            };
            // The writer may go on with what is queued while the rest is read.
            drop(order_tx);
            if !finished {
                return Ok(None);
            }
            let mut outer = frames.into_inner();
            // What the decoder did not need (trailing bytes count against the payload digest).
            std::io::copy(&mut outer, &mut std::io::sink()).map_err(StreamError::Io)?;
            Ok(Some(outer.finish()))
        });
        let mut written = 0u64;
        let wrote = write_in_order(
            order_rx,
            |mut buf: ImageBuf, written: &mut u64| {
                let len = buf.bytes().len() as u64;
                if len == 0 {
                    let _ = free_tx.send(buf);
                    return Ok(());
                }
                if *written + len > limit {
                    return Err(StreamError::TooLarge { limit });
                }
                if let Some(per_frame) = &per_frame {
                    per_frame.verify(&mut buf, *written)?;
                }
                dest.write_all(buf.bytes()).map_err(StreamError::Io)?;
                if cut.hash_frames {
                    // The reader may have stopped; then nobody wants the buffer back.
                    let _ = free_tx.send(buf);
                } else {
                    to_hash.send(buf).expect("the hasher runs until we hang up");
                }
                *written += len;
                progress(*written);
                Ok(())
            },
            &mut written,
        );
        // Hanging up stops the reader and the hasher (and, through the reader, the decoders).
        drop((to_hash, free_tx));
        let image = hasher.map(|h| h.join().expect("the hasher does not panic"));
        let read = reader.join().expect("the reader does not panic");
        // This thread's error first: the reader stops without one when this thread stopped.
        wrote?;
        let payload = read?.expect("the writer took every frame");
        Ok::<_, StreamError>((written, image, payload))
    })?;
    dest.flush().map_err(StreamError::Io)?;
    if let Some(expected) = expect_compressed {
        check_digest("compressed image", expected, &payload)?;
    }
    match image {
        Some(image) => {
            debug_assert_eq!(written, image.size);
            check_digest("image", expect_image, &image)?;
            Ok(image)
        }
        // Every frame written matched its signed digest; the list holds no more than the
        // image has, so the size is all that is left to check.
        None if written == expect_image.size => Ok(expect_image.clone()),
        None => Err(StreamError::Truncated {
            expected_size: expect_image.size,
            actual_size: written,
        }),
    }
}

/// Takes the decoded frames in payload order and hands each to `sink` (which checks and
/// writes it) until the reader hangs up, or stops at the first error.
fn write_in_order(
    order: Receiver<Decoded>,
    mut sink: impl FnMut(ImageBuf, &mut u64) -> Result<(), StreamError>,
    written: &mut u64,
) -> Result<(), StreamError> {
    for (index, decoded) in order.into_iter().enumerate() {
        let image = decoded
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("a frame decoder stopped")))
            .map_err(|source| StreamError::Frame {
                index,
                offset: *written,
                source,
            })?;
        sink(image, written)?;
    }
    Ok(())
}

/// Hashes the image buffers in the order they were written, and gives each back.
fn hash_in_order(buffers: Receiver<ImageBuf>, free: SyncSender<ImageBuf>) -> Digest {
    let mut ctx = Context::new(&SHA256);
    let mut count = 0u64;
    for buf in buffers {
        ctx.update(buf.bytes());
        count += buf.bytes().len() as u64;
        // The reader may have stopped; then nobody wants the buffer back.
        let _ = free.send(buf);
    }
    Digest {
        size: count,
        sha256: hex::encode(ctx.finish().as_ref()),
    }
}

/// The signed frame digests, checked as each frame comes to be written.
struct PerFrame {
    /// Image bytes per frame.
    size: u64,
    /// The image's size.
    image_size: u64,
    /// Each frame's SHA-256.
    digests: Vec<[u8; 32]>,
}

impl PerFrame {
    /// Checks the image bytes in `buf`, which start at `offset` in the image, before they are
    /// written: they must be the whole frame starting there and match its digest (computed
    /// by the decoder, or here).
    fn verify(&self, buf: &mut ImageBuf, offset: u64) -> Result<(), StreamError> {
        // Every earlier frame was whole, so `offset` is where frame `index` starts (or, past
        // the image's last partial frame, where the one after it would).
        let index = usize::try_from(offset.div_ceil(self.size)).unwrap_or(usize::MAX);
        let len = buf.bytes().len() as u64;
        let want = self.image_size.saturating_sub(offset).min(self.size);
        if len != want {
            let why = if want == 0 {
                format!(
                    "the payload goes on past the image's {} bytes",
                    self.image_size
                )
            } else {
                format!(
                    "its zstd frame holds {len} image bytes where the manifest's frame holds {want}"
                )
            };
            return Err(StreamError::Frame {
                index,
                offset,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
            });
        }
        let actual = buf
            .digest
            .take()
            .unwrap_or_else(|| frame_digest(buf.bytes()));
        let expected = &self.digests[index];
        if &actual != expected {
            return Err(StreamError::FrameMismatch {
                index,
                offset,
                size: len,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
        Ok(())
    }
}

/// A frame to decode, the buffer to decode it into, and where the result goes.
type Job = (Compressed, ImageBuf, SyncSender<std::io::Result<ImageBuf>>);
/// One frame's decoded image (or why it has none), as the writer waits for it.
type Decoded = Receiver<std::io::Result<ImageBuf>>;

/// A decoder thread: decodes frames (and hashes each one decoded when `hash`) until the jobs
/// channel closes, and hands each compressed frame's buffer back to the reader through
/// `spent` for the next frame.
fn decode_frames(jobs: &Mutex<Receiver<Job>>, spent: Sender<Vec<u8>>, hash: bool) {
    let mut decoder = zstd::bulk::Decompressor::new();
    loop {
        let job = jobs.lock().expect("no decoder panics").recv();
        let Ok((frame, mut out, reply)) = job else {
            return;
        };
        let decoded = match &mut decoder {
            Ok(decoder) => {
                // `Frames` checked the stated size; zstd checks the frame holds exactly that.
                let frame = &frame.bytes[..frame.len];
                let size = zstd::zstd_safe::get_frame_content_size(frame)
                    .ok()
                    .flatten()
                    .unwrap_or(0) as usize;
                decoder
                    .decompress_to_buffer(frame, out.room(size))
                    .map(|n| {
                        out.set_len(n);
                        if hash {
                            out.digest = Some(frame_digest(out.bytes()));
                        }
                        out
                    })
            }
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        // The reader or the writer may have stopped early; then nobody wants these.
        let _ = spent.send(frame.bytes);
        let _ = reply.send(decoded);
    }
}

/// How the reader thread cuts the payload into image buffers.
#[derive(Clone, Copy)]
struct Cut {
    /// Image bytes per buffer when decoding a single-frame payload here.
    chunk: usize,
    /// Whether each buffer's SHA-256 is computed before it is handed on (frame digests).
    hash_frames: bool,
}

impl Cut {
    /// Cuts the payload into frames and queues each at the decoders, its result at the
    /// writer in the same order. `Ok(false)` when the writer stopped first.
    fn parallel<R: Read>(
        self,
        frames: &mut Frames<R>,
        jobs: SyncSender<Job>,
        spent: Receiver<Vec<u8>>,
        pool: &mut Pool,
        order: &SyncSender<Decoded>,
    ) -> Result<bool, StreamError> {
        loop {
            let Some(out) = pool.take() else {
                return Ok(false);
            };
            let Some(frame) = frames
                .next_frame(spent.try_recv().ok())
                .map_err(StreamError::Io)?
            else {
                return Ok(true);
            };
            let (reply, result) = sync_channel(1);
            jobs.send((frame, out, reply))
                .expect("decoders run until the reader hangs up");
            if order.send(result).is_err() {
                return Ok(false);
            }
        }
    }

    /// Decodes a payload that is one large frame (or of unknown frame sizes) as a stream
    /// here, in pieces of `chunk` image bytes, handing each (hashed, with frame digests) to
    /// the writer. `Ok(false)` when the writer stopped first.
    fn sequential<R: Read>(
        self,
        frames: &mut Frames<R>,
        pool: &mut Pool,
        order: &SyncSender<Decoded>,
    ) -> Result<bool, StreamError> {
        let mut decoder =
            zstd::stream::read::Decoder::new(frames.as_reader()).map_err(StreamError::Io)?;
        loop {
            let Some(mut buf) = pool.take() else {
                return Ok(false);
            };
            let filled = read_full(&mut decoder, buf.room(self.chunk)).map_err(StreamError::Io)?;
            if filled == 0 {
                return Ok(true);
            }
            buf.set_len(filled);
            if self.hash_frames {
                buf.digest = Some(frame_digest(buf.bytes()));
            }
            let (reply, result) = sync_channel(1);
            reply.send(Ok(buf)).expect("the receiver is here");
            if order.send(result).is_err() {
                return Ok(false);
            }
        }
    }
}

/// Image bytes handed from decoding to writing and hashing. They start at a page boundary,
/// so a writer can give them to the disk as they are (O_DIRECT) instead of copying them
/// into the page cache first.
struct ImageBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
    /// The SHA-256 of the bytes, when the decoder computed it.
    digest: Option<[u8; 32]>,
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
            digest: None,
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

    /// Sets the bytes' length (forgetting any digest of earlier contents).
    fn set_len(&mut self, len: usize) {
        self.len = len;
        self.digest = None;
    }

    /// The image bytes.
    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

/// Image buffers for the reader thread: those given back once written (and hashed) are
/// reused, at most `limit` allocated.
struct Pool {
    free: Receiver<ImageBuf>,
    allocated: usize,
    limit: usize,
}

impl Pool {
    /// A buffer given back, else a new one while fewer than `limit` exist, else waits for
    /// one; `None` once the writer (and the hasher) hung up.
    fn take(&mut self) -> Option<ImageBuf> {
        if let Ok(buf) = self.free.try_recv() {
            return Some(buf);
        }
        if self.allocated < self.limit {
            self.allocated += 1;
            return Some(ImageBuf::with_room(FRAME_SIZE));
        }
        self.free.recv().ok()
    }
}

/// Cuts a zstd payload into its frames, reading ahead as little as a frame needs.
struct Frames<R> {
    reader: HashingReader<R>,
    /// Read from the payload: `buffered[..filled]`. The rest is initialized too (zeros, or
    /// an earlier frame's bytes), so reads go straight into it without zeroing it first.
    buffered: Vec<u8>,
    filled: usize,
    ended: bool,
}

/// A whole compressed frame: `bytes[..len]` (the rest is left from earlier use).
struct Compressed {
    bytes: Vec<u8>,
    len: usize,
}

impl<R: Read> Frames<R> {
    fn new(reader: HashingReader<R>) -> Self {
        Self {
            reader,
            buffered: Vec::new(),
            filled: 0,
            ended: false,
        }
    }

    /// Reads more; `false` at the end of the payload.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        let end = self.filled + READ_SIZE;
        if self.buffered.len() < end {
            self.buffered.resize(end.max(FRAME_BUFFER), 0);
        }
        let n = read_full(&mut self.reader, &mut self.buffered[self.filled..end])?;
        self.filled += n;
        self.ended = n < READ_SIZE;
        Ok(n > 0)
    }

    /// Whether the first frame states a size small enough to decode frames in parallel.
    fn first_fits(&mut self) -> std::io::Result<bool> {
        self.fill()?;
        Ok(matches!(
            zstd::zstd_safe::get_frame_content_size(&self.buffered[..self.filled]),
            Ok(Some(size)) if size <= MAX_PARALLEL_FRAME
        ))
    }

    /// The next whole frame, `None` at the end of the payload. `spare` (a frame's buffer
    /// the decoder is done with) takes what was read past the frame, so buffers are reused
    /// rather than allocated (and faulted in) for every frame.
    fn next_frame(&mut self, mut spare: Option<Vec<u8>>) -> std::io::Result<Option<Compressed>> {
        loop {
            if self.filled == 0 && !self.fill()? {
                return Ok(None);
            }
            let read = &self.buffered[..self.filled];
            if let Ok(len) = zstd::zstd_safe::find_frame_compressed_size(read) {
                // Frames decoded in parallel must state a size the decoder can allocate.
                match zstd::zstd_safe::get_frame_content_size(read) {
                    Ok(Some(size)) if size <= MAX_PARALLEL_FRAME => {}
                    _ => return Err(invalid("a frame of unknown or too large size")),
                }
                // The rest goes into a buffer with room for a whole next frame, so reading
                // it does not grow (and copy) the buffer a few times per frame.
                let rest_len = self.filled - len;
                let mut rest = spare.take().unwrap_or_default();
                if rest.len() < FRAME_BUFFER.max(rest_len) {
                    rest.resize(FRAME_BUFFER.max(rest_len), 0);
                }
                rest[..rest_len].copy_from_slice(&self.buffered[len..self.filled]);
                self.filled = rest_len;
                let bytes = std::mem::replace(&mut self.buffered, rest);
                return Ok(Some(Compressed { bytes, len }));
            }
            // A frame larger than any frame of ours holds is not coming to an end.
            let too_long = self.filled as u64
                > zstd::zstd_safe::compress_bound(MAX_PARALLEL_FRAME as usize) as u64 + 1024;
            if too_long || !self.fill()? {
                return Err(invalid("a truncated or corrupt frame"));
            }
        }
    }

    /// The rest of the payload (what is buffered, then the reader) as one stream.
    fn as_reader(&mut self) -> impl Read + '_ {
        let buffered = std::mem::take(&mut self.buffered);
        std::io::Cursor::new(buffered)
            .take(std::mem::take(&mut self.filled) as u64)
            .chain(&mut self.reader)
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

fn check_digest(what: &'static str, expected: &Digest, actual: &Digest) -> Result<(), StreamError> {
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
            ImageCheck::Whole(&want),
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
            ImageCheck::Whole(&want),
            u64::MAX,
            |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, StreamError::Mismatch { what: "image", .. }),
            "{err}"
        );
        let want = Digest::of_reader(&image[..]).unwrap();
        let err = write_verified(
            &compressed[..],
            &mut Vec::new(),
            None,
            ImageCheck::Whole(&want),
            1000,
            |_| {},
        )
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
        let got = write_verified(
            reader,
            &mut out,
            Some(&want_c),
            ImageCheck::Whole(&want),
            u64::MAX,
            |n| seen.push(n),
        )
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
                ImageCheck::Whole(&want),
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
        let err = write_verified(
            &compressed[..],
            &mut out,
            None,
            ImageCheck::Whole(&small),
            small.size,
            |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, StreamError::TooLarge { .. }), "{err}");
        assert!(out.len() <= FRAME_SIZE);
    }

    /// The image with frame `index` changed (a validly compressed frame of other bytes, as
    /// an attacker or a bad mirror would serve), framed and as one zstd stream.
    fn tampered(image: &[u8], index: usize) -> (Vec<u8>, Vec<u8>) {
        let mut bad = image.to_vec();
        let frame = &mut bad[index * FRAME_SIZE..(index + 1) * FRAME_SIZE];
        frame[FRAME_SIZE / 2] ^= 0x5a;
        let mut framed = Vec::new();
        compress_frames(&bad[..], &mut framed).unwrap();
        let single = zstd::stream::encode_all(&bad[..], 3).unwrap();
        (framed, single)
    }

    #[test]
    fn with_frame_digests_every_frame_is_checked_before_it_is_written() {
        let (image, compressed) = framed();
        let (want, list) = FrameDigests::of_reader(&image[..]).unwrap();
        assert_eq!(want, Digest::of_reader(&image[..]).unwrap());
        assert_eq!(list.frames.len(), 10);
        assert_eq!(list.check(&want).unwrap().len(), 10);
        let check = ImageCheck::Frames {
            image: &want,
            frames: &list,
        };
        // Framed (decoded and hashed on every core) and as one zstd stream (decoded here,
        // in pieces of one frame).
        let single = zstd::stream::encode_all(&image[..], 3).unwrap();
        for payload in [&compressed, &single] {
            let mut out = Vec::new();
            let got =
                write_verified(&payload[..], &mut out, None, check, u64::MAX, |_| {}).unwrap();
            assert_eq!(got, want);
            assert!(out == image, "the image came out whole and in order");
        }

        // A frame in the middle that decodes fine but is not the signed one: the frames
        // before it are written, it and the rest are not, and the error names it.
        let (framed_bad, single_bad) = tampered(&image, 5);
        for payload in [&framed_bad, &single_bad] {
            let mut out = Vec::new();
            let err =
                write_verified(&payload[..], &mut out, None, check, u64::MAX, |_| {}).unwrap_err();
            let offset = 5 * FRAME_SIZE as u64;
            assert!(
                matches!(err, StreamError::FrameMismatch { index: 5, offset: o, .. } if o == offset),
                "{err}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("frame 5 (image bytes {offset}..")),
                "{err}"
            );
            assert_eq!(out.len(), 5 * FRAME_SIZE);
            assert!(out[..] == image[..5 * FRAME_SIZE]);
        }

        // A payload cut after three frames, or going on past the image.
        let mut cut = Vec::new();
        compress_frames(&image[..3 * FRAME_SIZE], &mut cut).unwrap();
        let err =
            write_verified(&cut[..], &mut Vec::new(), None, check, u64::MAX, |_| {}).unwrap_err();
        assert!(
            matches!(err, StreamError::Truncated { actual_size, .. } if actual_size == 3 * FRAME_SIZE as u64),
            "{err}"
        );
        let mut longer = compressed.clone();
        compress_frames(&image[..100][..], &mut longer).unwrap();
        let err = write_verified(&longer[..], &mut Vec::new(), None, check, u64::MAX, |_| {})
            .unwrap_err();
        assert!(matches!(err, StreamError::Frame { index: 10, .. }), "{err}");
    }

    #[test]
    fn a_frame_list_that_does_not_add_up_is_refused_before_anything_is_written() {
        let image = vec![7u8; 2 * FRAME_SIZE + 1];
        let mut compressed = Vec::new();
        compress_frames(&image[..], &mut compressed).unwrap();
        let (want, list) = FrameDigests::of_reader(&image[..]).unwrap();
        let mut wrong_root = list.clone();
        wrong_root.root = "00".repeat(32);
        // A list that adds up in itself, one frame short of the image.
        let one_short =
            FrameDigests::from_frames(list.frame_size, &list.check(&want).unwrap()[..2]);
        let mut odd_size = list.clone();
        odd_size.frame_size = 1000;
        let mut not_hex = list.clone();
        not_hex.frames[1] = "zz".repeat(32);
        // Any zero-length frame size never divides an image.
        let mut zero = list.clone();
        zero.frame_size = 0;
        for (bad, says) in [
            (wrong_root, "root digest"),
            (one_short, "2 frame digests"),
            (odd_size, "frame size of 1000"),
            (not_hex, "frame 1's digest"),
            (zero, "frame size of 0"),
        ] {
            let mut out = Vec::new();
            let check = ImageCheck::Frames {
                image: &want,
                frames: &bad,
            };
            let err = write_verified(&compressed[..], &mut out, None, check, u64::MAX, |_| {})
                .unwrap_err();
            assert!(matches!(err, StreamError::FrameList(_)), "{err}");
            assert!(err.to_string().contains(says), "{err}");
            assert!(out.is_empty());
        }
        // An empty image has no frames.
        let (empty, list) = FrameDigests::of_reader(&[][..]).unwrap();
        assert!(list.frames.is_empty());
        let mut payload = Vec::new();
        compress_frames(&[][..], &mut payload).unwrap();
        let check = ImageCheck::Frames {
            image: &empty,
            frames: &list,
        };
        assert_eq!(
            write_verified(&payload[..], &mut Vec::new(), None, check, 0, |_| {}).unwrap(),
            empty
        );
    }
}
