//! Layer compressors: gzip, split across cores, and zstd.
//!
//! Packing a cold image is bound by deflate: one core gzips at ~40 MB/s, so
//! a 200 MiB package would keep a client waiting for seconds however many
//! cores the machine has. [`ParallelGzEncoder`] cuts the tar stream into
//! fixed blocks and deflates them on all cores at once, as pigz does: each
//! block is primed with the 32 KiB before it (so it compresses almost as well
//! as one long stream), ends on a byte boundary (a sync flush), and the
//! blocks are written in order, behind one gzip header, with the CRC-32s
//! combined. The result is one ordinary gzip member any client reads.
//!
//! The bytes depend only on the input, the level and [`BLOCK`], never on the
//! number of threads or on how the input was split into `write` calls: the
//! same store paths give the same layer digest on every replica.

use crc32fast::Hasher as Crc;
use flate2::{Compress, Compression, FlushCompress, Status};
use serde::{Deserialize, Serialize};

use crate::config::LayersConfig;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver};

/// Input per parallel deflate block. pigz's default: large enough that the
/// per-block cost (a flush marker, a cold start of the match finder) is lost
/// in the noise, small enough that two cores share even a 1 MiB layer.
pub const BLOCK: usize = 128 * 1024;

/// Deflate's window: what a block may refer back to.
const DICT: usize = 32 * 1024;

pub use crate::config::Codec;

/// One compressed form of a layer: the codec and its level (gzip 0–9,
/// zstd 1–19). Part of every layer cache key: other settings, other bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Encoding {
    pub codec: Codec,
    pub level: i32,
}

impl Encoding {
    pub fn gzip(level: u32) -> Encoding {
        Encoding { codec: Codec::Gzip, level: level as i32 }
    }

    pub fn zstd(level: i32) -> Encoding {
        Encoding { codec: Codec::Zstd, level }
    }

    /// Identifies the byte format in cache keys. `pgzip/128k`, not `gzip`:
    /// a block-parallel stream is valid gzip but not the bytes a one-stream
    /// encoder writes, so records of the older packer must not be mistaken
    /// for this one's.
    pub fn format_id(self) -> String {
        match self.codec {
            Codec::Gzip => format!("pgzip/{}k/stored-{INCOMPRESSIBLE_BITS}/{}", BLOCK / 1024, self.level),
            Codec::Zstd => format!("zstdmt/{}k/{}/{}", ZSTD_JOB / 1024, zstd::zstd_safe::version_string(), self.level),
        }
    }
}

/// The form OCI manifests reference, as `[layers]` sets it.
pub fn primary(layers: &LayersConfig) -> Encoding {
    Encoding { codec: layers.compression, level: layers.level() as i32 }
}

/// The form Docker schema 2 manifests take when OCI's is not gzip: gzip
/// level 6, since schema 2 has no zstd layer type. Packed only when a
/// client first asks for a schema 2 manifest: most clients that read
/// zstd never do, and the copy costs more than the zstd pass itself.
pub fn docker_copy(layers: &LayersConfig) -> Option<Encoding> {
    (layers.compression != Codec::Gzip).then_some(Encoding::gzip(6))
}

/// Every form an image's layers may take, OCI's first: what an image's
/// cache key names, and what the small final layer is packed in at once.
pub fn encodings(layers: &LayersConfig) -> Vec<Encoding> {
    std::iter::once(primary(layers)).chain(docker_copy(layers)).collect()
}

/// A compressing writer that hands its output back when finished.
pub trait Encoder<W>: Write {
    fn finish(self: Box<Self>) -> io::Result<W>;
}

impl<W: Write> Encoder<W> for ParallelGzEncoder<W> {
    fn finish(self: Box<Self>) -> io::Result<W> {
        (*self).finish()
    }
}

impl<W: Write> Encoder<W> for zstd::stream::write::Encoder<'static, W> {
    fn finish(self: Box<Self>) -> io::Result<W> {
        (*self).finish()
    }
}

/// A reader of what `codec` compressed into `input`.
pub fn decoder<'a, R: Read + 'a>(codec: Codec, input: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match codec {
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
    })
}

