//! Job: prints the hex sha256 of stdin.
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("read stdin");
    let digest = test_jobs::sha256_hex(&input);
    std::io::stdout()
        .write_all(digest.as_bytes())
        .expect("write stdout");
}
