//! LZ4 on the wire, for chunks that compress.
//!
//! The reader samples 32 KiB at each chunk's start and every 5 MiB into it (the seed's
//! rule), in the same pass that hashes the chunk, and tells the engine core what LZ4 saved
//! on the samples; the core decides per chunk (more than 10 % saved → compress). Sampling
//! costs about 1/160 of a pass over the data; a depth map or a point cloud in ASCII saves
//! half or more, a JPEG or an H.265 stream nothing.
//!
//! Compressed bodies live in buffers that return to a pool when the transport drops the
//! request body, so steady-state compression allocates nothing.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::buffer::Buffer;

/// Bytes per sample.
pub const SAMPLE: usize = 32 * 1024;
/// One sample per this many bytes of a chunk.
pub const SAMPLE_EVERY: usize = 5 * 1024 * 1024;

thread_local! {
    /// Scratch space for compressing samples (reader threads are few and reused).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The fraction LZ4 saves on this chunk's samples (0.0 when nothing is saved).
pub fn sample_saving(chunk: &[u8]) -> f32 {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize(lz4_flex::block::get_maximum_output_size(SAMPLE), 0);
        let (mut raw, mut packed) = (0usize, 0usize);
        for start in (0..chunk.len()).step_by(SAMPLE_EVERY) {
            let sample = &chunk[start..chunk.len().min(start + SAMPLE)];
            // The output bound makes a failure impossible; count it as incompressible.
            let n = lz4_flex::block::compress_into(sample, scratch).unwrap_or(sample.len());
            raw += sample.len();
            packed += n.min(sample.len());
        }
        match raw {
            0 => 0.0,
            _ => 1.0 - packed as f32 / raw as f32,
        }
    })
}

/// Reusable output buffers for compressed chunks (see [`Buffer`]: wiped on return,
/// locked in RAM within the process's limit).
#[derive(Default)]
pub struct Lz4Pool {
    free: Mutex<Vec<Buffer>>,
}

/// At most this many idle buffers are kept (one per stream of the top tier).
const KEEP: usize = 12;

impl Lz4Pool {
    pub fn new() -> Arc<Lz4Pool> {
        Arc::new(Lz4Pool::default())
    }

    /// `raw` as one LZ4 block, or `None` when the block would not be smaller (then the
    /// chunk goes raw: the sample was not representative).
    pub fn compress(self: &Arc<Self>, raw: &[u8]) -> Option<Bytes> {
        let need = lz4_flex::block::get_maximum_output_size(raw.len());
        let idle = self.free.lock().ok().and_then(|mut f| f.pop());
        // A buffer too small for this chunk is dropped (wiped, unlocked), not grown:
        // growing would move the bytes out from under their lock.
        let mut buf = match idle {
            Some(b) if b.capacity() >= need => b,
            _ => Buffer::new(need),
        };
        let n = match lz4_flex::block::compress_into(raw, buf.space()) {
            Ok(n) => n,
            Err(_) => {
                buf.wipe_all();
                self.give_back(buf);
                return None;
            }
        };
        buf.set_len(n);
        if n >= raw.len() {
            self.give_back(buf);
            return None;
        }
        Some(Bytes::from_owner(Pooled {
            buf: Some(buf),
            pool: Arc::clone(self),
        }))
    }

    fn give_back(&self, mut buf: Buffer) {
        buf.wipe();
        if let Ok(mut free) = self.free.lock()
            && free.len() < KEEP
        {
            free.push(buf);
        }
    }

    /// Idle buffers held (for tests).
    pub fn idle(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }

    #[cfg(test)]
    fn idle_buffers_are_wiped(&self) -> bool {
        self.free
            .lock()
            .map(|f| f.iter().all(|b| b.is_wiped()))
            .unwrap_or(false)
    }
}

/// A compressed body; its buffer goes back to the pool when the last reference drops.
struct Pooled {
    buf: Option<Buffer>,
    pool: Arc<Lz4Pool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_ref())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn text_saves_much_and_noise_nothing() {
        let text = b"vertex 0.125 0.250 0.500\n".repeat(400_000);
        assert!(sample_saving(&text) > 0.5);
        assert!(sample_saving(&noise(8 << 20)) < 0.02);
        assert_eq!(sample_saving(&[]), 0.0);
    }

    #[test]
    fn samples_are_taken_every_5_mib_not_only_at_the_start() {
        // 10 MiB: noise except a compressible stretch at 5 MiB.
        let mut data = noise(10 << 20);
        data[SAMPLE_EVERY..SAMPLE_EVERY + SAMPLE].fill(7);
        let s = sample_saving(&data);
        assert!(
            (0.3..0.7).contains(&s),
            "one of two samples compresses: {s}"
        );
    }

    #[test]
    fn compressed_blocks_decode_and_buffers_come_back() {
        let pool = Lz4Pool::new();
        let text = b"depth 1024 768 float32\n".repeat(100_000);
        let packed = pool.compress(&text).expect("text compresses");
        assert!(packed.len() < text.len() / 2);
        let mut back = vec![0; text.len()];
        assert_eq!(
            lz4_flex::block::decompress_into(&packed, &mut back).ok(),
            Some(text.len())
        );
        assert_eq!(back, text);
        assert_eq!(pool.idle(), 0);
        drop(packed);
        assert_eq!(pool.idle(), 1, "the buffer returned to the pool");
        assert!(
            pool.idle_buffers_are_wiped(),
            "nothing of the chunk is left in it"
        );
        assert!(pool.compress(&noise(1 << 20)).is_none(), "noise goes raw");
        assert_eq!(pool.idle(), 1);
        assert!(
            pool.idle_buffers_are_wiped(),
            "nor of the noise that went raw"
        );
    }
}
