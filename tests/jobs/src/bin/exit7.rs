//! Job: writes a line, then exits with status 7.
fn main() {
    println!("leaving with 7");
    std::process::exit(7);
}
