//! Ships `src/executor.sh` without its comment lines and blank lines. Every executor Job carries
//! the script (in the webhook's answer, the apiserver's patch, etcd, the pod), and a third of the
//! source is comments written for the people who read it here. Indentation stays, so the Job is
//! still readable. A unit test (`src/mutation/tests.rs`) checks that bash parses the source and
//! the shipped script into the same program (nothing inside a quoted string was dropped).

use std::io;
use std::path::PathBuf;

fn main() -> io::Result<()> {
    let source = "src/executor.sh";
    println!("cargo::rerun-if-changed={source}");
    let script = std::fs::read_to_string(source)?;
    let shipped: String = script
        .lines()
        .filter(|line| {
            let code = line.trim_start();
            !code.is_empty() && !code.starts_with('#')
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    let out = std::env::var_os("OUT_DIR").ok_or_else(|| io::Error::other("OUT_DIR is not set"))?;
    std::fs::write(PathBuf::from(out).join("executor.sh"), shipped)
}
