//! Test inputs: incompressible and compressible files, and their SHA-256.

use std::io::{Read, Write};
use std::path::Path;

/// Fills `buf` with pseudo-random (incompressible) bytes from the xorshift state `x`,
/// which it advances: successive calls continue one stream.
pub fn fill_random(buf: &mut [u8], x: &mut u64) {
    for b in buf.chunks_mut(8) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
}

/// Writes `size` pseudo-random bytes from `seed`: different seeds, different files.
pub fn seeded_file(path: &Path, size: u64, seed: u64) {
    let mut buf = vec![0u8; size as usize];
    let mut x = 0x2545_F491_4F6C_DD1D ^ seed;
    fill_random(&mut buf, &mut x);
    std::fs::write(path, &buf).expect("write file");
}

/// Writes a secret (token) file with mode 0600, atomically, as an operator's tool would.
pub fn write_secret(path: &Path, secret: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, secret).expect("write secret");
    crate::chmod(&tmp, 0o600);
    std::fs::rename(&tmp, path).expect("rename secret");
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        match p.is_dir() {
            true => out.extend(files_under(&p)),
            false => out.push(p),
        }
    }
    out
}

/// Writes `size` pseudo-random (incompressible) bytes.
pub fn random_file(path: &Path, size: u64) {
    let mut w =
        std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).expect("create"));
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ size;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        fill_random(&mut buf, &mut x);
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    w.flush().expect("flush");
}

/// Writes `size` bytes of an ASCII point cloud (`v x y z` lines with jittered numbers):
/// what a capture app writes as PLY text, and what LZ4 shrinks to about half.
pub fn point_cloud_file(path: &Path, size: u64) {
    let mut w =
        std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).expect("create"));
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut written = 0u64;
    while written < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let line = format!(
            "v {:.3} {:.3} {:.3}\n",
            (x % 1000) as f32 / 100.0,
            ((x >> 16) % 1000) as f32 / 100.0,
            ((x >> 32) % 300) as f32 / 100.0
        );
        let n = (line.len() as u64).min(size - written) as usize;
        w.write_all(&line.as_bytes()[..n]).expect("write");
        written += n as u64;
    }
    w.flush().expect("flush");
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}