/// An encoder for `encoding` writing into `out`.
pub fn encoder<'a, W: Write + 'a>(encoding: Encoding, out: W) -> io::Result<Box<dyn Encoder<W> + 'a>> {
    Ok(match encoding.codec {
        Codec::Gzip => Box::new(ParallelGzEncoder::new(out, encoding.level.clamp(0, 9) as u32)),
        Codec::Zstd => Box::new(zstd_encoder(out, encoding.level, zstd_workers())?),
    })
}

/// zstd's multi-threaded mode, always, with a worker per core: one big
/// layer (a browser, a compiler) would otherwise hold a single core while
/// `zstd -T0` uses them all. Its streamed bytes are the same whatever the
/// number of workers (facebook/zstd#2238), though not those of the
/// single-threaded mode: so even a one-core machine runs one worker, and
/// every replica writes the same blobs.
fn zstd_encoder<W: Write>(out: W, level: i32, workers: u32) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut z = zstd::stream::write::Encoder::new(out, level)?;
    // The digest already protects the bytes; a checksum would be a
    // second, slower one.
    z.include_checksum(false)?;
    z.include_contentsize(false)?;
    z.multithread(workers.max(1))?;
    // Each worker holds its job's input and output: zstd's default job at
    // level 3 is 8 MiB, which with two layers packed at once took the
    // server's peak memory past 200 MiB on the corpus benchmark. Smaller
    // jobs cost under a percent of size (each starts with the end of the
    // previous one as its window).
    z.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB))?;
    Ok(z)
}

/// Input bytes per zstd job; part of the byte format (a different size
/// splits the stream differently), so it is fixed, never derived from the
/// machine.
const ZSTD_JOB: u32 = 2 * 1024 * 1024;

fn zstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// A deflated block and what the gzip trailer needs of its input.
struct Block {
    deflated: Vec<u8>,
    crc: u32,
    len: u64,
}

/// pigz-style gzip: blocks of [`BLOCK`] input deflated in parallel on
/// rayon's pool, written in order. Memory is bounded by the blocks in
/// flight (a few per core), whatever the size of the stream.
pub struct ParallelGzEncoder<W: Write> {
    inner: Option<W>,
    level: u32,
    /// Input of the block being filled.
    block: Vec<u8>,
    /// The last [`DICT`] bytes of the previous block's input.
    dict: Vec<u8>,
    /// Blocks handed to the pool, oldest first.
    in_flight: VecDeque<Receiver<io::Result<Block>>>,
    max_in_flight: usize,
    crc: Crc,
    header_written: bool,
}

impl<W: Write> ParallelGzEncoder<W> {
    pub fn new(inner: W, level: u32) -> Self {
        ParallelGzEncoder {
            inner: Some(inner),
            level: level.min(9),
            block: Vec::with_capacity(BLOCK),
            dict: Vec::new(),
            in_flight: VecDeque::new(),
            max_in_flight: 2 * rayon::current_num_threads() + 2,
            crc: Crc::new(),
            header_written: false,
        }
    }

    fn inner(&mut self) -> &mut W {
        self.inner.as_mut().expect("used after finish")
    }

