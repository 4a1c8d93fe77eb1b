//! The README cannot go stale: every ```rust block of `../README.md` is a
//! run of consecutive lines of one of the examples' sources (`src/**/*.rs`,
//! `build.rs`, and the same in `one-port/`), which are compiled, and run by the other tests.
//!
//! Lines are compared trimmed, and empty lines are left out on both sides,
//! so a block may be indented differently and spaced out differently from
//! the source. Blocks of other languages (```toml, ```sh) are not checked.

use std::fs;
use std::path::{Path, PathBuf};

/// A source file, its lines normalized.
struct Source {
    path: PathBuf,
    lines: Vec<String>,
}

/// The lines of `text`, trimmed, without the empty ones.
fn normalize(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The ```rust blocks of `markdown`: the line each starts on (1-based,
/// its fence) and its text.
fn rust_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, bool, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = fence.strip_prefix("```") {
                    let lang = info.split([',', ' ']).next().unwrap_or_default();
                    open = Some((i + 1, lang.trim() == "rust", String::new()));
                }
            }
            Some((start, is_rust, text)) => {
                if fence.trim_end() == "```" {
                    if *is_rust {
                        blocks.push((*start, std::mem::take(text)));
                    }
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "a code block of the README is not closed");
    blocks
}

/// The examples' sources: every `.rs` file under `src`, and `build.rs`.
fn sources(root: &Path) -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("reads the directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = vec![root.join("build.rs"), root.join("one-port/build.rs")];
    walk(&root.join("src"), &mut paths);
    walk(&root.join("one-port/src"), &mut paths);
    paths
        .into_iter()
        .map(|path| Source {
            lines: normalize(&fs::read_to_string(&path).expect("reads the source")),
            path,
        })
        .collect()
}

/// The source whose lines contain `block` as a contiguous run.
fn find<'a>(sources: &'a [Source], block: &[String]) -> Option<&'a Source> {
    sources
        .iter()
        .find(|s| s.lines.windows(block.len()).any(|w| w == block))
}

/// How many of `block`'s first lines some source has in a row, and where:
/// to point at the first line that differs.
fn longest_prefix<'a>(sources: &'a [Source], block: &[String]) -> (usize, Option<&'a Path>) {
    let mut best = (0, None);
    for source in sources {
        for start in 0..source.lines.len() {
            let n = source.lines[start..]
                .iter()
                .zip(block)
                .take_while(|(a, b)| a == b)
                .count();
            if n > best.0 {
                best = (n, Some(source.path.as_path()));
            }
        }
    }
    best
}

#[test]
fn every_rust_block_of_the_readme_is_compiled_example_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("../README.md")).expect("reads the README");
    let sources = sources(root);
    let blocks = rust_blocks(&readme);
    // The quick start's set-up, the server, the client, the four shapes,
    // errors, layers and interceptors: far more than a handful.
    assert!(
        blocks.len() >= 12,
        "only {} rust blocks found",
        blocks.len()
    );

    let mut stale = Vec::new();
    for (line, text) in &blocks {
        let block = normalize(text);
        assert!(!block.is_empty(), "README.md:{line}: an empty rust block");
        if find(&sources, &block).is_none() {
            let (n, path) = longest_prefix(&sources, &block);
            let near = path.map_or_else(
                || "no source".into(),
                |p| p.strip_prefix(root).unwrap_or(p).display().to_string(),
            );
            stale.push(format!(
                "README.md:{line}: block line {} is not in the examples \
                 (the closest run, in {near}, stops before it): {:?}",
                n + 1,
                block[n]
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "README code that no example compiles:\n{}",
        stale.join("\n")
    );
}

#[test]
fn the_check_finds_runs_and_only_runs() {
    let sources = [Source {
        path: "lib.rs".into(),
        lines: normalize("fn a() {\n\n    let x = 1;\n    let y = 2;\n}\n"),
    }];
    let block = |text: &str| normalize(text);
    assert!(find(&sources, &block("let x = 1;\n\n  let y = 2;")).is_some());
    assert!(find(&sources, &block("fn a() {\nlet y = 2;")).is_none());
    assert!(find(&sources, &block("let y = 2;\nlet x = 1;")).is_none());
    assert_eq!(
        longest_prefix(&sources, &block("let x = 1;\nlet z = 3;")).0,
        1
    );

    let markdown =
        "text\n```rust\nlet a = 1;\n```\n```toml\nx = 1\n```\n  ```rust,ignore\n  b\n  ```\n";
    let blocks = rust_blocks(markdown);
    assert_eq!(
        blocks,
        [(2, "let a = 1;\n".to_owned()), (8, "  b\n".to_owned())]
    );
}
