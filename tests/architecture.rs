//! The module layering written in README.md ("Architecture"), checked
//! against the source: a `crate::X` path in module M is allowed only when
//! the table lets M use X. A new dependency is a deliberate edit of both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Which top-level modules each module may use (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("aws", &[]),
    ("clock", &[]),
    ("fsutil", &[]),
    ("identity", &[]),
    ("output", &[]),
    ("proto", &[]),
    ("units", &[]),
    ("schema", &[]),
    ("telemetry", &["proto", "clock"]),
    ("mqtt", &["aws", "fsutil", "identity", "units"]),
    ("pipeline", &["mqtt", "output", "clock", "units"]),
    ("pki", &["fsutil", "identity", "output"]),
    (
        "flows",
        &[
            "clock",
            "mqtt",
            "output",
            "pipeline",
            "proto",
            "sink",
            "telemetry",
            "units",
            "identity",
            "schema",
        ],
    ),
    (
        "sink",
        &[
            "aws",
            "clock",
            "mqtt",
            "output",
            "pipeline",
            "proto",
            "schema",
            "telemetry",
            "units",
        ],
    ),
    (
        "bench",
        &[
            "clock",
            "identity",
            "mqtt",
            "output",
            "pipeline",
            "pki",
            "proto",
            "schema",
            "telemetry",
            "units",
        ],
    ),
    (
        "broker",
        &[
            "fsutil", "identity", "mqtt", "output", "pipeline", "pki", "schema", "units",
        ],
    ),
    (
        "iot",
        &[
            "aws", "fsutil", "identity", "mqtt", "output", "pki", "schema",
        ],
    ),
    (
        "doctor",
        &[
            "identity", "mqtt", "output", "pipeline", "pki", "schema", "units",
        ],
    ),
    (
        "quickstart",
        &[
            "broker",
            "identity",
            "mqtt",
            "output",
            "pipeline",
            "pki",
            "proto",
            "telemetry",
        ],
    ),
    (
        "cli",
        &[
            "bench",
            "broker",
            "doctor",
            "flows",
            "iot",
            "mqtt",
            "pki",
            "quickstart",
            "sink",
            "output",
        ],
    ),
];

/// The top-level module a file under src/ belongs to.
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

fn used_modules(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c};`
                let inner = group.split('}').next().unwrap_or("");
                used.extend(
                    inner
                        .split(',')
                        .map(|p| p.trim().split("::").next().unwrap().to_string()),
                );
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                used.insert(name);
            }
        }
    }
    used.retain(|m| !m.is_empty() && m.chars().next().unwrap().is_ascii_lowercase());
    used
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let macros = ["note"]; // #[macro_export] macros live at the crate root
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut problems = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = module_of(rel);
        if module == "main" || module == "lib" {
            continue;
        }
        let Some(ok) = allowed.get(module.as_str()) else {
            problems.push(format!(
                "src/{}: module '{module}' is not in the table",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for used in used_modules(&text) {
            if used != module && !ok.contains(&used.as_str()) && !macros.contains(&used.as_str()) {
                problems.push(format!("src/{}: '{module}' uses '{used}'", rel.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports outside the layering:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_table_has_no_cycle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        g: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        assert!(!path.contains(&m), "cycle: {} -> {m}", path.join(" -> "));
        path.push(m);
        for d in g.get(m).copied().unwrap_or(&[]) {
            visit(d, g, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in allowed.keys() {
        visit(m, &allowed, &mut Vec::new(), &mut done);
    }
}