    /// The gzip header as flate2's `GzEncoder` writes it: no name, no time,
    /// "unknown" OS, so that the bytes do not depend on the build machine.
    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            let xfl = match self.level {
                9 => 2,
                0 | 1 => 4,
                _ => 0,
            };
            self.inner().write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Sends the filled block to the pool; `last` ends the deflate stream.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        let input = std::mem::replace(&mut self.block, Vec::with_capacity(if last { 0 } else { BLOCK }));
        let dict = std::mem::take(&mut self.dict);
        if !last {
            self.dict = input[input.len().saturating_sub(DICT)..].to_vec();
        }
        let level = self.level;
        let (tx, rx) = sync_channel(1);
        let job = move || {
            let result = deflate_block(level, &dict, &input, last).map(|deflated| {
                let mut crc = Crc::new();
                crc.update(&input);
                Block { deflated, crc: crc.finalize(), len: input.len() as u64 }
            });
            let _ = tx.send(result);
        };
        // On one of the pool's own threads, waiting below for blocks queued
        // behind it could deadlock the pool: deflate in place instead.
        if rayon::current_thread_index().is_some() {
            job();
        } else {
            rayon::spawn(job);
        }
        self.in_flight.push_back(rx);
        // Keep the pipeline short: write out what is done, and wait for the
        // oldest block when too many are out.
        while self.in_flight.len() > self.max_in_flight {
            self.write_oldest(true)?;
        }
        while !self.in_flight.is_empty() && self.write_oldest(false)? {}
        Ok(())
    }

    /// Writes the oldest block if it is done (or, with `wait`, once it is).
    /// Returns whether one was written.
    fn write_oldest(&mut self, wait: bool) -> io::Result<bool> {
        let Some(rx) = self.in_flight.front() else { return Ok(false) };
        let result = if wait {
            rx.recv().map_err(|_| io::Error::other("deflate worker vanished"))?
        } else {
            match rx.try_recv() {
                Ok(r) => r,
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(false),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(io::Error::other("deflate worker vanished"))
                }
            }
        };
        self.in_flight.pop_front();
        let block = result?;
        self.crc.combine(&Crc::new_with_initial_len(block.crc, block.len));
        self.write_header()?;
        self.inner().write_all(&block.deflated)?;
        Ok(true)
    }

    /// Ends the stream (last block, CRC-32 and length) and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_header()?;
        self.submit(true)?;
        while !self.in_flight.is_empty() {
            self.write_oldest(true)?;
        }
        let crc = self.crc.clone();
        let len = crc.total_len();
        let crc = crc.finalize();
        let inner = self.inner();
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(&(len as u32).to_le_bytes())?;
        inner.flush()?;
        Ok(self.inner.take().expect("finished once"))
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Blocks are fixed in size so that the bytes never depend on when a
    /// caller flushes: this pushes out only finished blocks.
    fn flush(&mut self) -> io::Result<()> {
        while !self.in_flight.is_empty() {
            self.write_oldest(true)?;
        }
        self.inner().flush()
    }
}

/// Bits per byte (order 0) above which a block is taken for incompressible:
/// random bytes measure 7.998 over a block, compressed files (`.gz`, `.png`,
/// `.jar`) about the same; text is near 5, machine code near 6.
const INCOMPRESSIBLE_BITS: f64 = 7.95;

/// Whether a block looks incompressible: its byte histogram is nearly flat.
/// Deflate would spend most of its time on it looking for matches that are
/// not there and then write it stored anyway, as zstd notices too.
fn incompressible(input: &[u8]) -> bool {
    if input.len() < 4096 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in input {
        counts[b as usize] += 1;
    }
    let n = input.len() as f64;
    let bits: f64 = counts.iter().filter(|&&c| c > 0).map(|&c| {
        let p = c as f64 / n;
        -p * p.log2()
    }).sum();
    bits >= INCOMPRESSIBLE_BITS
}

/// `input` as deflate stored blocks (at most 65,535 bytes each, 5 bytes of
/// header), the last one final when `last`. Byte-aligned before and after,
/// as the sync-flushed blocks around it are.
fn stored_blocks(input: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 65_535 * 5 + 5);
    let mut chunks: Vec<&[u8]> = input.chunks(65_535).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let len = chunk.len() as u16;
        out.push(u8::from(last && i + 1 == n));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Raw deflate of one block, primed with `dict`, ending with a sync flush
