//! `cargo bench --bench prepare`: MB/s of `prepare` against, in the same run, a lol_html pass
//! over the same bytes that changes nothing (an element handler on `head` that does nothing,
//! the least a rewriter must do to find the head). Target: prepare >= 0.8 x that pass.

use lol_html::{element, HtmlRewriter, Settings};
use pegabridge::template::expr::ExpressionFormat;
use pegabridge::template::variable::pega_defaults;
use pegabridge::template::{rewrite, Plan};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

const MIN_TIME: Duration = Duration::from_secs(2);

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus: Vec<Vec<u8>> = templates(&root.join("tests/corpus"))
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let large = large_template(&corpus[0], 5 * 1024 * 1024);
    let plan = Plan::new(&pega_defaults(), &ExpressionFormat::default());

    println!("| input | bytes | prepare MB/s | no-op lol_html MB/s | ratio (target >= 0.8) |");
    println!("|---|---|---|---|---|");
    let mut all_met = true;
    for (name, docs) in [
        (
            format!("corpus ({} templates)", corpus.len()),
            corpus.clone(),
        ),
        ("one large template".to_owned(), vec![large]),
    ] {
        let bytes: usize = docs.iter().map(Vec::len).sum();
        let prepare = throughput(bytes, || {
            for d in &docs {
                black_box(rewrite(d, &plan).unwrap());
            }
        });
        let noop = throughput(bytes, || {
            for d in &docs {
                black_box(noop_pass(d));
            }
        });
        let ratio = prepare / noop;
        all_met &= ratio >= 0.8;
        println!("| {name} | {bytes} | {prepare:.1} | {noop:.1} | {ratio:.2} |");
    }
    println!("\ntarget {}", if all_met { "met" } else { "NOT met" });
}

/// A lol_html pass that changes nothing.
fn noop_pass(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rewriter = HtmlRewriter::new(
        Settings {
            element_content_handlers: vec![element!("head", |_| Ok(()))],
            ..Settings::new()
        },
        |c: &[u8]| out.extend_from_slice(c),
    );
    rewriter.write(input).unwrap();
    rewriter.end().unwrap();
    out
}

/// MB/s of `f` over `bytes`, run repeatedly for at least [`MIN_TIME`].
fn throughput(bytes: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < MIN_TIME {
        f();
        runs += 1;
    }
    (bytes as f64 * f64::from(runs)) / start.elapsed().as_secs_f64() / 1e6
}

/// A real template whose body is repeated up to `size` bytes.
fn large_template(doc: &[u8], size: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(doc);
    let open = text.find("<body").expect("template has a body");
    let close = text.rfind("</body>").expect("template closes its body");
    let body = &text[open..close];
    let mut out = String::from(&text[..open]);
    while out.len() < size {
        out.push_str(body);
    }
    out.push_str(&text[close..]);
    out.into_bytes()
}

fn templates(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(templates(&path));
        } else if path.extension().is_some_and(|e| e == "html") {
            out.push(path);
        }
    }
    out.sort();
    out
}
