//! `lathe models [list|fetch NAME]`.

use anyhow::{Context, Result};

use super::catalog::{self, CATALOG};
use super::fetch;

pub fn list() {
    println!("{:<40} {:<12} ABOUT", "NAME", "STATUS");
    for e in CATALOG {
        let status = match (e.source, catalog::is_cached(e)) {
            (catalog::Source::BuiltIn, _) => "built-in",
            (_, true) => "cached",
            (_, false) => "not fetched",
        };
        println!("{:<40} {:<12} {}", e.name, status, e.about);
    }
    println!("\nmodel cache: {}", catalog::models_dir().display());
    if CATALOG.iter().any(|e| !catalog::is_cached(e)) {
        println!("fetch a model with: lathe models fetch NAME");
    }
}

pub fn fetch(name: &str) -> Result<()> {
    let entry = catalog::find(name).with_context(|| {
        let names: Vec<&str> = CATALOG.iter().map(|e| e.name).collect();
        format!("unknown model `{name}`; known models: {}", names.join(", "))
    })?;
    fetch::fetch(entry)?;
    Ok(())
}