/// (byte-aligned, stream open) or, for the last block, the final block.
/// Incompressible blocks are written stored, at the speed of a copy.
fn deflate_block(level: u32, dict: &[u8], input: &[u8], last: bool) -> io::Result<Vec<u8>> {
    if level > 0 && incompressible(input) {
        return Ok(stored_blocks(input, last));
    }
    // A fresh state per block: a reset one carried over from the thread's
    // previous block gave different bytes for the same input (seen as two
    // digests for one layer between runs), and the layer digest must depend
    // on the input alone.
    let mut c = Compress::new(Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(input.len() + input.len() / 64 + 64);
    loop {
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&input[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        let room_left = out.len() < out.capacity();
        match status {
            Status::StreamEnd => break,
            _ if !last && all_in && room_left => break,
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Text-like and random-looking bytes, as store paths mix them.
    fn sample(len: usize) -> Vec<u8> {
        let mut s: u32 = 12345;
        (0..len)
            .map(|i| {
                if (i / 50_000) % 2 == 0 {
                    b"the quick brown fox jumps over the lazy dog\n"[i % 44]
                } else {
                    s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (s >> 16) as u8
                }
            })
            .collect()
    }

    /// Bytes no compressor can shrink.
    fn random(len: usize) -> Vec<u8> {
        let mut s: u64 = 7;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut d = flate2::read::GzDecoder::new(gz);
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        // One member: the single-member decoder read it all.
        assert_eq!(d.into_inner().len(), 0);
        out
    }

    fn pgzip(data: &[u8], level: u32, write_size: usize) -> Vec<u8> {
        let mut e = ParallelGzEncoder::new(Vec::new(), level);
        for chunk in data.chunks(write_size.max(1)) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    #[test]
    fn round_trips_at_every_size_around_block_edges() {
        let data = sample(3 * BLOCK + 7);
        for len in [0, 1, DICT - 1, DICT + 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 7] {
            for level in [0, 1, 6, 9] {
                let gz = pgzip(&data[..len], level, 10_000);
                assert_eq!(gunzip(&gz), &data[..len], "len {len} level {level}");
            }
        }
    }

    #[test]
    fn bytes_do_not_depend_on_write_sizes_or_threads() {
        let data = sample(5 * BLOCK + 123);
        let a = pgzip(&data, 6, 1 << 20);
        let b = pgzip(&data, 6, 777);
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let c = one_thread.install(|| pgzip(&data, 6, 4096));
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn compresses_about_as_well_as_one_stream() {
        let data = sample(4 << 20);
        let parallel = pgzip(&data, 6, 65536).len();
        let mut one = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        one.write_all(&data).unwrap();
        let one = one.finish().unwrap().len();
        assert!(parallel as f64 <= one as f64 * 1.01, "parallel {parallel} vs one stream {one}");
    }

    #[test]
    fn random_blocks_are_stored_and_still_one_valid_member() {
        let random = random(3 * BLOCK + 70_000);
        assert!(incompressible(&random[..BLOCK]));
        assert!(!incompressible(&sample(BLOCK)[..50_000]));
        // Random, then text, then random ending the stream (a final stored block).
        let mut data = random[..2 * BLOCK].to_vec();
        data.extend_from_slice(&sample(BLOCK + 100)[..BLOCK + 100]);
        data.extend_from_slice(&random[2 * BLOCK..]);
        for len in [BLOCK, data.len(), 2 * BLOCK] {
            let gz = pgzip(&data[..len], 6, 8192);
            assert_eq!(gunzip(&gz), &data[..len]);
            let mut one = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
            one.write_all(&data[..len]).unwrap();
            let one = one.finish().unwrap().len();
            assert!(gz.len() as f64 <= one as f64 * 1.002, "{} vs one stream {one}", gz.len());
        }
    }

    /// Another implementation's verdict: GNU gzip's own integrity check.
    #[test]
    fn gnu_gzip_accepts_the_stream() {
        let mut data = sample(3 * BLOCK + 999);
        data.extend(random(2 * BLOCK + 1));
        data.extend(sample(1000));
        for level in [1, 6, 9] {
            let gz = pgzip(&data, level, 50_000);
            let mut child = std::process::Command::new("gzip")
                .args(["-t", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("gzip (scripts/install-deps.sh installs it)");
            child.stdin.take().unwrap().write_all(&gz).unwrap();
            assert!(child.wait().unwrap().success(), "gzip -t refused level {level}");
        }
    }

    #[test]
    fn same_bytes_inside_the_pool_as_outside() {
        let data = sample(2 * BLOCK + 5);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        assert_eq!(pool.install(|| pgzip(&data, 6, 9000)), pgzip(&data, 6, 9000));
    }

    #[test]
    fn zstd_round_trips_and_is_deterministic() {
        let data = sample(BLOCK * 3);
        let z = |d: &[u8]| {
            let mut e = encoder(Encoding::zstd(3), Vec::new()).unwrap();
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let a = z(&data);
        assert_eq!(a, z(&data));
        assert_eq!(zstd::decode_all(&a[..]).unwrap(), data);
        assert!(a.len() < data.len());
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_the_number_of_workers() {
        // Several of zstd's jobs, written in odd pieces.
        let data: Vec<u8> = (0..10).flat_map(|_| sample(3 * 1024 * 1024 + 7)).collect();
        let z = |workers: u32| {
            let mut e = zstd_encoder(Vec::new(), 3, workers).unwrap();
            for piece in data.chunks(100_003) {
                e.write_all(piece).unwrap();
            }
            e.finish().unwrap()
        };
        let one = z(1);
        assert_eq!(one, z(2));
        assert_eq!(one, z(5));
        assert_eq!(zstd::decode_all(&one[..]).unwrap(), data);
    }
}
