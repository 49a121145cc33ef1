//! Job: prints how many primes are at most the number on stdin.
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("read stdin");
    match test_jobs::parse_limit(&input) {
        Ok(n) => {
            let count = test_jobs::prime_count(n);
            std::io::stdout()
                .write_all(count.to_string().as_bytes())
                .expect("write stdout");
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
