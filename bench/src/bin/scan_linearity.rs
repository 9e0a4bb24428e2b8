//! Extraction speed on hostile text against prose of the same size: runs of base64 ending in
//! `@` or `.` (which make backtracking extractors quadratic), one huge token full of
//! candidates, and their doubles, so a superlinear cost would show as a falling MB/s.
//!
//! ```text
//! cargo run --release -p threatmail-bench --bin scan_linearity
//! ```

use std::time::Instant;

use threatmail_parse::extract_text;

fn repeat_to(piece: &str, len: usize) -> String {
    piece.chars().cycle().take(len).collect()
}

fn measure(name: &str, text: &str) {
    let runs = 5;
    let best = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(extract_text(std::hint::black_box(text)));
            start.elapsed()
        })
        .min()
        .unwrap_or_default();
    let stats = extract_text(text).stats;
    println!(
        "{name:38} {:>9} bytes {:>9.1} MB/s {:>8} candidates {:>10} checked bytes",
        text.len(),
        text.len() as f64 / 1e6 / best.as_secs_f64(),
        stats.candidates,
        stats.checked_bytes
    );
}

fn main() {
    let base64 =
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODkrLw";
    let prose = "Block hxxps://login.example[.]com/a and 203.0.113.7, mail evil@example.net, hash e3551a7d989183cfe099b6cbb058d7fb, CVE-2026-1234. ";
    for size in [100_000usize, 200_000, 1_000_000] {
        let run = repeat_to(base64, size);
        measure(&format!("prose, {size}"), &repeat_to(prose, size));
        measure(&format!("base64 run + '@', {size}"), &format!("{run}@"));
        measure(&format!("base64 run + '.', {size}"), &format!("{run}."));
        measure(
            &format!("base64 run + '@a.b.c.d', {size}"),
            &format!("{run}@a.b.c.d"),
        );
        measure(
            &format!("one token 'x.example.com!' x n, {size}"),
            &repeat_to("x.example.com!", size),
        );
    }
}
