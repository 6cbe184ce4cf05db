//! `costdb hash`: the provenance input hash of a JSON document.

use std::io::{Read, Write};

use crate::{say, Failure, Outcome};

/// Prints the input hash of the JSON document in `file` (`-` or none: standard input).
pub fn run(file: Option<std::path::PathBuf>) -> Outcome {
    let (name, text) = match file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", p.display())))?,
        ),
    };
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{name} is not valid JSON: {e}")))?;
    say!("{}", costdb::input_hash::compute_input_hash(&doc))?;
    Ok(())
}

fn read_stdin() -> Result<(String, String), Failure> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
    Ok(("standard input".into(), text))
}
