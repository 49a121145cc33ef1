//! The algorithms behind the test job modules. Each `src/bin/*.rs` is a
//! WASI preview-1 command that reads its input from stdin and writes its
//! output to stdout; the benchmark runs the same functions natively.

use sha2::{Digest, Sha256};

/// `sha256` job: the lower-case hex sha256 of the input.
pub fn sha256_hex(input: &[u8]) -> String {
    hex::encode(Sha256::digest(input))
}

/// `primes` job: how many primes are at most `n` (sieve of Eratosthenes).
pub fn prime_count(n: usize) -> usize {
    if n < 2 {
        return 0;
    }
    let mut composite = vec![false; n + 1];
    let mut count = 0;
    for i in 2..=n {
        if composite[i] {
            continue;
        }
        count += 1;
        let mut j = i.saturating_mul(i);
        while j <= n {
            composite[j] = true;
            j += i;
        }
    }
    count
}

/// Parses the `primes` job's input: a decimal number, surrounding
/// whitespace allowed.
pub fn parse_limit(input: &[u8]) -> Result<usize, String> {
    std::str::from_utf8(input)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| "input must be a decimal number".to_string())
}

/// `image` job: an RGB image (`width: u32 LE`, `height: u32 LE`, then
/// `width * height * 3` bytes) to grayscale (BT.601 integer weights),
/// then a 3x3 box blur with clamped edges. Output: `width * height` bytes.
pub fn gray_blur(input: &[u8]) -> Result<Vec<u8>, String> {
    if input.len() < 8 {
        return Err("input must start with width and height (u32 little-endian)".into());
    }
    let w = u32::from_le_bytes(input[0..4].try_into().expect("4 bytes")) as usize;
    let h = u32::from_le_bytes(input[4..8].try_into().expect("4 bytes")) as usize;
    let pixels = &input[8..];
    if w.checked_mul(h).and_then(|n| n.checked_mul(3)) != Some(pixels.len()) {
        return Err(format!(
            "a {w}x{h} image needs {} bytes of RGB, got {}",
            w.saturating_mul(h).saturating_mul(3),
            pixels.len()
        ));
    }
    let gray: Vec<u8> = pixels
        .chunks_exact(3)
        .map(|p| ((77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32) >> 8) as u8)
        .collect();
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0u32;
            for dy in [-1isize, 0, 1] {
                for dx in [-1isize, 0, 1] {
                    let yy = (y as isize + dy).clamp(0, h as isize - 1) as usize;
                    let xx = (x as isize + dx).clamp(0, w as isize - 1) as usize;
                    sum += gray[yy * w + xx] as u32;
                }
            }
            out[y * w + x] = (sum / 9) as u8;
        }
    }
    Ok(out)
}

/// A deterministic test image of `w` x `h` pixels in the `image` job's
/// input format.
pub fn sample_image(w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + (w * h * 3) as usize);
    v.extend_from_slice(&w.to_le_bytes());
    v.extend_from_slice(&h.to_le_bytes());
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[(x * 7) as u8, (y * 13) as u8, ((x ^ y) * 3) as u8]);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_give_known_answers() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(prime_count(100), 25);
        assert_eq!(prime_count(1_000_000), 78_498);
        // A white and a black pixel: with clamped edges each neighbourhood
        // holds the own pixel 6 times and the other 3 times.
        let img = [2u32.to_le_bytes(), 1u32.to_le_bytes()].concat();
        let img = [img, vec![255, 255, 255, 0, 0, 0]].concat();
        assert_eq!(gray_blur(&img).unwrap(), vec![170, 85]);
        assert!(gray_blur(&[1, 0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }
}
