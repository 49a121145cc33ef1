//! Job: grayscale and 3x3 box blur of the RGB image on stdin.
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("read stdin");
    match test_jobs::gray_blur(&input) {
        Ok(out) => std::io::stdout().write_all(&out).expect("write stdout"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
