//! Hostile job: reads a file and the clock, which a job may not do; it must
//! be refused at upload.
fn main() {
    let text = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let now = std::time::SystemTime::now();
    println!("{text} {now:?}");
}
